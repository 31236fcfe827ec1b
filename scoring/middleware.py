"""A plain ASGI middleware (no per-request task group, unlike BaseHTTPMiddleware):
request ids, the body-size limit, and one log line for errors."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson

log = logging.getLogger("vigil.scoring")

Scope = dict[str, Any]


class RequestLimits:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = (headers.get(b"x-request-id") or uuid.uuid4().hex[:16].encode()).decode("latin-1")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await _answer(send, 413, {"detail": f"body larger than {self.max_body_bytes} bytes"}, request_id)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id, "path": scope.get("path")})
            await _answer(send, 500, {"detail": "internal error", "request_id": request_id}, request_id)
            return
        if status["code"] >= 400:
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "path": scope.get("path"),
                    "status": status["code"],
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )


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
