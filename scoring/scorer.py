"""Scores transactions: online features as of their time, the champion within a deadline,
and the fallback baseline when anything on that path fails. Shared by the HTTP service
and the in-stream scoring flow."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import redis

from scoring.batching import MicroBatcher
from scoring.deadlines import BatchDeadlines
from scoring.decisions import Decider, Lists
from scoring.metrics import ServiceMetrics
from scoring.models import LoadedModel, ModelManager
from scoring.prediction_log import PredictionLog
from scoring.readiness import DATA_REASONS, Readiness
from scoring.review_queue import ReviewQueue
from scoring.rules import RulesFile
from scoring.schemas import TransactionFields
from vigil.features import spec
from vigil.features.feast_transform import to_epoch_seconds
from vigil.features.kernel import compile_kernel, served_inputs
from vigil.features.rollup import stack
from vigil.models.base import model_matrix, top_contributions
from vigil.online.store import AsyncOnlineHistoryStore, compile_readers

log = logging.getLogger("vigil.scoring")

TIMEOUT, MODEL_ERROR, FEATURES_UNAVAILABLE = "timeout", "model_error", "features_unavailable"
INLINE_ROWS = 8  # small requests to a model measured fast run on the event loop
_NO_FACTS = stack([])
_H = TypeVar("_H")


def transaction_fields(tx: TransactionFields) -> dict[str, Any]:
    """A transaction's fields as the review queue keeps them."""
    return {
        "transaction_id": tx.transaction_id,
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "tx_amount": tx.tx_amount,
        "tx_datetime": tx.tx_datetime.isoformat(),
    }


def compile_hot_path() -> None:
    """Compiles (or loads the cached builds of) the read path and the feature kernel, so the
    first request does not wait seconds for numba."""
    compile_readers()
    compile_kernel()


class NoModelError(RuntimeError):
    """No version holds the champion alias yet (the service waits for one)."""


