"""Request and response bodies of the scoring API (also the OpenAPI document).

Input rules (the same on the fast path, `scoring.fastpath`, and here):
- JSON bodies only (`Content-Type: application/json`; anything else is 415).
- Ids are JSON integers in [0, 2^63 - 1]: no strings, no booleans, no fractions.
- `tx_amount` is a JSON number in [0, 1e9]: no strings, no booleans, nothing infinite.
- `tx_datetime` is an ISO 8601 string with a date and a time to the second,
  `YYYY-MM-DDTHH:MM:SS`, optionally fractions of a second and a zone (`Z` or `+HH:MM`).
  A time without a zone is UTC; a zoned time is converted to UTC. Dates, week dates,
  epoch numbers are refused. The time lies between 1970-01-01 and 2200-12-31 (UTC).
Every refusal is a 422 naming the field; echoed input is cut to a short excerpt.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictInt, WithJsonSchema

INT64_MAX = 2**63 - 1  # ids are stored as 64-bit integers
MAX_AMOUNT = 1e9  # far above any card payment, far below float32's range (features stay finite)
EARLIEST = datetime(1970, 1, 1)
LATEST = datetime(2200, 12, 31, 23, 59, 59, 999_999)
# Years 1970-2200 and zones within +-14:00, so the pattern says most of the range rule.
DATETIME_PATTERN = (
    r"^(19[7-9]\d|20\d\d|21\d\d|2200)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"
    r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?(Z|[+-](0\d|1[0-4]):[0-5]\d)?$"
)
_DATETIME = re.compile(DATETIME_PATTERN)
DATETIME_RULE = (
    "ISO 8601 date and time to the second (YYYY-MM-DDTHH:MM:SS, optional fraction, optional Z or +HH:MM); "
    "no zone means UTC; between 1970-01-01 and 2200-12-31"
)


def parse_datetime(value: Any) -> datetime:
    """A transaction time by the rules above, as a naive UTC datetime."""
    if type(value) is not str:
        raise ValueError(f"must be a string: {DATETIME_RULE}")
    if not _DATETIME.match(value):
        raise ValueError(f"not a date and time as required: {DATETIME_RULE}")
    text = value.replace("Z", "+00:00")
    dot = text.find(".")
    if dot != -1:  # Python reads up to microseconds: cut nanoseconds
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[:dot] + text[dot : min(end, dot + 7)] + text[end:]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise ValueError(f"not a valid date and time ({error})") from None
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            raise ValueError("lies outside 1970-01-01..2200-12-31 (UTC)") from None
    if not EARLIEST <= moment <= LATEST:
        raise ValueError("lies outside 1970-01-01..2200-12-31 (UTC)")
    return moment


def parse_amount(value: Any) -> float:
    if type(value) not in (int, float):
        raise ValueError("must be a JSON number")
    amount = float(value)
    if not math.isfinite(amount):
        raise ValueError("must be a finite number")
    if not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"must lie between 0 and {MAX_AMOUNT:.0e}")
    return amount


TxDateTime = Annotated[
    datetime,
    PlainValidator(parse_datetime),
    WithJsonSchema(
        {"type": "string", "format": "date-time", "pattern": DATETIME_PATTERN, "description": DATETIME_RULE}
    ),
]
Amount = Annotated[
    float,
    PlainValidator(parse_amount),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": MAX_AMOUNT}),
]
Id = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]


class Transaction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    transaction_id: Id = Field(..., examples=[123])
    customer_id: Id = Field(..., examples=[42])
    terminal_id: Id = Field(..., examples=[7])
    tx_amount: Amount = Field(..., examples=[57.1])
    tx_datetime: TxDateTime = Field(..., examples=["2018-08-08T10:31:00"])


class TransactionFields(Protocol):
    """What the scorer reads of a transaction (a validated `Transaction` or the fast path's)."""

    @property
    def transaction_id(self) -> int: ...
    @property
    def customer_id(self) -> int: ...
    @property
    def terminal_id(self) -> int: ...
    @property
    def tx_amount(self) -> float: ...
    @property
    def tx_datetime(self) -> datetime: ...


class TransactionBatch(BaseModel):
    transactions: list[Transaction]


class ModelRef(BaseModel):
    name: str
    version: str | None
    alias: str


class Score(BaseModel):
    transaction_id: int
    score: float = Field(..., ge=0, le=1, description="probability of fraud")
    model: ModelRef
    fallback: bool
    fallback_reason: str | None = Field(
        None,
        description="timeout, model_error, features_unavailable, store_empty, store_lost_data",
    )
    decision: Literal["allow", "review", "block"] = Field(..., description="what to do with the transaction")
    reasons: list[str] = Field(..., description='why, e.g. "rule:huge_amount", "score>=review_threshold"')
    latency_ms: float
    features: dict[str, float] | None = Field(None, description="with ?explain=true: the 15 model inputs, exact")
    extra_features: dict[str, float] | None = Field(
        None,
        description="with ?explain=true, when the model is on a later feature set: the inputs it adds to fraud_v1's",
    )
    derived_features: dict[str, float] | None = Field(
        None, description="with ?explain=true, for a model that derives inputs (ratios) from these: their values"
    )
    contributions: dict[str, float] | None = Field(
        None, description="with ?explain=true: the top contributions, named by inputs given in this answer"
    )
    score_floor: float | None = Field(
        None,
        description="with ?explain=true, for a model with a hidden-compromise floor: the floor (rate x the days "
        "since the terminal's newest label); a score equal to it was set by the floor, not by the trees",
    )


class ScoreBatch(BaseModel):
    results: list[Score]


class Problem(BaseModel):
    detail: Any = Field(..., description="what was wrong: a message, or a list of {loc, msg, type} per field")
