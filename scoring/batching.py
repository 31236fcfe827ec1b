"""Micro-batching: concurrent requests share one model call.

Requests put their rows on a queue; one task takes the first waiting request, gathers
others that arrive within `max_wait` (up to `max_rows`), runs the model once in the
thread pool, and hands each request its slice. Under light load a request waits at
most `max_wait`; under heavy load the per-call overhead is paid once per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from scoring.metrics import ServiceMetrics
from vigil.models.base import FraudModel


@dataclass
class _Pending:
    model: FraudModel
    rows: np.ndarray
    result: asyncio.Future[np.ndarray]


class MicroBatcher:
    def __init__(
        self,
        executor: ThreadPoolExecutor,
        metrics: ServiceMetrics,
        max_rows: int = 64,
        max_wait_seconds: float = 0.0005,
    ) -> None:
        self.executor, self.metrics = executor, metrics
        self.max_rows, self.max_wait = max_rows, max_wait_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def predict(self, model: FraudModel, rows: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(model, rows, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            batch = [first]
            size = first.rows.shape[0]
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_rows:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if item.model is not first.model:  # a model swap: the other model's rows wait a turn
                    await self._queue.put(item)
                    break
                batch.append(item)
                size += item.rows.shape[0]
            live = [p for p in batch if not p.result.done()]  # requests that timed out are skipped
            if not live:
                continue
            rows = np.concatenate([p.rows for p in live]) if len(live) > 1 else live[0].rows
            self.metrics.batch_size.observe(rows.shape[0])
            try:
                scores = await loop.run_in_executor(self.executor, first.model.predict_proba, rows)
            except Exception as error:
                for pending in live:
                    if not pending.result.done():
                        pending.result.set_exception(error)
                continue
            start = 0
            for pending in live:
                n = pending.rows.shape[0]
                if not pending.result.done():
                    pending.result.set_result(scores[start : start + n])
                start += n
