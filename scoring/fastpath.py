"""The two scoring routes served as plain ASGI, in front of FastAPI.

`POST /v1/score` and `POST /v1/score/batch` are the hot path: FastAPI's dependency
resolution, request object and pydantic model construction cost more than the feature
read and the model together. Here a well-formed body is checked field by field on the
parsed JSON and handed to the scorer directly; anything that does not pass that check
is validated by the same pydantic schemas FastAPI documents, for FastAPI's 422 bodies
naming the field (the input rules: `scoring.schemas`). FastAPI still declares both
routes, so `/openapi.json` documents them.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Any, NamedTuple
from urllib.parse import parse_qs

import orjson
from fastapi.encoders import jsonable_encoder
from pydantic import TypeAdapter, ValidationError

from scoring.schemas import INT64_MAX, Transaction, TransactionBatch, parse_amount, parse_datetime
from scoring.security import authorised

SCORE, BATCH = "/v1/score", "/v1/score/batch"
NO_MODEL_YET = "no model is promoted yet: train one (`vigil train`) and promote it (`vigil promote`)"
# A large batch is parsed and scored in chunks, the event loop yielding between them, so that
# single requests arriving meanwhile wait for one chunk (a few ms), not the whole batch: a
# 10,000-row batch in one piece held the loop for about a second.
BATCH_CHUNK = 128
PARSE_CHUNK = 256
_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no"}


class ParsedTransaction(NamedTuple):
    """A transaction that passed the field checks (what the scorer reads). A tuple: a
    1,000-row batch makes a thousand, and a frozen dataclass took 1 us each to build."""

    transaction_id: int
    customer_id: int
    terminal_id: int
    tx_amount: float
    tx_datetime: datetime


class ClientError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT64_MAX


def parse_transaction(item: Any) -> ParsedTransaction | None:
    """The transaction if every field is present and valid; None means: let pydantic say why not."""
    if type(item) is not dict:
        return None
    tid: Any = item.get("transaction_id")
    cid: Any = item.get("customer_id")
    term: Any = item.get("terminal_id")
    if not (_id(tid) and _id(cid) and _id(term)):
        return None
    try:
        amount, moment = parse_amount(item.get("tx_amount")), parse_datetime(item.get("tx_datetime"))
    except ValueError:
        return None
    return ParsedTransaction(tid, cid, term, amount, moment)


_ONE = TypeAdapter(Transaction)
_MANY = TypeAdapter(TransactionBatch)


EXCERPT = 80  # characters of a refused input echoed back


def excerpt(value: Any) -> Any:
    """A short, JSON-safe excerpt of a refused input (never the whole body back)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN and Infinity are not JSON: echoed as text
    if isinstance(value, str | int | float | bool) or value is None:
        text = value if isinstance(value, str) else None
        if text is None:
            return value
    else:
        text = repr(value)
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


def problems(errors: list[Any], where: str = "body") -> list[dict[str, Any]]:
    """pydantic's errors as 422 details: location, message, type, a short excerpt of the input."""
    out = []
    for e in errors[:20]:
        item = {"type": e["type"], "loc": [where, *e["loc"]], "msg": e["msg"]}
        if "input" in e:
            item["input"] = excerpt(e["input"])
        out.append(item)
    return out


def _validated(adapter: TypeAdapter[Any], body: Any) -> Any:
    try:
        return adapter.validate_python(body)
    except ValidationError as error:
        raise ClientError(422, {"detail": jsonable_encoder(problems(error.errors(include_url=False)))}) from None


def transactions_from(path: str, body: Any, max_batch: int) -> list[Any]:
    if path == SCORE:
        fast = parse_transaction(body)
        return [fast if fast is not None else _validated(_ONE, body)]
    items = body.get("transactions") if type(body) is dict else None
    if type(items) is list and len(items) > max_batch:
        raise ClientError(413, {"detail": f"at most {max_batch} transactions per batch"})
    if type(items) is list:
        parsed = [parse_transaction(item) for item in items]
        if all(p is not None for p in parsed):
            return parsed
    return list(_validated(_MANY, body).transactions)


