"""Scores a declared repo's events: each loaded version (champion, challenger in shadow)
gets exactly the inputs of the feature service it was trained on, computed from the
online store's facts as of each event's own time (`vigil.declared.online`); the champion
answers within the deadline, its fallback baseline when the store or the model cannot.

The events arrive as JSON records and are checked by the same rules as the stream's
(`vigil.declared.events.check_records`): a record that breaks one is refused, naming the
field, before anything is read or scored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from scoring.deadlines import BatchDeadlines
from scoring.decisions import Decider, Lists
from scoring.declared_lists import DeclaredLists
from scoring.metrics import ServiceMetrics
from scoring.models import LoadedModel, ModelManager
from scoring.prediction_log import PredictionLog
from scoring.review_queue import ReviewQueue
from scoring.rules import RulesFile
from scoring.scorer import FEATURES_UNAVAILABLE, INLINE_ROWS, MODEL_ERROR, TIMEOUT, NoModelError
from vigil.declared.batch import EventColumns
from vigil.declared.compute import nanoseconds
from vigil.declared.events import Checked, check_records, json_problems, plain_columns
from vigil.declared.model import DeclaredFeatures, Kind
from vigil.declared.online import DeclaredOnlineStore, hashed
from vigil.declared.training import review_unit
from vigil.lifecycle.tracking import REGISTERED_MODEL
from vigil.models.base import model_matrix, top_contributions
from vigil.offline.eventlog import was_filled
from vigil.online.resp import ClusterReader, NodeReader

log = logging.getLogger("vigil.scoring")
# The store answers without the flow's data: never filled by a replay or the flow, or filled
# once and lost since (restarted empty, flushed), as the offline event log remembers.
STORE_EMPTY, STORE_LOST_DATA = "store_empty", "store_lost_data"
# A large batch is scored this many events at a time, the event loop yielding between chunks:
# in one piece, a 10,000-event batch kept single requests waiting for all of it (half a second).
BATCH_CHUNK = 256


def rule_sample(declared: DeclaredFeatures) -> dict[str, Any]:
    """A value of each rule variable's type on a declared repo: the event's fields as its
    schema types them, every declared feature (double), the score and the fallback flag."""
    samples: dict[Kind, Any] = {
        "integer": 1,
        "number": 1.0,
        "string": "x",
        "boolean": False,
        "time": datetime(2026, 1, 1, tzinfo=UTC),
    }
    sample = {name: samples[kind] for name, kind in declared.events.fields.items()}
    sample.update({name: 0.0 for name in declared.feature_names}, score=0.5, fallback=False)
    return sample


class DeclaredDecider(Decider):
    """The handbook's decisions (lists, rules, thresholds) with a declared repo's variables:
    `txs` are the events' fields (times as UTC datetimes), `inputs` the rules' features, and
    the lists are of the events' entity keys (`scoring.declared_lists`)."""

    features: tuple[str, ...] = ()
    entity_lists: DeclaredLists | None = None

    def listed(self) -> bool:
        return self.entity_lists is not None and any(self.entity_lists.members.values())

    def hits(self, which: str, tx: Any) -> list[str]:
        return self.entity_lists.hit(which, tx) if self.entity_lists is not None else []

    def _matching(self, rules: Sequence[Any], tx: Any, inputs: np.ndarray, score: float, fallback: bool) -> list[Any]:
        context = {**tx, **dict(zip(self.features, inputs.tolist(), strict=True)), "score": score, "fallback": fallback}
        return self._run(rules, context)


