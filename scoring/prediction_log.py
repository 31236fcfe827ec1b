"""The prediction log: every answer appended to a Redis stream, off the response path.

Answers are buffered in memory and written in pipelined batches by a background task.
While Redis is away the buffer keeps them (bounded in bytes: `VIGIL_PREDICTION_BUFFER_BYTES`)
and writes them when it returns; past the bound the oldest are dropped and counted
(`vigil_prediction_log_dropped_total`), never a request. The stream is not capped here:
`vigil predictions persist` moves it to Parquet and trims what it has written.

Each entry carries an id of its own (`entry`): a write retried after a connection broke
mid-pipeline can land twice, and readers keep one copy of each answer by it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from typing import Any

import numpy as np
import orjson
import redis

from scoring.metrics import ServiceMetrics
from vigil.monitoring.predictions import ENTRY_FORMAT, answers_key

log = logging.getLogger("vigil.scoring")
ENTRY_ROWS = 2_000

# (answers, model-input rows, [time, unit, terminal] rows, the inputs' names: None for the handbook's)
Batch = tuple[list[dict[str, Any]], np.ndarray, np.ndarray, tuple[str, ...] | None]


class PredictionLog:
    def __init__(
        self,
        client: Any,
        stream: str,
        metrics: ServiceMetrics,
        max_buffer_bytes: int = 64 * 1024 * 1024,
        flush_seconds: float = 0.02,
        event_id: str = "transaction_id",
    ) -> None:
        self.client, self.stream, self.metrics, self.event_id = client, stream, metrics, event_id
        self.max_buffer_bytes, self.flush_seconds = max_buffer_bytes, flush_seconds
        # (answers, model-input rows, [tx time, customer, terminal] rows) as the request
        # left them: entries are built at flush time, so the request path only appends references.
        self._buffer: list[Batch] = []
        # Entries built but not yet written (Redis away), oldest first, with their sizes.
        self._unsent: collections.deque[tuple[dict[str, Any], int]] = collections.deque()
        self._unsent_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._away = False

    def append(
        self,
        results: list[dict[str, Any]],
        matrix: np.ndarray,
        context: np.ndarray,
        inputs: tuple[str, ...] | None = None,
    ) -> None:
        """`context`: int64 rows of (event time in epoch seconds, the unit a review budget
        counts (the customer), terminal id); `inputs`: the names of `matrix`'s columns, when
        they are not the handbook's served inputs (a declared repo's version)."""
        self._buffer.append((results, matrix, context, inputs))

    def entries(self, batches: list[Batch]) -> list[dict[str, Any]]:
        """Stream entries for buffered answers: columns of up to ENTRY_ROWS answers each.

        One entry holds many answers (`format=columns-v1`, `rows`, `entry` and `data`: a
        JSON object of equal-length columns) because packing ten fields per answer for
        XADD cost more CPU than scoring the answer. `vigil.monitoring.predictions` reads
        both this and the one-answer-per-entry form. Answers of versions with other inputs
        (a declared repo's champion replaced by one on another service) go to other entries,
        each naming its inputs.
        """
        out: list[dict[str, Any]] = []
        first = 0
        while first < len(batches):
            last = first + 1
            while last < len(batches) and batches[last][3] == batches[first][3]:
                last += 1
            out.extend(self._entries(batches[first:last], batches[first][3]))
            first = last
        return out

    def _entries(self, batches: list[Batch], inputs: tuple[str, ...] | None) -> list[dict[str, Any]]:
        results = [r for batch in batches for r in batch[0]]
        matrix = np.concatenate([batch[1] for batch in batches])
        context = np.concatenate([batch[2] for batch in batches])
        out = []
        for first in range(0, len(results), ENTRY_ROWS):
            part = results[first : first + ENTRY_ROWS]
            rows = slice(first, first + len(part))
            columns: dict[str, Any] = {
                "transaction_id": [r[self.event_id] for r in part],
                # orjson serialises C-contiguous arrays only: columns of `context` are strided.
                "ts": np.ascontiguousarray(context[rows, 0]),
                "customer_id": np.ascontiguousarray(context[rows, 1]),
                "terminal_id": np.ascontiguousarray(context[rows, 2]),
                "score": [r["score"] for r in part],
                "version": [r["model"]["version"] or "" for r in part],
                "fallback": [r["fallback"] for r in part],
                "reason": [r["fallback_reason"] or "" for r in part],
                "decision": [r.get("decision") or "" for r in part],
                "reasons": [r.get("reasons") or [] for r in part],
                "latency_ms": [r["latency_ms"] for r in part],
                "features": np.ascontiguousarray(matrix[rows], dtype=np.float32),
            }
            if inputs is not None:
                columns["inputs"] = list(inputs)
            data = orjson.dumps(columns, option=orjson.OPT_SERIALIZE_NUMPY)
            out.append({"format": ENTRY_FORMAT, "rows": len(part), "entry": uuid.uuid4().hex, "data": data})
        return out

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    @property
    def buffered_bytes(self) -> int:
        return self._unsent_bytes

    def _keep(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            size = len(entry["data"]) + 100
            self._unsent.append((entry, size))
            self._unsent_bytes += size
        while self._unsent_bytes > self.max_buffer_bytes and self._unsent:
            dropped, size = self._unsent.popleft()
            self._unsent_bytes -= size
            self.metrics.prediction_log_dropped.inc(int(dropped["rows"]))
        self.metrics.prediction_log_buffer.set(self._unsent_bytes)

    async def flush(self) -> None:
        batches, self._buffer = self._buffer, []
        if batches:
            try:
                self._keep(self.entries(batches))
            except Exception:  # a bug here must cost log entries, never the logger itself
                log.exception("prediction log entries could not be built")
                self.metrics.prediction_log_dropped.inc(sum(len(b[0]) for b in batches))
        if not self._unsent:
            return
        entries = [entry for entry, _ in self._unsent]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(self.stream, entry)
                # How many answers were ever logged (entries hold many): for readers and tests.
                pipe.incrby(answers_key(self.stream), sum(int(e["rows"]) for e in entries))
                await pipe.execute()
        except (redis.RedisError, OSError) as error:
            self.metrics.prediction_log_failures.inc()
            if not self._away:
                log.warning("prediction log unavailable, buffering answers until Redis returns: %s", error)
                self._away = True
            return
        for _ in entries:
            self._unsent.popleft()
        self._unsent_bytes = sum(size for _, size in self._unsent)
        self.metrics.prediction_log_buffer.set(self._unsent_bytes)
        if self._away:
            log.info("prediction log writes again; buffered answers written")
            self._away = False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                await self.flush()
            except Exception:  # the logger must outlive any single failure
                log.exception("prediction log flush failed")
