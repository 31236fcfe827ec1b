"""The review queue: `review` and `block` decisions, with what an analyst needs to judge them,
appended to the Redis stream `<prefix>:review` off the response path.

Each entry is one JSON field: the event's own fields (whatever the events carry: the
service's `describe` gives them), score, decision, reasons, model version and the version's
inputs by name. The top contributions are not computed here but where the queue is read
(`vigil.monitoring.review.explain`): an exact TreeSHAP of the 500-tree booster takes about
1.8 ms a row on one core, more than scoring the row, and the service would spend it on every
review and block whether anyone reads it or not. While Redis is away entries wait in memory
(bounded in bytes; the oldest dropped past it, and counted). `vigil review` reads the queue
and records verdicts, which become labels.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import redis

from scoring.metrics import ServiceMetrics

log = logging.getLogger("vigil.scoring")


class ReviewQueue:
    def __init__(
        self,
        client: Any,
        stream: str,
        metrics: ServiceMetrics,
        describe: Callable[[Any], dict[str, Any]],
        event_id: str,
        max_buffer_bytes: int = 16 * 1024 * 1024,
        flush_seconds: float = 0.05,
    ) -> None:
        """`describe(event)`: an event's fields as JSON values (times as ISO 8601 text);
        `event_id`: the field that identifies an event (each entry carries its value as
        `event_id` too, which the queue's readers look verdicts up by)."""
        self.client, self.stream, self.metrics, self.describe = client, stream, metrics, describe
        self.event_id = event_id
        self.max_buffer_bytes, self.flush_seconds = max_buffer_bytes, flush_seconds
        self._pending: list[tuple[list[dict[str, Any]], list[Any], np.ndarray, tuple[str, ...]]] = []
        self._unsent: collections.deque[bytes] = collections.deque()
        self._unsent_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def append(self, results: list[dict[str, Any]], events: Any, inputs: np.ndarray, names: Sequence[str]) -> None:
        """Queues the answers among `results` whose decision is review or block, with their
        events (`events[i]`: the i-th answer's) and model inputs (`names`, in `inputs`' order)."""
        rows = [i for i, r in enumerate(results) if r["decision"] != "allow"]
        if rows:
            self._pending.append(([results[i] for i in rows], [events[i] for i in rows], inputs[rows], tuple(names)))

    def _entries(self) -> list[bytes]:
        pending, self._pending = self._pending, []
        out = []
        for results, events, inputs, names in pending:
            for i, (result, event) in enumerate(zip(results, events, strict=True)):
                fields = self.describe(event)
                entry = {
                    **fields,
                    "event_id": fields[self.event_id],
                    "score": result["score"],
                    "decision": result["decision"],
                    "reasons": result["reasons"],
                    "model_version": result["model"]["version"],
                    "fallback": result["fallback"],
                    "fallback_reason": result["fallback_reason"],
                    "features": dict(zip(names, inputs[i].tolist(), strict=True)),
                }
                out.append(orjson.dumps(entry))
        return out

    async def flush(self) -> None:
        if self._pending:
            try:
                entries = self._entries()
            except Exception:
                log.exception("review queue entries could not be built")
                entries = []
            for entry in entries:
                self._unsent.append(entry)
                self._unsent_bytes += len(entry)
            while self._unsent_bytes > self.max_buffer_bytes and self._unsent:
                self._unsent_bytes -= len(self._unsent.popleft())
                self.metrics.review_dropped.inc()
        if not self._unsent:
            return
        batch = list(self._unsent)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in batch:
                    pipe.xadd(self.stream, {"json": entry})
                await pipe.execute()
        except (redis.RedisError, OSError) as error:
            log.warning("review queue unavailable, keeping %d entries: %s", len(batch), error)
            return
        for entry in batch:
            self._unsent.popleft()
            self._unsent_bytes -= len(entry)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception:
                log.exception("review queue flush failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