async def _batch_from(body: Any, max_batch: int) -> list[Any]:
    """`transactions_from` for the batch route, a chunk at a time (see BATCH_CHUNK)."""
    items = body.get("transactions") if type(body) is dict else None
    if type(items) is not list or len(items) <= PARSE_CHUNK:
        return transactions_from(BATCH, body, max_batch)
    if len(items) > max_batch:
        raise ClientError(413, {"detail": f"at most {max_batch} transactions per batch"})
    parsed: list[Any] = []
    for start in range(0, len(items), PARSE_CHUNK):
        parsed.extend(parse_transaction(item) for item in items[start : start + PARSE_CHUNK])
        await asyncio.sleep(0)
    if all(p is not None for p in parsed):
        return parsed
    return list(_validated(_MANY, body).transactions)  # pydantic names the fields at fault


def explain_flag(query: bytes) -> bool:
    values = parse_qs(query.decode("latin-1")).get("explain")
    if not values:
        return False
    value = values[-1].lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ClientError(
        422,
        {
            "detail": [
                {
                    "type": "bool_parsing",
                    "loc": ["query", "explain"],
                    "msg": "Input should be a valid boolean, unable to interpret input",
                    "input": values[-1],
                }
            ]
        },
    )


def json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body is declared JSON (application/json, or a +json type)."""
    kind = next((v for k, v in headers if k == b"content-type"), b"").split(b";")[0].strip().lower()
    return kind == b"application/json" or (kind.startswith(b"application/") and kind.endswith(b"+json"))


UNSUPPORTED = {"detail": "send the body as JSON, with Content-Type: application/json"}
NO_KEY = {"detail": "missing or wrong API key (X-API-Key header)"}


def is_scoring(scope: dict[str, Any]) -> bool:
    """Whether a request is for one of the two scoring routes."""
    return scope["type"] == "http" and scope["method"] == "POST" and scope.get("path") in (SCORE, BATCH)


def explain_of(scope: dict[str, Any], api_keys: tuple[bytes, ...]) -> bool:
    """A scoring request's `explain` flag, once its key and content type are checked
    (`ClientError` 401, 415, or 422 for a flag that is not a boolean)."""
    headers = scope.get("headers") or []
    if not authorised(headers, api_keys):
        raise ClientError(401, NO_KEY)
    if not json_content(headers):
        raise ClientError(415, UNSUPPORTED)
    return explain_flag(scope.get("query_string", b""))


class FastScoreRoutes:
    """ASGI middleware answering the two scoring routes; everything else goes to FastAPI."""

    def __init__(self, app: Any, max_batch: int, api_keys: tuple[bytes, ...]) -> None:
        self.app, self.max_batch, self.api_keys = app, max_batch, api_keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_scoring(scope):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        try:
            explain = explain_of(scope, self.api_keys)
            raw = await read_body(receive)
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as error:
                raise ClientError(
                    422,
                    {"detail": [{"type": "json_invalid", "loc": ["body", error.pos], "msg": "JSON decode error"}]},
                ) from None
            txs = (
                transactions_from(path, body, self.max_batch)
                if path == SCORE
                else await _batch_from(body, self.max_batch)
            )
        except ClientError as error:
            await send_json(send, error.status, orjson.dumps(error.body))
            return
        scorer = scope["app"].state.scorer
        if scorer.models.current is None:
            await send_json(send, 503, orjson.dumps({"detail": scorer.models.unavailable or NO_MODEL_YET}))
            return
        if path == SCORE:
            payload = orjson.dumps((await scorer.score(txs, explain))[0])
        else:
            # Each chunk scored and serialized in its turn (one 10,000-answer dump held the loop
            # for tens of ms at the end), the loop yielding between chunks.
            parts: list[bytes] = []
            for start in range(0, len(txs), BATCH_CHUNK):
                parts.append(orjson.dumps(await scorer.score(txs[start : start + BATCH_CHUNK], explain))[1:-1])
                await asyncio.sleep(0)  # single requests waiting meanwhile go first
            payload = b'{"results":[' + b",".join(part for part in parts if part) + b"]}"
        await send_json(send, 200, payload)


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def send_json(send: Any, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
