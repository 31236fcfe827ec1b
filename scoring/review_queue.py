"""The review queue: `review` and `block` decisions, with what an analyst needs to judge them,
appended to the Redis stream `<prefix>:review` off the response path.

Each entry is one JSON field: the transaction, score, decision, reasons, model version and
the model inputs. The top contributions are not computed here but where the queue is read
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
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import redis

from scoring.metrics import ServiceMetrics
from vigil.features import spec

log = logging.getLogger("vigil.scoring")


class ReviewQueue:
    def __init__(
        self,
        client: Any,
        stream: str,
        metrics: ServiceMetrics,
        max_buffer_bytes: int = 16 * 1024 * 1024,
        flush_seconds: float = 0.05,
    ) -> None:
        self.client, self.stream, self.metrics = client, stream, metrics
        self.max_buffer_bytes, self.flush_seconds = max_buffer_bytes, flush_seconds
        self._pending: list[tuple[list[dict[str, Any]], Sequence[Any], np.ndarray]] = []
        self._unsent: collections.deque[bytes] = collections.deque()
        self._unsent_bytes = 0
        self._task: asyncio.Task[None] | None = None

    def append(self, results: list[dict[str, Any]], txs: Sequence[Any], inputs: np.ndarray) -> None:
        """Queues the answers among `results` whose decision is review or block."""
        rows = [i for i, r in enumerate(results) if r["decision"] != "allow"]
        if rows:
            self._pending.append(([results[i] for i in rows], [txs[i] for i in rows], inputs[rows]))

    def _entries(self) -> list[bytes]:
        pending, self._pending = self._pending, []
        out = []
        for results, txs, inputs in pending:
            for i, (result, tx) in enumerate(zip(results, txs, strict=True)):
                entry = {
                    "transaction_id": tx.transaction_id,
                    "customer_id": tx.customer_id,
                    "terminal_id": tx.terminal_id,
                    "tx_amount": tx.tx_amount,
                    "tx_datetime": tx.tx_datetime.isoformat(),
                    "score": result["score"],
                    "decision": result["decision"],
                    "reasons": result["reasons"],
                    "model_version": result["model"]["version"],
                    "fallback": result["fallback"],
                    "fallback_reason": result["fallback_reason"],
                    "features": dict(zip(spec.SERVED_INPUTS, inputs[i].tolist(), strict=True)),
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
