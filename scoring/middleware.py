"""A plain ASGI middleware (no per-request task group, unlike BaseHTTPMiddleware):
request ids, the body-size limit, and one log line per error.

The limit counts the body's bytes as they arrive, whether the client declared a length
or sent it chunked: past `max_body_bytes` the request is answered 413 and its body is
read no further into memory. What the client still sends is read and discarded (up to
DRAIN_BYTES), so that it gets its 413 instead of a connection reset mid-upload.
"""

from __future__ import annotations

import logging
import time
import traceback
import uuid
from typing import Any

import orjson

log = logging.getLogger("vigil.scoring")

Scope = dict[str, Any]
DRAIN_BYTES = 256 * 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from `receive` when a request's body passes the limit."""


class RequestLimits:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given_id = headers.get(b"x-request-id", b"")[:64]
        request_id = given_id.decode("latin-1") if given_id.isascii() and given_id else uuid.uuid4().hex[:16]
        length = headers.get(b"content-length")
        started = time.perf_counter()
        state = {"status": 0, "received": 0, "done": False}
        limit = self.max_body_bytes

        async def counted_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if not message.get("more_body"):
                    state["done"] = True
                if state["received"] > limit:
                    raise BodyTooLarge
            return message

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            if length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge
            await self.app(scope, counted_receive, send_with_id)
        except BodyTooLarge:
            if not state["status"]:
                await _drain(receive, state)
                await _answer(send, 413, {"detail": f"body larger than {limit} bytes"}, request_id)
            state["status"] = state["status"] or 413
        except Exception as error:
            # One line, no traceback per request: where it was raised is enough to find it.
            where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            log.error(
                "unhandled error: %s: %s%s",
                type(error).__name__,
                str(error)[:200],
                f" at {where.filename}:{where.lineno}" if where else "",
                extra={"request_id": request_id, "path": scope.get("path"), "status": 500},
            )
            if not state["status"]:
                await _answer(send, 500, {"detail": "internal error", "request_id": request_id}, request_id)
            return
        if state["status"] >= 400:
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "path": scope.get("path"),
                    "status": state["status"],
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )


async def _drain(receive: Any, state: dict[str, Any]) -> None:
    """Reads and drops the rest of a refused body, so the client sees the answer, not a reset."""
    drained = 0
    while not state["done"] and drained < DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body"):
            state["done"] = True


async def _answer(send: Any, status: int, body: dict[str, Any], request_id: str) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
