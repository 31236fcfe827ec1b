"""What a declared repo's scorer runs on, opened once per process: the champion and the
challenger, the online store, the rules and lists, the prediction log and the review queue. The HTTP service
(`scoring.declared_app`) and the in-stream scorer (`flows.declared_scoring`) open the same."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from scoring.declared_lists import DeclaredLists, list_keys
from scoring.declared_scorer import DeclaredScorer, event_fields, rule_sample
from scoring.metrics import ServiceMetrics
from scoring.models import ModelManager, ModelUnavailableError
from scoring.prediction_log import PredictionLog
from scoring.resources import load_rules
from scoring.review_queue import ReviewQueue
from scoring.rules import RulesFile
from vigil.declared import DeclaredFeatures
from vigil.declared.online import DeclaredOnlineStore
from vigil.lifecycle.tracking import CHALLENGER
from vigil.online.connection import connect, connect_async, is_cluster
from vigil.online.resp import ClusterReader, NodeReader
from vigil.settings import Settings

log = logging.getLogger("vigil.scoring")


@dataclass
class DeclaredResources:
    metrics: ServiceMetrics
    rules: RulesFile
    models: ModelManager
    shadow: ModelManager
    client: Any  # redis-py, for the store's reads
    log_client: Any  # redis-py asyncio, for the prediction log, lists and labels
    reader: NodeReader | ClusterReader  # the store's reads on the scoring path (`vigil.online.resp`)
    executor: ThreadPoolExecutor
    store: DeclaredOnlineStore
    lists: DeclaredLists
    prediction_log: PredictionLog
    review: ReviewQueue  # started and stopped by whoever runs the scorer (the service, the flow)
    scorer: DeclaredScorer

    async def refresh_rules_and_lists(self, settings: Settings) -> None:
        self.rules.check()
        self.metrics.rules_loaded.set(len(self.rules.current.rules))
        self.metrics.rules_file_error.set(1 if self.rules.error else 0)
        await self.lists.refresh(self.log_client, settings)
        self.metrics.review_queue_length.set(await self.log_client.xlen(settings.review_stream))
        self.metrics.prediction_log_pending.set(await self.log_client.xlen(settings.prediction_stream))

    async def close(self) -> None:
        self.executor.shutdown(wait=False)
        self.client.close()
        await self.log_client.aclose()
        self.reader.close()


async def open_declared(settings: Settings, declared: DeclaredFeatures, threads: int = 4) -> DeclaredResources:
    """Everything the scorer needs, the champion loaded when one is registered (else the
    answers say `no_model` until it is), and the scorer's code warmed."""
    loop = asyncio.get_running_loop()
    metrics = ServiceMetrics()
    rules = load_rules(settings, rule_sample(declared))
    models = ModelManager(settings, on_reload_failure=lambda version: metrics.reload_failures.inc())
    models.check_store()
    try:
        loaded = await loop.run_in_executor(None, models.load)
        metrics.model.info({k: str(v) for k, v in loaded.describe().items() if k != "policy"})
    except ModelUnavailableError as error:
        log.error("%s; not ready (503) until a champion loads", error)
    shadow = ModelManager(settings, alias=CHALLENGER, on_reload_failure=lambda v: metrics.reload_failures.inc())
    await loop.run_in_executor(None, shadow.load_if_present)
    client = connect(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vigil-declared")
    store = DeclaredOnlineStore(client, settings.key_prefix, declared)
    log_client = connect_async(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
    reader = ClusterReader(settings.redis_url) if is_cluster(settings.redis_url) else NodeReader(settings.redis_url)
    lists = DeclaredLists(list_keys(declared))
    try:
        await lists.refresh(log_client, settings)
    except Exception as error:  # readiness says the store is away; the lists follow when it returns
        log.warning("lists not readable at start: %s", type(error).__name__)
    prediction_log = PredictionLog(
        log_client,
        settings.prediction_stream,
        metrics,
        max_buffer_bytes=settings.prediction_buffer_bytes,
        event_id=declared.events.event_id,
    )
    review = ReviewQueue(
        log_client, settings.review_stream, metrics, describe=event_fields, event_id=declared.events.event_id
    )
    scorer = DeclaredScorer(
        declared,
        store,
        models,
        metrics,
        settings.score_budget_ms / 1000,
        executor,
        shadow=shadow,
        shadow_stream=settings.shadow_stream,
        row_budget_seconds=settings.score_row_budget_ms / 1000,
        prediction_log=prediction_log,
        rules=rules,
        lists=lists,
        review=review,
        reader=reader,
        event_log=settings.event_log,
    )
    await loop.run_in_executor(None, scorer.warm)
    await scorer.warm_reads()
    return DeclaredResources(
        metrics,
        rules,
        models,
        shadow,
        client,
        log_client,
        reader,
        executor,
        store,
        lists,
        prediction_log,
        review,
        scorer,
    )