def stacked(values: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """The features `names` as the columns of one float64 matrix (a row per event)."""
    rows = len(next(iter(values.values()), ()))
    out = np.empty((rows, len(names)))
    for j, name in enumerate(names):  # a request's one row: a fifth of np.column_stack's cost
        out[:, j] = values[name]
    return out


class InvalidEvents(ValueError):
    """Records that break the repo's schema: `problems` name each one's field."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(problems)} invalid records")
        self.problems = problems


def check_events(declared: DeclaredFeatures, records: Sequence[dict[str, Any]], ahead_seconds: float) -> EventColumns:
    """The records as typed events, or `InvalidEvents` naming each bad record's field
    (`loc`: its index, then the field), by the stream's own rules."""
    plain = plain_columns(declared, records, ahead_seconds, strict=True)
    if plain is not None:
        return plain
    strict = json_problems(records, declared.events.fields)
    if strict:
        raise InvalidEvents(strict)
    frame = pd.DataFrame.from_records(list(records), columns=list(declared.events.fields)).astype(object)
    frame = frame.where(frame.notna(), None)
    checked: Checked = check_records(declared, frame, "api", list(range(len(frame))), ahead_seconds)
    if checked.dead:
        problems = []
        for dead in checked.dead:
            field, _, why = dead.reason.partition(": ")
            problems.append({"type": "value_error", "loc": [dead.token, field], "msg": why})
        raise InvalidEvents(sorted(problems, key=lambda p: p["loc"][0]))
    return EventColumns.of(checked.events)


def event_fields(row: pd.Series) -> dict[str, Any]:
    """An event's fields (a row of checked events) as the review queue keeps them."""
    return {
        name: value.isoformat()
        if isinstance(value, pd.Timestamp)
        else value.item()
        if isinstance(value, np.generic)
        else value
        for name, value in row.items()
    }


class DeclaredScorer:
    def __init__(
        self,
        declared: DeclaredFeatures,
        store: DeclaredOnlineStore,
        models: ModelManager,
        metrics: ServiceMetrics,
        budget_seconds: float,
        executor: ThreadPoolExecutor,
        reader: NodeReader | ClusterReader,
        shadow: ModelManager | None = None,
        shadow_stream: str | None = None,
        row_budget_seconds: float = 0.0,
        prediction_log: PredictionLog | None = None,
        rules: RulesFile | None = None,
        lists: DeclaredLists | None = None,
        review: ReviewQueue | None = None,
        event_log: str | Path | None = None,
    ) -> None:
        self.declared, self.store, self.models, self.metrics = declared, store, models, metrics
        self.event_log = event_log  # the offline event log: whether the store was ever filled
        self._filled = False  # once filled, always: the log's mark is never removed
        self.prediction_log, self.review = prediction_log, review
        self.executor = executor
        # A batch's deadline follows what a row costs here, measured on the batches (as the handbook's).
        self.deadlines = BatchDeadlines(budget_seconds, row_budget_seconds)
        self.shadow, self.shadow_stream = shadow, shadow_stream
        self.reader = reader  # the store's reads on the scoring path (`vigil.online.resp`)
        # Thresholds from each version's policy, then the rules of VIGIL_RULES_FILE over the
        # events' fields and the features (allow/block lists name the handbook's entities).
        self.rules = rules or RulesFile(None)
        self.decider = DeclaredDecider(self.rules, Lists(), metrics)
        self.decider.entity_lists = lists
        self._rule_features: tuple[str, tuple[str, ...]] = ("", ())
        self._background: set[asyncio.Task[None]] = set()
        # Each stage's histogram, looked up once (a labels() call costs as much as an observe).
        self._stage = {name: metrics.stage_seconds.labels(name) for name in ("features", "model", "total", "decide")}
        self._units: dict[str, str] = {}  # each feature service's review unit (`review_unit`)

    def _made_up_event(self) -> EventColumns:
        samples = {"integer": 0, "number": 1.0, "string": "vigil-warm-up", "boolean": False}
        now = pd.Timestamp.now(tz="UTC").isoformat()
        row = {name: now if kind == "time" else samples[kind] for name, kind in self.declared.events.fields.items()}
        return check_events(self.declared, [row], 86_400)

    async def warm_reads(self) -> None:
        """One read through the request path's reader at start, so that its connections (to
        every primary of a cluster, after the slot map) are open before the first request,
        which must not spend its deadline opening them."""
        read = self.store.checked_features(self.reader, self._made_up_event(), list(self.declared.feature_names))
        try:
            await asyncio.wait_for(read, timeout=10)
        except (redis.RedisError, OSError, TimeoutError) as error:  # readiness says so
            log.warning("online store not reachable at start: %s", error)

    def warm(self) -> None:
        """Runs the whole path once on a made-up event (the window code compiles on its first
        call, ~1 s): the first request after start must not miss its deadline for it."""
        events = self._made_up_event()
        names = list(self.declared.feature_names)
        self.store.request_features(events, names)
        self.store.warm(events)
        try:
            self.store.features(events, features=names)
        except (redis.RedisError, OSError) as error:  # readiness says so; the compiled code is warm
            log.warning("online store not reachable at start: %s", error)

    def _challenger(self, champion: LoadedModel) -> LoadedModel | None:
        challenger = self.shadow.current if self.shadow is not None else None
        return challenger if challenger is not None and challenger.version != champion.version else None

    async def _features(
        self, events: EventColumns, names: list[str], deadline: float
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """The features `names` of each event from the store, or from the events alone and why."""
        started = time.perf_counter()
        try:
            # Read on the event loop and computed there: no thread hop.
            read = self.store.checked_features(self.reader, events, names)
            values, _ = await asyncio.wait_for(read, timeout=max(deadline - time.perf_counter(), 0.001))
            if values is not None:
                return values, None
            reason = self.without_data()  # no markers: what it holds is not the flow's data
        except TimeoutError:
            reason = TIMEOUT
        except (redis.RedisError, OSError) as error:
            log.warning("online features unavailable: %s", error)
            reason = FEATURES_UNAVAILABLE
        finally:
            self._stage["features"].observe(time.perf_counter() - started)
        return self.store.request_features(events, names), reason

    async def _predict(self, model: LoadedModel, matrix: np.ndarray, deadline: float) -> np.ndarray | str:
        started = time.perf_counter()
        try:
            if model.inline and matrix.shape[0] <= INLINE_ROWS:
                # Measured fast at load time: a thread hop would cost more than the prediction.
                return model.primary.predict_proba(matrix)
            call = asyncio.get_running_loop().run_in_executor(self.executor, model.primary.predict_proba, matrix)
            return await asyncio.wait_for(call, timeout=max(deadline - time.perf_counter(), 0.001))
        except TimeoutError:
            return TIMEOUT
        except Exception:
            log.exception("model %s version %s failed", model.primary.kind, model.version)
            return MODEL_ERROR
        finally:
            self._stage["model"].observe(time.perf_counter() - started)

    def without_data(self) -> str:
        """Why the store holds no data of the flow's: `store_lost_data` when a replay or the
        flow filled it once (the offline event log says so), `store_empty` when none ever did."""
        if not self._filled and self.event_log is not None:
            # A file's status (an HTTP request on S3), on the event loop: asked until it says yes.
            self._filled = was_filled(self.event_log, self.store.marker_project)
        return STORE_LOST_DATA if self._filled else STORE_EMPTY

    async def score_in_chunks(self, events: EventColumns, explain: bool = False) -> list[dict[str, Any]]:
        """`score`, a large batch a chunk at a time, the event loop yielding between chunks:
        single requests arriving meanwhile wait for one chunk, not for the whole batch."""
        if len(events) == 0:
            return []
        if len(events) <= 2 * BATCH_CHUNK:
            return await self.score(events, explain)
        results: list[dict[str, Any]] = []
        for start in range(0, len(events), BATCH_CHUNK):
            results += await self.score(events.part(start, start + BATCH_CHUNK), explain)
            await asyncio.sleep(0)
        return results

    async def score(self, events: EventColumns, explain: bool = False) -> list[dict[str, Any]]:
        """Answers for checked events (`check_events`), in their order."""
        started = time.perf_counter()
        deadline = started + self.deadlines.allowance(len(events))
        model = self.models.current
        if model is None:
            raise NoModelError("no model is promoted yet: train one and promote it to champion")
        challenger = self._challenger(model)
        inputs = list(model.primary.inputs)
        rule_features = self.rule_features()
        names = list(dict.fromkeys([*inputs, *(challenger.primary.inputs if challenger else ()), *rule_features]))
        values, reason = await self._features(events, names, deadline)
        exact = stacked(values, inputs)
        matrix = model_matrix(exact)
        scores: np.ndarray | str = reason or await self._predict(model, matrix, deadline)
        if isinstance(scores, str):
            reason = scores
            scores = model.fallback.predict_proba(matrix)
            self.metrics.fallbacks.labels(reason).inc(len(events))
        latency_ms = (time.perf_counter() - started) * 1000
        if reason in (None, TIMEOUT):
            self.deadlines.observe(len(events), latency_ms / 1000)
        self._stage["total"].observe(latency_ms / 1000)
        self.metrics.scored.inc(len(events))
        contributions = top_contributions(model.primary, matrix) if explain and reason is None else None
        ref = {"name": REGISTERED_MODEL, "version": model.version, "alias": model.alias}
        ids = events[self.declared.events.event_id].tolist()
        results = []
        for i, (event_id, score) in enumerate(zip(ids, scores.tolist(), strict=True)):
            result: dict[str, Any] = {
                self.declared.events.event_id: event_id,
                "score": score,
                "model": ref,
                "fallback": reason is not None,
                "fallback_reason": reason,
                "latency_ms": round(latency_ms, 3),
            }
            if explain:
                result["features"] = dict(zip(inputs, exact[i].tolist(), strict=True))
                if contributions is not None:
                    result["contributions"] = contributions[i]
            results.append(result)
        decided = time.perf_counter()
        if self.rules.current.rules or self.decider.listed():
            self.decider.features = rule_features
            rows = events.records(self.declared)
            self.decider.decide(results, rows, stacked(values, rule_features), model.policy,
                                fallback=reason is not None)  # fmt: skip
        else:
            self.decider.decide(results, [None] * len(results), exact, model.policy, fallback=reason is not None)
        self._stage["decide"].observe(time.perf_counter() - decided)
        if self.review is not None and any(r["decision"] != "allow" for r in results):
            self.review.append(results, events.frame(list(self.declared.events.fields)).iloc, exact, inputs)
        if self.prediction_log is not None:
            self.prediction_log.append(results, matrix, self._context(events, model), tuple(inputs))
        if reason is None and challenger is not None and self.shadow_stream:
            self._score_in_shadow(results, values, challenger)
        return results

    async def settle(self) -> None:
        """Waits for the shadow scoring started so far. A caller that runs the event loop only
        while it scores (the in-stream scorers) must, or the last batch's shadow scores are
        never written."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def rule_features(self) -> tuple[str, ...]:
        """The declared features the rules in force read (computed for every event then)."""
        current = self.rules.current
        if self._rule_features[0] != current.digest:
            used = {name for rule in current.rules for name in rule.program.variables()}
            self._rule_features = (current.digest, tuple(n for n in self.declared.feature_names if n in used))
        return self._rule_features[1]

    def _context(self, events: EventColumns, model: LoadedModel) -> np.ndarray:
        """The prediction log's (event time, review unit, -1) rows: the monitor's days and its
        precision among the top units of a day (the card, in a payments repo)."""
        service_name = model.primary.service_name or ""
        if service_name not in self._units:
            service = self.declared.services.get(service_name) or self.declared.default_service
            self._units[service_name] = review_unit(self.declared, service)
        unit = events[self._units[service_name]]
        context = np.empty((len(events), 3), np.int64)
        context[:, 0] = nanoseconds(events[self.declared.events.time]) // 1_000_000_000
        context[:, 1] = unit if unit.dtype.kind == "i" else hashed(unit)
        context[:, 2] = -1
        return context

    def _score_in_shadow(
        self, results: list[dict[str, Any]], values: dict[str, np.ndarray], challenger: LoadedModel
    ) -> None:
        """Scores the challenger on its own inputs, off the response path, and logs both scores."""
        stream, client = self.shadow_stream, self.store.client
        matrix = model_matrix(stacked(values, challenger.primary.inputs))
        event_id = self.declared.events.event_id

        def write() -> None:
            scores = challenger.primary.predict_proba(matrix)
            with client.pipeline(transaction=False) as pipe:
                for result, shadow_score in zip(results, scores.tolist(), strict=True):
                    entry = {
                        event_id: result[event_id],
                        "champion_version": result["model"]["version"],
                        "champion_score": result["score"],
                        "challenger_version": challenger.version,
                        "challenger_score": shadow_score,
                    }
                    pipe.xadd(stream, entry, maxlen=100_000, approximate=True)
                pipe.execute()

        async def run() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self.executor, write)
            except Exception as error:  # observing only: never affects an answer
                log.warning("shadow scoring failed: %s", error)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
