"""The service's resources, made in the lifespan and put on `app.state`; the background
tasks that keep them current (registry aliases, rules file, lists, readiness)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI

from scoring.batching import MicroBatcher
from scoring.decisions import Decider, Lists
from scoring.metrics import ServiceMetrics
from scoring.models import ModelManager, ModelUnavailableError
from scoring.prediction_log import PredictionLog
from scoring.readiness import Readiness
from scoring.review_queue import ReviewQueue
from scoring.rules import RulesFile
from scoring.scorer import Scorer, compile_hot_path, transaction_fields
from vigil.lifecycle.tracking import CHALLENGER
from vigil.online.connection import connect_async
from vigil.online.store import AsyncOnlineHistoryStore
from vigil.settings import Settings

log = logging.getLogger("vigil.scoring")


class StartupError(RuntimeError):
    """The service cannot start as configured (the message says what to fix)."""


def load_rules(settings: Settings, sample: dict[str, Any] | None = None) -> RulesFile:
    """The rules of VIGIL_RULES_FILE (`sample`: the variables of a declared repo's), loaded
    before the service starts: a missing or refused file stops it with the reason."""
    rules = RulesFile(settings.rules_file, sample)
    if settings.rules_file is not None:
        if not settings.rules_file.exists():
            raise StartupError(f"VIGIL_RULES_FILE names {settings.rules_file}, which does not exist")
        rules.check()
        if rules.error:
            raise StartupError(rules.error)
    return rules


def lifespan(settings: Settings) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        metrics = ServiceMetrics()
        rules = load_rules(settings)
        models = ModelManager(settings, on_reload_failure=lambda version: metrics.reload_failures.inc())
        models.check_store()
        try:
            loaded = await loop.run_in_executor(None, models.load)
            metrics.model.info({k: str(v) for k, v in loaded.describe().items() if k != "policy"})
        except ModelUnavailableError as error:  # none promoted, or one that does not load
            log.error("%s; not ready (503) until a champion loads", error)
        await loop.run_in_executor(None, compile_hot_path)
        client = connect_async(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-model")
        store = AsyncOnlineHistoryStore(client, settings.feast_project, settings.redis_url)
        readiness = Readiness(store)
        readiness.has_model = lambda: models.current is not None
        prediction_log = PredictionLog(
            client, settings.prediction_stream, metrics, max_buffer_bytes=settings.prediction_buffer_bytes
        )
        review = ReviewQueue(
            client, settings.review_stream, metrics, describe=transaction_fields, event_id="transaction_id"
        )
        lists = Lists()
        batcher = None
        if settings.batch_max_wait_ms > 0:
            batcher = MicroBatcher(executor, metrics, settings.batch_max_rows, settings.batch_max_wait_ms / 1000)
        shadow = ModelManager(settings, alias=CHALLENGER, on_reload_failure=lambda v: metrics.reload_failures.inc())
        await loop.run_in_executor(None, shadow.load_if_present)
        app.state.settings, app.state.metrics, app.state.models = settings, metrics, models
        app.state.redis, app.state.readiness, app.state.rules, app.state.lists = client, readiness, rules, lists
        app.state.scorer = Scorer(
            store,
            models,
            metrics,
            settings.score_budget_ms / 1000,
            executor,
            prediction_log,
            batcher=batcher,
            shadow=shadow,
            shadow_stream=settings.shadow_stream,
            row_budget_seconds=settings.score_row_budget_ms / 1000,
            readiness=readiness,
            decider=Decider(rules, lists, metrics),
            review=review,
        )
        if not settings.api_key_set:
            log.warning("VIGIL_API_KEYS is not set: the API accepts requests without a key")
        prediction_log.start()
        review.start()
        readiness.start()
        if batcher is not None:
            batcher.start()
        serving_process()
        watchers = [
            loop.create_task(_every(settings.alias_poll_seconds, lambda: _follow_aliases(models, shadow, metrics))),
            loop.create_task(_every(1.0, lambda: _refresh(app, settings))),
        ]
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            if batcher is not None:
                await batcher.stop()
            await readiness.stop()
            await prediction_log.stop()
            await review.stop()
            executor.shutdown(wait=False)
            store.close()
            await client.aclose()

    return run


def serving_process() -> None:
    """Tunes the interpreter for answering within milliseconds, once a service has loaded.

    What is loaded by then lives as long as the process (~400k objects with MLflow, Feast,
    pandas, numba, the model): a full collection walks all of them, 100-600 ms measured, an
    answer-stalling pause every few minutes under load. Frozen, the collector skips them.
    The registry poll runs MLflow's client (2-4 ms of Python) in a thread every few seconds;
    a thread holding the interpreter keeps the event loop waiting up to the switch interval
    (5 ms by default). 1 ms bounds that stall."""
    gc.freeze()
    sys.setswitchinterval(0.001)


async def _every(seconds: float, step: Callable[[], Any]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await step()
        except Exception as error:  # a store or registry being away must not stop the watcher
            log.warning("background refresh failed: %s: %s", type(error).__name__, str(error)[:200])


async def _follow_aliases(models: ModelManager, shadow: ModelManager, metrics: ServiceMetrics) -> None:
    loop = asyncio.get_running_loop()
    if await loop.run_in_executor(None, models.refresh) and models.current:
        metrics.model.info({k: str(v) for k, v in models.current.describe().items() if k != "policy"})
        gc.freeze()  # the new model's objects too
    await loop.run_in_executor(None, shadow.refresh)


async def _refresh(app: FastAPI, settings: Settings) -> None:
    state = app.state
    state.rules.check()
    state.metrics.rules_loaded.set(len(state.rules.current.rules))
    state.metrics.rules_file_error.set(1 if state.rules.error else 0)
    await state.lists.refresh(state.redis, settings.key_prefix)
    state.metrics.review_queue_length.set(await state.redis.xlen(settings.review_stream))
    state.metrics.prediction_log_pending.set(await state.redis.xlen(settings.prediction_stream))