class Scorer:
    def __init__(
        self,
        store: AsyncOnlineHistoryStore,
        models: ModelManager,
        metrics: ServiceMetrics,
        budget_seconds: float,
        executor: ThreadPoolExecutor,
        prediction_log: PredictionLog | None = None,
        batcher: MicroBatcher | None = None,
        shadow: ModelManager | None = None,
        shadow_stream: str | None = None,
        row_budget_seconds: float = 0.0,
        readiness: Readiness | None = None,
        decider: Decider | None = None,
        review: ReviewQueue | None = None,
    ) -> None:
        self.store, self.models, self.metrics = store, models, metrics
        self.readiness = readiness
        self.decider = decider or Decider(RulesFile(None), Lists(), metrics)
        self.review = review
        self.deadlines = BatchDeadlines(budget_seconds, row_budget_seconds)
        metrics.row_seconds.set_function(lambda: self.deadlines.row_seconds)  # read at scrape time
        self.executor = executor
        self.prediction_log = prediction_log
        self.batcher = batcher
        self.shadow, self.shadow_stream = shadow, shadow_stream
        self._background: set[asyncio.Task[None]] = set()

    async def _read(
        self, read: Callable[[list[int], list[int]], Awaitable[_H]], txs: Sequence[TransactionFields], deadline: float
    ) -> tuple[_H | None, str | None]:
        """The histories, or None and why not (a missed deadline is `timeout`)."""
        started = time.perf_counter()
        try:
            value = await asyncio.wait_for(
                read([t.customer_id for t in txs], [t.terminal_id for t in txs]),
                timeout=max(deadline - time.perf_counter(), 0.001),
            )
            return value, None
        except TimeoutError:
            return None, TIMEOUT
        except (redis.RedisError, OSError, ValueError) as error:
            log.warning("online features unavailable: %s", error)
            return None, FEATURES_UNAVAILABLE
        finally:
            self.metrics.stage_seconds.labels("features").observe(time.perf_counter() - started)

    async def _inputs(
        self, txs: Sequence[TransactionFields], ts: np.ndarray, deadline: float
    ) -> tuple[np.ndarray, str | None]:
        """The model inputs of `txs` as of their own times (float64, SERVED_INPUTS order),
        and why the store's histories are missing from them, if they are: then the
        request's own fields still give the calendar and the transaction itself."""
        store_reason = self.readiness.store_reason if self.readiness is not None else None
        # A store that lost the flow's data is not read: what it would say is not the history.
        trusted = store_reason not in DATA_REASONS
        reason: str | None = None if trusted else store_reason
        stacked = None
        if trusted:
            checked, reason = await self._read(self.store.read_checked, txs, deadline)
            if checked is not None:
                stacked, holds_data = checked
                if not holds_data:
                    # Emptied since the last readiness check: these answers must say so.
                    stacked = None
                    reason = self.readiness.lost_data() if self.readiness is not None else "store_empty"
        customers, labels = stacked or (_NO_FACTS, _NO_FACTS)
        tx_id = np.fromiter((t.transaction_id for t in txs), np.int64, len(txs))
        amount = np.fromiter((t.tx_amount for t in txs), np.float64, len(txs))
        return served_inputs(customers, labels, tx_id, ts, amount), reason

    async def _primary(self, model: LoadedModel, matrix: np.ndarray, deadline: float) -> np.ndarray | str:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        if model.inline and matrix.shape[0] <= INLINE_ROWS:
            # Measured fast at load time: a thread hop would cost more than the prediction.
            try:
                return model.primary.predict_proba(matrix)
            except Exception:
                log.exception("model %s version %s failed", model.primary.kind, model.version)
                return MODEL_ERROR
            finally:
                self.metrics.stage_seconds.labels("model").observe(time.perf_counter() - started)
                self.metrics.batch_size.observe(matrix.shape[0])
        if self.batcher is not None and matrix.shape[0] <= self.batcher.max_rows:
            call: Any = self.batcher.predict(model.primary, matrix)
        else:
            call = loop.run_in_executor(self.executor, model.primary.predict_proba, matrix)
            self.metrics.batch_size.observe(matrix.shape[0])
        try:
            return await asyncio.wait_for(call, timeout=max(deadline - time.perf_counter(), 0.001))
        except TimeoutError:
            return TIMEOUT
        except Exception:
            log.exception("model %s version %s failed", model.primary.kind, model.version)
            return MODEL_ERROR
        finally:
            self.metrics.stage_seconds.labels("model").observe(time.perf_counter() - started)

    async def score(self, txs: Sequence[TransactionFields], explain: bool = False) -> list[dict[str, Any]]:
        started = time.perf_counter()
        deadline = started + self.deadlines.allowance(len(txs))
        model = self.models.current
        if model is None:
            raise NoModelError("no model is promoted yet: train one and promote it to champion")
        ts = np.fromiter((to_epoch_seconds(t.tx_datetime) for t in txs), np.int64, len(txs))
        exact, reason = await self._inputs(txs, ts, deadline)
        matrix = model_matrix(exact)
        scores: np.ndarray | str = reason or await self._primary(model, matrix, deadline)
        if isinstance(scores, str):
            reason = scores
            fallback_started = time.perf_counter()
            scores = model.fallback.predict_proba(matrix)
            self.metrics.stage_seconds.labels("fallback").observe(time.perf_counter() - fallback_started)
            self.metrics.fallbacks.labels(reason).inc(len(txs))
        latency_ms = (time.perf_counter() - started) * 1000
        if reason in (None, TIMEOUT):
            self.deadlines.observe(len(txs), latency_ms / 1000)
        self.metrics.stage_seconds.labels("total").observe(latency_ms / 1000)
        self.metrics.scored.inc(len(txs))
        if self.readiness is not None:
            self.readiness.record(len(txs), len(txs) if reason is not None else 0)
        contributions = top_contributions(model.primary, matrix) if explain and reason is None else None
        floor_of = getattr(model.primary, "score_floor", None)
        floors = floor_of(matrix) if explain and reason is None and floor_of is not None else None
        ref = {"name": "fraud-detector", "version": model.version, "alias": model.alias}
        # The contract's `features` are fraud_v1's 15 inputs; a model on a later feature set
        # saw more, and those come as `extra_features`.
        v1 = len(spec.MODEL_INPUTS)
        extra = model.primary.inputs[v1:] if reason is None else ()
        derive = getattr(model.primary, "derived_values", None) if explain and reason is None else None
        derived = derive(exact) if derive is not None else None
        results = []
        fallback, latency, score_values = reason is not None, round(latency_ms, 3), scores.tolist()
        for i, tx in enumerate(txs):
            result: dict[str, Any] = {
                "transaction_id": tx.transaction_id,
                "score": score_values[i],
                "model": ref,
                "fallback": fallback,
                "fallback_reason": reason,
                "latency_ms": latency,
            }
            if explain:
                # As computed (float64), the amount as the request gave it: no float32 artefacts.
                values = exact[i].tolist()
                values[0] = tx.tx_amount
                result["features"] = dict(zip(spec.MODEL_INPUTS, values[:v1], strict=True))
                if extra:
                    result["extra_features"] = dict(zip(extra, values[v1 : v1 + len(extra)], strict=True))
                if derived:
                    result["derived_features"] = {name: float(v[i]) for name, v in derived.items()}
                if contributions is not None:
                    result["contributions"] = contributions[i]
                if floors is not None:
                    result["score_floor"] = float(floors[i])
            results.append(result)
        decided = time.perf_counter()
        self.decider.decide(results, txs, exact, model.policy, fallback=fallback)
        # Rules' and lists' cost per request, beside the other stages.
        self.metrics.stage_seconds.labels("decide").observe(time.perf_counter() - decided)
        if self.review is not None:
            self.review.append(results, txs, exact, spec.SERVED_INPUTS)
        self._log(results, matrix, txs, ts)
        if reason is None and self.shadow is not None:
            self._score_in_shadow(results, matrix, model)
        return results

    async def settle(self) -> None:
        """Waits for the shadow scoring started so far. A caller that runs the event loop only
        while it scores (the in-stream scorers) must, or the last batch's shadow scores are
        never written."""
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    def _score_in_shadow(self, results: list[dict[str, Any]], matrix: np.ndarray, champion: LoadedModel) -> None:
        """Scores the challenger off the response path and logs both scores."""
        challenger = self.shadow.current if self.shadow is not None else None
        if challenger is None or challenger.version == champion.version or not self.shadow_stream:
            return
        stream = self.shadow_stream

        async def run() -> None:
            loop = asyncio.get_running_loop()
            try:
                scores = await loop.run_in_executor(self.executor, challenger.primary.predict_proba, matrix)
                async with self.store.client.pipeline(transaction=False) as pipe:
                    for result, shadow_score in zip(results, scores, strict=True):
                        pipe.xadd(
                            stream,
                            {
                                "transaction_id": result["transaction_id"],
                                "champion_version": champion.version,
                                "champion_score": result["score"],
                                "challenger_version": challenger.version,
                                "challenger_score": float(shadow_score),
                            },
                            maxlen=100_000,
                            approximate=True,
                        )
                    await pipe.execute()
            except Exception as error:  # observing only: never affects an answer
                log.warning("shadow scoring failed: %s", error)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _log(
        self, results: list[dict[str, Any]], matrix: np.ndarray, txs: Sequence[TransactionFields], ts: np.ndarray
    ) -> None:
        """Hands the answers to the prediction log; it builds and writes entries in the background."""
        if self.prediction_log is not None:
            context = np.empty((len(txs), 3), np.int64)
            context[:, 0] = ts
            context[:, 1] = np.fromiter((t.customer_id for t in txs), np.int64, len(txs))
            context[:, 2] = np.fromiter((t.terminal_id for t in txs), np.int64, len(txs))
            self.prediction_log.append(results, matrix, context)
