"""In-stream scoring: transactions from a stream, scored and decided by the same Scorer as
the HTTP service (rules, lists, the version's thresholds, the review queue), answers
written to an output stream (no HTTP hop).

    events -> validate -> dead letters .......................> dead-letter sink
                      \\-> transactions -> Scorer (features + champion + fallback) -> decisions stream

Run: `python -m bytewax.run "flows.scoring:build_flow()"` (source from VIGIL_SOURCE,
default the Redis stream `<prefix>:events`; decisions to `<prefix>:decisions`).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from flows.acks import Acknowledger
from flows.features import source_from_uri
from flows.sinks import DeadLetterSink
from scoring.decisions import Decider, Lists
from scoring.fastpath import ParsedTransaction
from scoring.metrics import ServiceMetrics
from scoring.models import ModelManager
from scoring.prediction_log import PredictionLog
from scoring.review_queue import ReviewQueue
from scoring.rules import RulesFile
from scoring.scorer import Scorer, compile_hot_path, transaction_fields
from vigil.events import RawBatch, ValidatedBatch, validate
from vigil.online.connection import connect, connect_async
from vigil.online.store import AsyncOnlineHistoryStore
from vigil.settings import Settings

EPOCH = datetime(1970, 1, 1)


class StreamScorer:
    """One Scorer per process, with its own event loop, built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scorer: Scorer | None = None

    def _build(self) -> Scorer:
        self._loop = asyncio.new_event_loop()
        settings = self.settings
        models = ModelManager(settings)
        models.load()
        compile_hot_path()
        client = connect_async(settings.redis_url, socket_timeout=1.0)
        store = AsyncOnlineHistoryStore(client, settings.feast_project, settings.redis_url)
        metrics = ServiceMetrics()
        executor = ThreadPoolExecutor(max_workers=1)
        # Flushed after every batch (no background task: the loop runs only while scoring).
        self._log = PredictionLog(client, settings.prediction_stream, metrics)
        self._review = ReviewQueue(
            client, settings.review_stream, metrics, describe=transaction_fields, event_id="transaction_id"
        )
        self._rules, self._lists, self._client = RulesFile(settings.rules_file), Lists(), client
        return Scorer(
            store,
            models,
            metrics,
            settings.score_budget_ms / 1000,
            executor,
            self._log,
            row_budget_seconds=settings.score_row_budget_ms / 1000,
            decider=Decider(self._rules, self._lists, metrics),
            review=self._review,
        )

    async def _refresh(self) -> None:
        """Rules and lists as the service sees them (checked before each batch)."""
        self._rules.check()
        await self._lists.refresh(self._client, self.settings.key_prefix)

    def __call__(self, batch: ValidatedBatch) -> list[tuple[dict[str, Any] | None, Any]]:
        """(decision, acknowledgement token) for every valid transaction of the batch."""
        frame = batch.transactions
        if frame.empty:
            return []
        with self._lock:
            if self._scorer is None:
                self._scorer = self._build()
            assert self._loop is not None
            txs = [
                ParsedTransaction(
                    int(r.transaction_id),
                    int(r.customer_id),
                    int(r.terminal_id),
                    float(r.tx_amount),
                    EPOCH + timedelta(seconds=int(r.ts)),
                )
                for r in frame.itertuples()
            ]
            self._loop.run_until_complete(self._refresh())
            results = self._loop.run_until_complete(self._scorer.score(txs))
            self._loop.run_until_complete(self._scorer.settle())  # this batch's shadow scores, written
            self._loop.run_until_complete(self._log.flush())
            self._loop.run_until_complete(self._review.flush())
        return list(zip(results, frame["token"].tolist(), strict=True))


class _DecisionPartition(StatelessSinkPartition[tuple[dict[str, Any] | None, Any]]):
    def __init__(self, url: str, stream: str, max_len: int) -> None:
        self.client = connect(url)
        self.stream, self.max_len = stream, max_len
        self.acknowledge = Acknowledger()

    def write_batch(self, items: list[tuple[dict[str, Any] | None, Any]]) -> None:
        """Writes the decisions, then acknowledges every item (None: an entry with nothing to
        decide, a label on the events' stream)."""
        decisions = [decision for decision, _ in items if decision is not None]
        if decisions:
            with self.client.pipeline(transaction=False) as pipe:
                for decision in decisions:
                    pipe.xadd(self.stream, {"json": json.dumps(decision)}, maxlen=self.max_len, approximate=True)
                pipe.execute()
        self.acknowledge([token for _, token in items if token is not None])  # only after the decisions are written

    def close(self) -> None:
        self.acknowledge.close()
        self.client.close()


class DecisionSink(DynamicSink[tuple[dict[str, Any] | None, Any]]):
    """Decisions as JSON entries of a bounded Redis stream."""

    def __init__(self, url: str, stream: str, max_len: int = 1_000_000) -> None:
        self.url, self.stream, self.max_len = url, stream, max_len

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DecisionPartition:
        return _DecisionPartition(self.url, self.stream, self.max_len)


def build_flow(
    source: Source[RawBatch] | None = None,
    sink: Sink[tuple[dict[str, Any] | None, Any]] | None = None,
    settings: Settings | None = None,
) -> Dataflow:
    settings = settings or Settings()
    if source is None:
        default = f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"
        source = source_from_uri(os.environ.get("VIGIL_SOURCE", default), settings)
    sink = sink or DecisionSink(settings.redis_url, settings.stream("decisions"))
    score = StreamScorer(settings)
    flow = Dataflow("vigil_scoring")
    checked = op.map("validate", op.input("events", flow, source), validate)
    op.output(
        "dead_letter_out",
        op.flat_map("dead_letters", checked, lambda b: b.dead),
        DeadLetterSink(settings.redis_url, settings.deadletter_stream),
    )
    op.output("decisions_out", op.flat_map("score", checked, score), sink)
    return flow
