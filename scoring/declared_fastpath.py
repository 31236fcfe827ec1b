"""A declared repo's two scoring routes served as plain ASGI, in front of FastAPI.

As for the handbook's service (`scoring.fastpath`): FastAPI's dependency resolution and
request object cost more than a single event's features and score. A body whose every
event is plainly valid (`vigil.declared.events.plain_columns`: each field of JSON's own
type, every time ISO 8601 and not ahead of the clock) is typed and handed to the scorer
directly. Any other body goes, as received, to the FastAPI routes of `scoring.declared_app`,
which check it by the stream's rules and answer a 422 naming the field: one set of
rules, one set of messages. FastAPI still declares both routes, so `/openapi.json`
documents them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from scoring.fastpath import NO_MODEL_YET, SCORE, ClientError, explain_of, is_scoring, read_body, send_json
from vigil.declared.events import plain_columns
from vigil.declared.model import DeclaredFeatures

Receive = Callable[[], Awaitable[dict[str, Any]]]


def replayed(raw: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then waits on the connection's own."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return again


class DeclaredScoreRoutes:
    """ASGI middleware answering the scoring routes for plainly valid bodies."""

    def __init__(
        self, app: Any, declared: DeclaredFeatures, max_batch: int, api_keys: tuple[bytes, ...], ahead_seconds: float
    ) -> None:
        self.app, self.declared, self.max_batch = app, declared, max_batch
        self.api_keys, self.ahead_seconds = api_keys, ahead_seconds

    def _records(self, path: str, body: Any) -> list[dict[str, Any]] | None:
        """The events a well-formed body carries; None when FastAPI's routes should say why not."""
        if path == SCORE:
            return [body] if type(body) is dict else None
        items = body.get(self.declared.events.batch) if type(body) is dict else None
        if type(items) is not list or not items or len(items) > self.max_batch:
            return None
        return items if all(type(item) is dict for item in items) else None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Any) -> None:
        if not is_scoring(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            explain = explain_of(scope, self.api_keys)
        except ClientError as error:
            await send_json(send, error.status, orjson.dumps(error.body))
            return
        raw = await read_body(receive)
        try:
            records = self._records(path, orjson.loads(raw))
        except orjson.JSONDecodeError:
            records = None
        events = plain_columns(self.declared, records, self.ahead_seconds, strict=True) if records else None
        if events is None:
            await self.app(scope, replayed(raw, receive), send)
            return
        scorer = scope["app"].state.scorer
        if scorer.models.current is None:
            await send_json(send, 503, orjson.dumps({"detail": scorer.models.unavailable or NO_MODEL_YET}))
            return
        results = await scorer.score_in_chunks(events, explain)
        await send_json(send, 200, orjson.dumps(results[0] if path == SCORE else {"results": results}))
