"""The scoring service of a declared repo (`vigil serve` when VIGIL_FEATURE_REPO declares
its features): the request bodies, their validation and the OpenAPI document follow the
repo's event and label schemas; each loaded version gets its own feature service's inputs.

    POST /v1/score           one event             -> its score and decision
    POST /v1/score/batch     {"events": [...]}     -> {"results": [...]} in the same order
                             (the list's name: the events' RequestSource's tag vigil.batch)
    POST /v1/labels          {"labels": [...]}     -> 202 once on the stream the flow reads

Keys, limits, health, readiness, metrics, the rules of `VIGIL_RULES_FILE` (over the events'
fields and the declared features) and the documentation pages work as for the handbook's
service (`scoring.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.declared_fastpath import DeclaredScoreRoutes
from scoring.declared_lists import add_list_routes
from scoring.declared_resources import open_declared
from scoring.declared_scorer import DeclaredScorer, InvalidEvents, check_events
from scoring.fastpath import NO_KEY, NO_MODEL_YET, UNSUPPORTED, json_content
from scoring.middleware import RequestLimits
from scoring.resources import _every, _follow_aliases, serving_process
from scoring.security import authorised, encoded
from vigil.declared import DeclaredFeatures, load_declared
from vigil.declared.events import KIND, LABEL, check_records, json_problems, label_fields
from vigil.declared.model import Kind
from vigil.declared.online import DeclaredOnlineStore
from vigil.settings import Settings

log = logging.getLogger("vigil.scoring")
STORE_AWAY = "the store (Redis) is unavailable: nothing was recorded; retry"
JSON_TYPES: dict[Kind, dict[str, Any]] = {
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "string": {"type": "string", "minLength": 1},
    "boolean": {"type": "boolean"},
    "time": {"type": "string", "format": "date-time", "description": "ISO 8601; without an offset, UTC"},
}


def object_schema(
    fields: dict[str, Kind], title: str, bounds: dict[str, tuple[float, float]] | None = None
) -> dict[str, Any]:
    """A JSON schema of records with these fields, every one required (numbers within their bounds)."""
    properties = {name: dict(JSON_TYPES[kind]) for name, kind in fields.items()}
    for name, (low, high) in (bounds or {}).items():
        if name in properties:
            properties[name].update({k: v for k, v in (("minimum", low), ("maximum", high)) if math.isfinite(v)})
    return {"title": title, "type": "object", "properties": properties, "required": list(fields)}


def body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def answer_schema(declared: DeclaredFeatures) -> dict[str, Any]:
    kinds = declared.events.fields
    number = {"type": "number"}
    return {
        "title": "Score",
        "type": "object",
        "properties": {
            declared.events.event_id: JSON_TYPES[kinds[declared.events.event_id]],
            "score": {"type": "number", "minimum": 0, "maximum": 1, "description": "probability of fraud"},
            "model": {"type": "object", "description": "name, version and alias of the version that answered"},
            "fallback": {"type": "boolean"},
            "fallback_reason": {
                "type": ["string", "null"],
                "description": "timeout, model_error, features_unavailable, store_empty, store_lost_data",
            },
            "decision": {"type": "string", "enum": ["allow", "review", "block"]},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "latency_ms": number,
            "features": {
                "type": "object",
                "additionalProperties": number,
                "description": "with ?explain=true: the version's inputs by feature name, exact",
            },
            "contributions": {"type": "object", "additionalProperties": number},
        },
        "required": [declared.events.event_id, "score", "model", "fallback", "decision", "reasons"],
    }


def lifespan(settings: Settings, declared: DeclaredFeatures) -> Callable[[FastAPI], Any]:
    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        opened = await open_declared(settings, declared)
        app.state.lists, app.state.redis = opened.lists, opened.log_client
        app.state.metrics, app.state.models, app.state.store = opened.metrics, opened.models, opened.store
        app.state.executor, app.state.scorer = opened.executor, opened.scorer
        opened.prediction_log.start()
        opened.review.start()
        serving_process()
        watchers = [
            loop.create_task(
                _every(
                    settings.alias_poll_seconds, lambda: _follow_aliases(opened.models, opened.shadow, opened.metrics)
                )
            ),
            loop.create_task(_every(1.0, lambda: opened.refresh_rules_and_lists(settings))),
        ]
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
            await opened.prediction_log.stop()
            await opened.review.stop()
            await opened.close()

    return run


def create_declared_app(settings: Settings, declared: DeclaredFeatures | None = None) -> FastAPI:
    declared = declared or load_declared(settings.feature_repo)
    keys = encoded(settings.api_key_set)
    app = FastAPI(
        title=f"Vigil scoring API ({declared.project})",
        version="1",
        lifespan=lifespan(settings, declared),
        description="Fraud scores and decisions for the events the feature repo declares. "
        "Send the key of `VIGIL_API_KEYS` in the `X-API-Key` header.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Added first, so it runs inside RequestLimits (request ids, body limit, error log).
    app.add_middleware(
        DeclaredScoreRoutes,
        declared=declared,
        max_batch=settings.max_batch,
        api_keys=keys,
        ahead_seconds=settings.event_time_tolerance_seconds,
    )
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes)
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of VIGIL_API_KEYS")
    event_schema = object_schema(declared.events.fields, "Event", declared.events.bounds)
    labels_of = label_fields(declared)

    def require_key(request: Request, _: str | None = Depends(header)) -> None:
        if not authorised(request.scope.get("headers") or [], keys):
            raise HTTPException(status_code=401, detail=NO_KEY["detail"])

    async def json_body(request: Request) -> Any:
        if not json_content(request.scope.get("headers") or []):
            raise HTTPException(status_code=415, detail=UNSUPPORTED["detail"])
        raw = await request.body()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            try:  # NaN and Infinity are not JSON, but Python reads them: the refusal then names the field
                return json.loads(raw)
            except (ValueError, RecursionError):
                raise HTTPException(status_code=422, detail=[problem(["body"], f"not JSON: {error}")]) from None

    def problem(loc: list[Any], msg: str) -> dict[str, Any]:
        return {"type": "value_error", "loc": loc, "msg": msg}

    def records(payload: Any, key: str | None) -> list[dict[str, Any]]:
        """The list of records a body carries (one object, or `key`'s list), or a 422."""
        if key is not None:
            if not isinstance(payload, dict) or not isinstance(payload.get(key), list):
                raise HTTPException(status_code=422, detail=[problem([key], f"an object with a list {key!r}")])
            items = payload[key]
            if len(items) > settings.max_batch:
                raise HTTPException(status_code=413, detail=f"at most {settings.max_batch} {key} per request")
        else:
            items = [payload]
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise HTTPException(status_code=422, detail=[problem([*([key] if key else []), i], "not an object")])
        return items

    def as_json(content: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(content), status_code=status, media_type="application/json")

    async def answer(request: Request, items: list[dict[str, Any]], explain: bool, key: str | None) -> list[Any]:
        scorer: DeclaredScorer = request.app.state.scorer
        if scorer.models.current is None:
            raise HTTPException(status_code=503, detail=scorer.models.unavailable or NO_MODEL_YET)
        try:
            events = check_events(declared, items, settings.event_time_tolerance_seconds)
        except InvalidEvents as error:
            prefix = [key] if key else []
            detail = [{**p, "loc": [*prefix, *p["loc"]] if key else p["loc"][1:]} for p in error.problems[:20]]
            raise HTTPException(status_code=422, detail=detail) from None
        return await scorer.score_in_chunks(events, explain)

    keyed = [Depends(require_key)]
    score_doc = {
        **body(event_schema),
        "responses": {"200": {"content": {"application/json": {"schema": answer_schema(declared)}}}},
    }

    @app.post("/v1/score", dependencies=keyed, openapi_extra=score_doc)
    async def score(request: Request, explain: bool = False) -> Response:
        """Score one event: its features as of its own time, the champion's score, a decision."""
        return as_json((await answer(request, records(await json_body(request), None), explain, None))[0])

    listed = declared.events.batch  # the name of the batch body's list (tag vigil.batch)
    batch_schema = {"type": "object", "properties": {listed: {"type": "array", "items": event_schema}}}

    @app.post("/v1/score/batch", dependencies=keyed, openapi_extra=body({**batch_schema, "required": [listed]}))
    async def score_batch(request: Request, explain: bool = False) -> Response:
        """Score up to `VIGIL_MAX_BATCH` events; results in the same order."""
        items = records(await json_body(request), listed)
        return as_json({"results": await answer(request, items, explain, listed)})

    label_schema = {
        "type": "object",
        "properties": {"labels": {"type": "array", "items": object_schema(labels_of, "Label", declared.events.bounds)}},
    }

    @app.post(
        "/v1/labels", status_code=202, dependencies=keyed, openapi_extra=body({**label_schema, "required": ["labels"]})
    )
    async def labels(request: Request) -> Response:
        """Outcomes of earlier events, appended to the stream the feature flow reads. A label
        names an event the flow has recorded, at its time: any other is a 422 naming the field."""
        items = records(await json_body(request), "labels")
        strict = json_problems(items, labels_of)
        if strict:
            return JSONResponse({"detail": [{**p, "loc": ["labels", *p["loc"]]} for p in strict[:20]]}, status_code=422)
        frame = pd.DataFrame.from_records(items, columns=list(labels_of)).astype(object)
        frame = frame.where(frame.notna(), None).assign(**{KIND: LABEL})
        checked = check_records(declared, frame, "api", list(range(len(frame))), settings.event_time_tolerance_seconds)
        refused = [
            problem(["labels", d.token, d.reason.split(": ", 1)[0]], d.reason.split(": ", 1)[-1]) for d in checked.dead
        ]
        store: DeclaredOnlineStore = request.app.state.store
        loop = asyncio.get_running_loop()
        try:
            if not refused:
                verdicts = await loop.run_in_executor(request.app.state.executor, store.label_mistakes, checked.labels)
                for i, reason in enumerate(verdicts):
                    if reason is not None:
                        field, _, why = reason.partition(": ")
                        refused.append(problem(["labels", i, field], why))
            if refused:
                return JSONResponse({"detail": refused[:20]}, status_code=422)
            entries = [
                {KIND: LABEL, **{k: v.isoformat() if isinstance(v, pd.Timestamp) else v for k, v in row.items()}}
                for row in checked.labels.to_dict("records")
            ]

            def write() -> None:
                with store.client.pipeline(transaction=False) as pipe:
                    for entry in entries:
                        pipe.xadd(settings.events_stream, {"json": orjson.dumps(entry)})
                    pipe.execute()

            await loop.run_in_executor(request.app.state.executor, write)
        except HTTPException:
            raise
        except Exception as error:  # not written: not accepted, the caller retries
            raise HTTPException(status_code=503, detail=STORE_AWAY, headers={"Retry-After": "1"}) from error
        request.app.state.metrics.labels_accepted.inc(len(entries))
        return as_json({"accepted": len(entries)}, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready when a champion is loaded and the store answers with the flow's data (its
        markers). Why not, in one word: `no_model`, `store_unreachable`, `store_empty` (never
        filled), `store_lost_data` (filled once, emptied since: replay the history)."""
        reason = None
        if request.app.state.models.current is None:
            reason = "no_model"
        else:
            try:
                filled = await asyncio.get_running_loop().run_in_executor(
                    request.app.state.executor, request.app.state.store.holds_data
                )
                scorer: DeclaredScorer = request.app.state.scorer
                reason = None if filled else scorer.without_data()
            except Exception:
                reason = "store_unreachable"
        request.app.state.metrics.ready.set(0 if reason else 1)
        return JSONResponse({"ready": reason is None, "reason": reason}, status_code=503 if reason else 200)

    @app.get("/metrics", dependencies=keyed)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=keyed)
    async def models_view(request: Request) -> dict[str, Any]:
        """What is served (version, decision policy, feature service and inputs of each loaded
        version), what the registry's aliases hold, the rules in force."""
        scorer: DeclaredScorer = request.app.state.scorer
        registry = await asyncio.get_running_loop().run_in_executor(None, scorer.models.registry_view)
        rules = {
            "file": str(scorer.rules.path) if scorer.rules.path else None,
            "rules": scorer.rules.current.describe(),
        }
        view: dict[str, Any] = {"repo": declared.project, "registry": registry, "rules": rules}
        for name, manager in (("serving", scorer.models), ("shadow", scorer.shadow)):
            loaded = manager.current if manager is not None else None
            view[name] = (
                {
                    **loaded.describe(),
                    "feature_service": loaded.primary.service_name,
                    "inputs": list(loaded.primary.inputs),
                }
                if loaded
                else None
            )
        return view

    add_list_routes(app, settings, declared, keyed)
    if settings.docs:
        from scoring.app import mount_docs

        mount_docs(app, keyed, f"Vigil scoring API ({declared.project})")
    return app
