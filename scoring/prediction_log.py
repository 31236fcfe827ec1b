"""The prediction log: every answer appended to a bounded Redis stream, off the response path.

Answers are buffered in memory and written in pipelined batches by a background task; a
failing or slow store only costs log entries (counted), never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import numpy as np
import redis
import redis.asyncio

from scoring.metrics import ServiceMetrics

log = logging.getLogger("vigil.scoring")


class PredictionLog:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        stream: str,
        metrics: ServiceMetrics,
        max_len: int = 100_000,
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
    def entries(results: list[dict[str, Any]], matrix: np.ndarray, context: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "transaction_id": r["transaction_id"],
                "ts": int(ctx[0]),
                "customer_id": int(ctx[1]),
                "terminal_id": int(ctx[2]),
                "score": r["score"],
                "version": r["model"]["version"] or "",
                "fallback": int(r["fallback"]),
                "reason": r["fallback_reason"] or "",
                "latency_ms": r["latency_ms"],
                "features": json.dumps(row.tolist()),
            }
            for r, row, ctx in zip(results, matrix, context, strict=True)
        ]

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
        entries = [entry for batch in batches for entry in self.entries(*batch)]
        if not entries:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(self.stream, entry, maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
                await pipe.execute()
        except (redis.RedisError, OSError) as error:
            self.metrics.prediction_log_failures.inc(len(entries))
            log.warning("prediction log unavailable: %s", error)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()
