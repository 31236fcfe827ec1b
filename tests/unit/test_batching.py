"""Micro-batching: concurrent requests share a model call and each gets its own rows back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from scoring.batching import MicroBatcher
from scoring.metrics import ServiceMetrics
from vigil.features import spec
from vigil.models.baseline import BaselineModel


def test_concurrent_requests_share_one_call_and_get_their_own_scores() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, len(spec.MODEL_INPUTS))), columns=list(spec.MODEL_INPUTS))
    model = BaselineModel().fit(frame, (frame["tx_amount"] > 0).to_numpy().astype(int))
    rows = frame.to_numpy(np.float32)
    metrics = ServiceMetrics()

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(ThreadPoolExecutor(1), metrics, max_rows=64, max_wait_seconds=0.01)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(model, rows[i : i + 1]) for i in range(20)))
        finally:
            await batcher.stop()

    results = asyncio.run(run())
    np.testing.assert_allclose(np.concatenate(results), model.predict_proba(rows[:20]), atol=1e-12)
    calls = metrics.registry.get_sample_value("vigil_model_batch_size_count")
    assert calls is not None and calls < 20  # fewer model calls than requests
