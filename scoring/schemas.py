"""Request and response bodies of the scoring API (also the OpenAPI document)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT64_MAX = 2**63 - 1  # ids are stored as 64-bit integers


class Transaction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    transaction_id: int = Field(..., ge=0, le=INT64_MAX, examples=[123])
    customer_id: int = Field(..., ge=0, le=INT64_MAX, examples=[42])
    terminal_id: int = Field(..., ge=0, le=INT64_MAX, examples=[7])
    tx_amount: float = Field(..., ge=0, examples=[57.1])
    tx_datetime: datetime = Field(..., examples=["2018-08-08T10:31:00"])

    @field_validator("tx_amount")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


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
    fallback_reason: str | None = Field(None, description="timeout, model_error, features_unavailable, ...")
    latency_ms: float
    features: dict[str, float] | None = Field(None, description="with ?explain=true: the 15 model inputs")
    extra_features: dict[str, float] | None = Field(
        None,
        description="with ?explain=true, when the model is on a later feature set: the inputs it adds to fraud_v1's",
    )
    contributions: dict[str, float] | None = Field(None, description="with ?explain=true: top contributions")
    score_floor: float | None = Field(
        None,
        description="with ?explain=true, for a model with a hidden-compromise floor: the floor (rate x the days "
        "since the terminal's newest label); a score equal to it was set by the floor, not by the trees",
    )


class ScoreBatch(BaseModel):
    results: list[Score]
