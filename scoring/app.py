"""The scoring service (`vigil serve`): FastAPI app built by `create_app(settings)`.

Resources (Redis clients, models, registry watcher, rules, lists, thread pool, metrics)
are created in the lifespan (`scoring.resources`) and reached through
`request.app.state`; nothing happens at import time.

What needs a key when `VIGIL_API_KEYS` is set: scoring, labels, lists, `/v1/models`,
`/metrics` and the API documentation. Open to anyone: `/healthz` and `/readyz`, which
say only whether the service is alive or ready and, if not, why in one word.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, StrictInt

from scoring.decisions import list_key
from scoring.fastpath import NO_KEY, NO_MODEL_YET, UNSUPPORTED, FastScoreRoutes, json_content, problems
from scoring.middleware import RequestLimits
from scoring.resources import lifespan
from scoring.schemas import Id, Problem, Score, ScoreBatch, Transaction, TransactionBatch, TxDateTime
from scoring.scorer import Scorer
from scoring.security import authorised, encoded
from vigil.events import label_event
from vigil.online import seen
from vigil.settings import Settings

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
    """The service's log: JSON lines on stderr, its own and its libraries' (uvicorn, MLflow)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("vigil", "uvicorn", "uvicorn.error", "mlflow"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("vigil").setLevel(logging.INFO)


class Label(BaseModel):
    """The outcome of an earlier transaction (a chargeback, an analyst's verdict)."""

    transaction_id: Id = Field(..., examples=[123])
    terminal_id: Id = Field(..., examples=[7])
    tx_datetime: TxDateTime = Field(..., examples=["2018-08-08T10:31:00"], description="the transaction's own time")
    tx_fraud: Annotated[StrictInt, Field(ge=0, le=1)] = Field(..., examples=[1], description="1: fraud, 0: genuine")


class LabelBatch(BaseModel):
    labels: list[Label]


class Accepted(BaseModel):
    accepted: int


class ListMembers(BaseModel):
    which: str = Field(..., description="allow or block")
    kind: str
    members: list[int]


STORE_AWAY = "the store (Redis) is unavailable: nothing was recorded; retry"
Which = Annotated[Literal["allow", "block"], Path(description="allow or block")]
Kind = Annotated[Literal["customer", "terminal"], Path(description="customer or terminal")]
EntityId = Annotated[int, Path(ge=0, le=2**63 - 1, description="a customer or terminal id")]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    from vigil.declared.loading import declared_repo

    if declared_repo(settings.feature_repo):  # its own events, labels and feature services
        from scoring.declared_app import create_declared_app

        return create_declared_app(settings)
    keys = encoded(settings.api_key_set)
    app = FastAPI(
        title="Vigil scoring API",
        version="1",
        lifespan=lifespan(settings),
        description=(
            "Real-time fraud scores and decisions from online features and the champion model. "
            "Send the key of `VIGIL_API_KEYS` in the `X-API-Key` header."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Added first, so it runs inside RequestLimits (request ids, body limit, error log).
    app.add_middleware(FastScoreRoutes, max_batch=settings.max_batch, api_keys=keys)
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of VIGIL_API_KEYS")

    def require_key(request: Request, _: str | None = Depends(header)) -> None:
        if not authorised(request.scope.get("headers") or [], keys):
            raise HTTPException(status_code=401, detail=NO_KEY["detail"])

    def require_json(request: Request) -> None:
        if not json_content(request.scope.get("headers") or []):
            raise HTTPException(status_code=415, detail=UNSUPPORTED["detail"])

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{**p, "loc": p["loc"][1:]} for p in problems(list(error.errors()), "")]
        return JSONResponse({"detail": detail}, status_code=422)

    def as_json(body: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    def scorer_of(request: Request) -> Scorer:
        scorer: Scorer = request.app.state.scorer
        if scorer.models.current is None:
            raise HTTPException(status_code=503, detail=scorer.models.unavailable or NO_MODEL_YET)
        return scorer

    errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "missing or wrong API key"},
        413: {"model": Problem, "description": "body or batch too large"},
        415: {"model": Problem, "description": "the body is not JSON"},
        422: {"model": Problem, "description": "a field is missing or invalid: `loc` names it"},
        503: {"model": Problem, "description": "no model is promoted yet, or the store is away (retry)"},
    }
    keyed = [Depends(require_key)]
    body_rules = [Depends(require_key), Depends(require_json)]

    # Both scoring routes are answered by FastScoreRoutes before FastAPI routes anything;
    # these declarations document them (OpenAPI) and serve as the reference behaviour.
    @app.post("/v1/score", response_model=Score, dependencies=body_rules, responses=errors)
    async def score(transaction: Transaction, request: Request, explain: bool = False) -> Any:
        """Score one transaction: features as of its time, the champion's score, a decision."""
        return as_json((await scorer_of(request).score([transaction], explain))[0])

    @app.post("/v1/score/batch", response_model=ScoreBatch, dependencies=body_rules, responses=errors)
    async def score_batch(batch: TransactionBatch, request: Request, explain: bool = False) -> Any:
        """Score up to `VIGIL_MAX_BATCH` transactions; results in the same order."""
        if len(batch.transactions) > settings.max_batch:
            raise HTTPException(status_code=413, detail=f"at most {settings.max_batch} transactions per batch")
        scorer = scorer_of(request)
        results: list[dict[str, Any]] = []
        for start in range(0, len(batch.transactions), 2_048):
            results.extend(await scorer.score(batch.transactions[start : start + 2_048], explain))
        return as_json({"results": results})

    @app.post("/v1/labels", status_code=202, response_model=Accepted, dependencies=body_rules, responses=errors)
    async def labels(batch: LabelBatch, request: Request) -> Any:
        """Outcomes of earlier transactions (chargebacks, analysts' verdicts), appended as label
        events to the event stream the feature flow reads. Sending a label twice changes nothing.
        A label names a payment the feature flow has read, at its terminal and time: any other is
        a 422 naming `transaction_id` (no such payment at that terminal) or `tx_datetime`."""
        if len(batch.labels) > settings.max_batch:
            raise HTTPException(status_code=413, detail=f"at most {settings.max_batch} labels per request")
        client = request.app.state.redis
        try:
            verdicts = await seen.check_async(
                client,
                settings.key_prefix,
                [
                    (x.transaction_id, x.terminal_id, int(x.tx_datetime.replace(tzinfo=UTC).timestamp()))
                    for x in batch.labels
                ],
            )
        except Exception as error:  # not checked: not accepted, the caller retries
            log.warning("labels not checked: %s", type(error).__name__)
            raise HTTPException(status_code=503, detail=STORE_AWAY, headers={"Retry-After": "1"}) from None
        refused = [
            {"type": "value_error", "loc": ["labels", i, reason.split(":", 1)[0]], "msg": reason.split(": ", 1)[1]}
            for i, reason in enumerate(verdicts)
            if reason is not None
        ]
        if refused:
            # A label moves its terminal's fraud rates: only for a payment Vigil has seen, at its time.
            return JSONResponse({"detail": refused[:20]}, status_code=422)
        try:
            async with client.pipeline(transaction=False) as pipe:
                for label in batch.labels:
                    event = label_event(label.transaction_id, label.terminal_id, label.tx_datetime, label.tx_fraud)
                    pipe.xadd(settings.events_stream, event)
                await pipe.execute()
        except Exception as error:  # not written: not accepted, the caller retries
            log.warning("labels not recorded: %s", type(error).__name__)
            raise HTTPException(status_code=503, detail=STORE_AWAY, headers={"Retry-After": "1"}) from None
        request.app.state.metrics.labels_accepted.inc(len(batch.labels))
        return as_json({"accepted": len(batch.labels)}, 202)

    async def on_lists(request: Request, change: str, key: str, entity_id: int = 0) -> list[int]:
        client, lists = request.app.state.redis, request.app.state.lists
        try:
            if change == "add":
                await client.sadd(key, entity_id)
            elif change == "remove":
                await client.srem(key, entity_id)
            members = await client.smembers(key)
            await lists.refresh(client, settings.key_prefix)
        except Exception as error:  # the store is away: nothing was changed, the caller retries
            log.warning("lists not reachable: %s", type(error).__name__)
            raise HTTPException(status_code=503, detail=STORE_AWAY, headers={"Retry-After": "1"}) from None
        return sorted(int(m) for m in members)

    @app.get("/v1/lists/{which}/{kind}", response_model=ListMembers, dependencies=keyed, responses=errors)
    async def list_members(which: Which, kind: Kind, request: Request) -> Any:
        """The customers or terminals on the allow or block list."""
        members = await on_lists(request, "read", list_key(settings.key_prefix, which, kind))
        return {"which": which, "kind": kind, "members": members}

    @app.put("/v1/lists/{which}/{kind}/{entity_id}", status_code=204, dependencies=keyed, responses=errors)
    async def list_add(which: Which, kind: Kind, entity_id: EntityId, request: Request) -> Response:
        """Put a customer or terminal on a list (every replica applies it within a second)."""
        await on_lists(request, "add", list_key(settings.key_prefix, which, kind), entity_id)
        return Response(status_code=204)

    @app.delete("/v1/lists/{which}/{kind}/{entity_id}", status_code=204, dependencies=keyed, responses=errors)
    async def list_remove(which: Which, kind: Kind, entity_id: EntityId, request: Request) -> Response:
        """Take a customer or terminal off a list."""
        await on_lists(request, "remove", list_key(settings.key_prefix, which, kind), entity_id)
        return Response(status_code=204)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready when answers would be right: a champion loaded, every store node answering
        with its data, most recent answers from the champion. Why not, in one word."""
        readiness = request.app.state.readiness
        await readiness.check()
        reason = readiness.reason()
        request.app.state.metrics.ready.set(0 if reason else 1)
        return JSONResponse({"ready": reason is None, "reason": reason}, status_code=503 if reason else 200)

    @app.get("/metrics", dependencies=keyed)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (with keys set: `X-API-Key` or `Authorization: Bearer <key>`)."""
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=keyed, responses=errors)
    async def models_view(request: Request) -> dict[str, Any]:
        """What is served (version, decision policy), what the registry's aliases hold, the rules in force."""
        manager = request.app.state.models
        loop = asyncio.get_running_loop()
        registry = await loop.run_in_executor(None, manager.registry_view)
        current = manager.current
        rules = request.app.state.rules
        return {
            "serving": current.describe() if current else None,
            "registry": registry,
            "rules": {"file": str(rules.path) if rules.path else None, "rules": rules.current.describe()},
        }

    if settings.docs:
        mount_docs(app, keyed, "Vigil scoring API")
    return app


def mount_docs(app: FastAPI, keyed: list[Any], title: str) -> None:
    """/docs, /redoc and /openapi.json (behind the key when keys are set). Swagger UI's and
    ReDoc's files are served by the service itself (the fastapi-offline package ships them):
    the pages work on a network without a CDN."""
    import pathlib

    import fastapi_offline
    from starlette.staticfiles import StaticFiles

    assets = pathlib.Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), "docs-assets")

    @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=keyed)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=title,
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False, dependencies=keyed)
    async def redoc() -> Response:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=title,
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )
