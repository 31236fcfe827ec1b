"""The scoring service (`vigil serve`): FastAPI app built by `create_app(settings)`.

Resources (Redis pool, models, registry watcher, thread pool, metrics) are created in
the lifespan and reached through `request.app.state`; nothing happens at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import logging
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import redis.asyncio
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.batching import MicroBatcher
from scoring.fastpath import FastScoreRoutes
from scoring.metrics import ServiceMetrics
from scoring.middleware import RequestLimits
from scoring.models import ModelManager
from scoring.prediction_log import PredictionLog
from scoring.schemas import Score, ScoreBatch, Transaction, TransactionBatch
from scoring.scorer import Scorer
from vigil.online.store import AsyncOnlineHistoryStore
from vigil.settings import Settings
from vigil.tracking import CHALLENGER

log = logging.getLogger("vigil.scoring")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "path", "status", "ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("vigil")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = ServiceMetrics()
        models = ModelManager(settings, on_reload_failure=lambda version: metrics.reload_failures.inc())
        loop = asyncio.get_running_loop()
        loaded = await loop.run_in_executor(None, models.load)
        metrics.model.info({k: str(v) for k, v in loaded.describe().items()})
        client = redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=0.5)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-model")
        store = AsyncOnlineHistoryStore(client, settings.feast_project, settings.redis_url)
        prediction_log = PredictionLog(client, settings.prediction_stream, metrics)
        prediction_log.start()
        batcher = None
        if settings.batch_max_wait_ms > 0:
            batcher = MicroBatcher(executor, metrics, settings.batch_max_rows, settings.batch_max_wait_ms / 1000)
            batcher.start()
        shadow = ModelManager(settings, alias=CHALLENGER, on_reload_failure=lambda v: metrics.reload_failures.inc())
        await loop.run_in_executor(None, shadow.load_if_present)
        app.state.settings, app.state.metrics, app.state.models = settings, metrics, models
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
        )
        if not settings.api_key_set:
            log.warning("VIGIL_API_KEYS is not set: the scoring API accepts requests without a key")
        # What is loaded now lives as long as the process (~400k objects with MLflow, Feast,
        # pandas, the model): a full collection walks all of them, 100-200 ms measured, an
        # answer-stalling pause every few minutes under load. Frozen, the collector skips them.
        gc.freeze()
        # The registry poll runs MLflow's client (2-4 ms of Python) in a thread every few
        # seconds; a thread holding the interpreter keeps the event loop waiting up to the
        # switch interval (5 ms by default). 1 ms bounds that stall.
        sys.setswitchinterval(0.001)

        async def watch() -> None:
            while True:
                await asyncio.sleep(settings.alias_poll_seconds)
                try:
                    if await loop.run_in_executor(None, models.refresh) and models.current:
                        metrics.model.info({k: str(v) for k, v in models.current.describe().items()})
                        gc.freeze()  # the new model's objects too
                    await loop.run_in_executor(None, shadow.refresh)
                except Exception:  # the registry being away must not stop the watcher
                    log.exception("registry poll failed")

        watcher = asyncio.create_task(watch())
        try:
            yield
        finally:
            watcher.cancel()
            if batcher is not None:
                await batcher.stop()
            await prediction_log.stop()
            executor.shutdown(wait=False)
            store.close()
            await client.aclose()

    app = FastAPI(
        title="Vigil scoring API",
        version="1",
        lifespan=lifespan,
        description="Real-time fraud scores from online features and the champion model.",
    )

    # Added first, so it runs inside RequestLimits (request ids, body limit, error log).
    app.add_middleware(FastScoreRoutes, max_batch=settings.max_batch, api_keys=lambda: settings.api_key_set)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)

    def require_key(request: Request) -> None:
        keys = settings.api_key_set
        if not keys:
            return
        given = request.headers.get("x-api-key", "")
        if not any(hmac.compare_digest(given, key) for key in keys):
            raise HTTPException(status_code=401, detail="missing or wrong X-API-Key")

    def as_json(body: Any) -> Response:
        # Returned as-is (already shaped like the response model, which documents it).
        return Response(orjson.dumps(body), media_type="application/json")

    # Both scoring routes are answered by FastScoreRoutes before FastAPI routes anything;
    # these declarations document them (OpenAPI) and serve as the reference behaviour.
    @app.post("/v1/score", response_model=Score, dependencies=[Depends(require_key)])
    async def score(transaction: Transaction, request: Request, explain: bool = False) -> Any:
        return as_json((await request.app.state.scorer.score([transaction], explain))[0])

    @app.post(
        "/v1/score/batch",
        response_model=ScoreBatch,
        dependencies=[Depends(require_key)],
        responses={413: {"description": "batch too large"}},
    )
    async def score_batch(batch: TransactionBatch, request: Request, explain: bool = False) -> Any:
        if len(batch.transactions) > settings.max_batch:
            raise HTTPException(status_code=413, detail=f"at most {settings.max_batch} transactions per batch")
        scorer: Scorer = request.app.state.scorer
        results: list[dict[str, Any]] = []
        chunk = 2_048  # large batches go through the model in chunks
        for start in range(0, len(batch.transactions), chunk):
            results.extend(await scorer.score(batch.transactions[start : start + chunk], explain))
        return as_json({"results": results})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        scorer: Scorer = request.app.state.scorer
        checks: dict[str, Any] = {"model": request.app.state.models.current is not None}
        try:
            checks["store"] = await asyncio.wait_for(scorer.store.ping(), timeout=0.5)
        except Exception as error:  # any failure to answer means not ready
            checks["store"] = False
            checks["store_error"] = str(error)
        ready = checks["model"] and checks["store"]
        return JSONResponse({"ready": ready, **checks}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models_view(request: Request) -> dict[str, Any]:
        manager: ModelManager = request.app.state.models
        loop = asyncio.get_running_loop()
        registry = await loop.run_in_executor(None, manager.registry_view)
        current = manager.current
        return {"serving": current.describe() if current else None, "registry": registry}

    return app
