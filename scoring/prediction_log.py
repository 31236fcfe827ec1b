"""The prediction log: every answer appended to a bounded Redis stream, off the response path.

Answers are buffered in memory and written in pipelined batches by a background task; a
failing or slow store only costs log entries (counted), never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import numpy as np
import orjson
import redis
import redis.asyncio

from scoring.metrics import ServiceMetrics
from vigil.monitoring.predictions import ENTRY_FORMAT, answers_key

log = logging.getLogger("vigil.scoring")
ENTRY_ROWS = 2_000


class PredictionLog:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        stream: str,
        metrics: ServiceMetrics,
        max_len: int = 20_000,  # entries, each of up to ENTRY_ROWS answers
        flush_seconds: float = 0.02,
        max_buffer: int = 50_000,
    ) -> None:
        self.client, self.stream, self.metrics = client, stream, metrics
        self.max_len, self.flush_seconds, self.max_buffer = max_len, flush_seconds, max_buffer
        # (answers, model-input rows, [tx time, customer, terminal] rows) as the request
        # left them: entries are built at flush time, so the request path only appends references.
        self._buffer: list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray]] = []
        self._buffered_rows = 0
        self._task: asyncio.Task[None] | None = None

    def append(self, results: list[dict[str, Any]], matrix: np.ndarray, context: np.ndarray) -> None:
        """`context`: int64 rows of (tx_datetime epoch seconds, customer_id, terminal_id)."""
        if self._buffered_rows + len(results) > self.max_buffer:  # the store is away: drop, and count it
            self.metrics.prediction_log_failures.inc(len(results))
            return
        self._buffer.append((results, matrix, context))
        self._buffered_rows += len(results)

    @staticmethod
    def entries(batches: list[tuple[list[dict[str, Any]], np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        """Stream entries for buffered answers: columns of up to ENTRY_ROWS answers each.

        One entry holds many answers (`format=columns-v1`, `rows`, and `data`: a JSON object
        of equal-length columns) because packing ten fields per answer for XADD cost more
        CPU than scoring the answer. `vigil.monitoring.predictions` reads both this and the
        one-answer-per-entry form.
        """
        results = [r for batch in batches for r in batch[0]]
        matrix = np.concatenate([batch[1] for batch in batches])
        context = np.concatenate([batch[2] for batch in batches])
        out = []
        for first in range(0, len(results), ENTRY_ROWS):
            part = results[first : first + ENTRY_ROWS]
            rows = slice(first, first + len(part))
            columns = {
                "transaction_id": [r["transaction_id"] for r in part],
                # orjson serialises C-contiguous arrays only: columns of `context` are strided.
                "ts": np.ascontiguousarray(context[rows, 0]),
                "customer_id": np.ascontiguousarray(context[rows, 1]),
                "terminal_id": np.ascontiguousarray(context[rows, 2]),
                "score": [r["score"] for r in part],
                "version": [r["model"]["version"] or "" for r in part],
                "fallback": [r["fallback"] for r in part],
                "reason": [r["fallback_reason"] or "" for r in part],
                "latency_ms": [r["latency_ms"] for r in part],
                "features": np.ascontiguousarray(matrix[rows], dtype=np.float32),
            }
            data = orjson.dumps(columns, option=orjson.OPT_SERIALIZE_NUMPY)
            out.append({"format": ENTRY_FORMAT, "rows": len(part), "data": data})
        return out

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def flush(self) -> None:
        batches, self._buffer, self._buffered_rows = self._buffer, [], 0
        if not batches:
            return
        try:
            entries = self.entries(batches)
        except Exception:  # a bug here must cost log entries, never the logger itself
            log.exception("prediction log entries could not be built")
            self.metrics.prediction_log_failures.inc(sum(len(b[0]) for b in batches))
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(self.stream, entry, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
                # How many answers were ever logged (entries hold many): for readers and tests.
                pipe.incrby(answers_key(self.stream), sum(int(e["rows"]) for e in entries))
                await pipe.execute()
        except (redis.RedisError, OSError) as error:
            self.metrics.prediction_log_failures.inc(sum(int(e["rows"]) for e in entries))
            log.warning("prediction log unavailable: %s", error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()
