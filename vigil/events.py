"""Event schema and validation: raw records in, typed events and dead letters out.

Two kinds of events feed the features: a `transaction` (updates its customer's
history) and a `label` (the fraud outcome of an earlier transaction, updates its
terminal's history). Every source (file replay, Redis Streams, Kafka) hands raw
records to `validate`, which sorts them into typed columns and dead letters, each
with a reason and the raw payload; nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from vigil.event_clock import EventClock

TRANSACTION = "transaction"
LABEL = "label"
KINDS = (TRANSACTION, LABEL)

TRANSACTION_FIELDS = ("transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount")
LABEL_FIELDS = ("transaction_id", "tx_datetime", "terminal_id", "tx_fraud")
ALL_FIELDS = ("kind", "transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount", "tx_fraud")
INT_FIELDS = ("transaction_id", "customer_id", "terminal_id")


def label_event(transaction_id: int, terminal_id: int, tx_datetime: datetime, tx_fraud: int) -> dict[str, Any]:
    """A label event as a stream entry's fields (what POST /v1/labels and `vigil review` send)."""
    return {
        "kind": LABEL,
        "transaction_id": int(transaction_id),
        "terminal_id": int(terminal_id),
        "tx_datetime": tx_datetime.replace(tzinfo=None).isoformat(),
        "tx_fraud": int(tx_fraud),
    }


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be used, why, and what it was."""

    reason: str
    raw: str
    source: str
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    token: Any = None  # the source's acknowledgement handle, if any

    def to_fields(self) -> dict[str, str]:
        return {"reason": self.reason, "raw": self.raw, "source": self.source, "at": self.at}


@dataclass
class RawBatch:
    """Records as they came: object columns named as in ALL_FIELDS, plus optional tokens."""

    frame: pd.DataFrame
    source: str
    tokens: list[Any] | None = None
    # Payloads that could not even be parsed into a record (e.g. invalid JSON).
    unparsed: list[DeadLetter] = field(default_factory=list)
    # Delivered before and never acknowledged (a crash): its events may already be written.
    redelivered: bool = False

    def __len__(self) -> int:
        return len(self.frame) + len(self.unparsed)


@dataclass
class ValidatedBatch:
    """Typed events (times as int64 unix seconds) and the dead letters of one raw batch."""

    transactions: pd.DataFrame  # transaction_id, ts, customer_id, terminal_id, tx_amount, token
    labels: pd.DataFrame  # transaction_id, ts, terminal_id, tx_fraud, token
    dead: list[DeadLetter]
    redelivered: bool = False


def _raw_json(row: dict[str, Any]) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, pd.Timestamp | datetime):
            return value.isoformat()
        if isinstance(value, np.generic):
            return value.item()
        return value

    return json.dumps({k: clean(v) for k, v in row.items() if v is not None and v is not pd.NA}, default=str)


def _as_int(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer values and a mask of entries that are not integers (missing ones included)."""
    if column.dtype.kind in "iu":
        # Typed int64 (Parquet) stays exact, even beyond float precision.
        return column.astype(np.int64, copy=False), np.zeros(len(column), bool)
    values = np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 2**62)
    return np.where(ok, values, 0).astype(np.int64), ~ok


def _as_float(column: np.ndarray) -> np.ndarray:
    return np.asarray(pd.to_numeric(column, errors="coerce"), dtype=np.float64)


def _as_seconds(column: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unix seconds of naive (or UTC-converted) times, and a mask of unparseable ones."""
    words = None
    if isinstance(column, pd.Series) and pd.api.types.is_datetime64_any_dtype(column.dtype):
        parsed = pd.DatetimeIndex(column)
    else:
        raw = np.asarray(column)
        parsed = pd.DatetimeIndex(pd.to_datetime(raw, errors="coerce", format="ISO8601"))
        # pandas reads "now" and "today" as the wall-clock time: an ISO 8601 time starts
        # with its year's digits, so any other text is unparseable here.
        words = np.fromiter((isinstance(v, str) and not v.lstrip()[:1].isdigit() for v in raw), bool, len(raw))
    if parsed.tz is not None:
        parsed = parsed.tz_convert("UTC").tz_localize(None)
    values = parsed.to_numpy(dtype="datetime64[s]")
    bad = np.isnat(values) if words is None else np.isnat(values) | words
    return np.where(bad, 0, values.astype(np.int64)), bad


def validate(raw: RawBatch, clock: EventClock | None = None) -> ValidatedBatch:
    """Splits a raw batch into typed transactions, typed labels and dead letters.

    Vectorised (numpy) so that one implementation serves million-row file replays and
    ten-event stream batches alike; the first failing rule names the reason. With a
    `clock`, an event too far ahead of the stream's event-time progress is refused too.
    """
    frame = raw.frame
    n = len(frame)
    reason = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, why: str) -> None:
        reason[mask & (reason == "")] = why

    # Plain numpy columns: pandas' per-Series overhead would dominate a ten-event batch.
    none = np.full(n, None, dtype=object)
    columns = {name: frame[name].to_numpy() if name in frame else none for name in ALL_FIELDS}

    def column(name: str) -> np.ndarray:
        return columns[name]

    missing = {name: pd.isna(values) for name, values in columns.items()}
    kind = np.where(missing["kind"], TRANSACTION, column("kind").astype(str))
    flag(~np.isin(kind, KINDS), "unknown event kind (expected transaction or label)")
    is_tx = kind == TRANSACTION
    is_label = kind == LABEL

    for name in ALL_FIELDS[1:]:
        needed = (is_tx if name in TRANSACTION_FIELDS else False) | (is_label if name in LABEL_FIELDS else False)
        flag(needed & missing[name], f"missing field {name}")

    typed: dict[str, np.ndarray] = {}
    for name in INT_FIELDS:
        typed[name], bad = _as_int(column(name))
        flag(bad & ~missing[name], f"field {name} is not an integer")
    typed["ts"], bad_time = _as_seconds(frame.get("tx_datetime", none))
    flag(bad_time & ~missing["tx_datetime"], "unparseable tx_datetime")

    amount = _as_float(column("tx_amount"))
    present = ~missing["tx_amount"] & is_tx
    flag(present & np.isnan(amount), "field tx_amount is not a number")
    flag(present & np.isinf(amount), "tx_amount is not finite")
    flag(present & (amount < 0), "tx_amount is negative")

    # A label must be 0/1; a transaction may carry one (a file row), and then it must be 0/1 too.
    fraud = _as_float(column("tx_fraud"))
    flag(~missing["tx_fraud"] & ~np.isin(fraud, (0.0, 1.0)), "tx_fraud must be 0 or 1")

    if clock is not None and n:
        valid = reason == ""
        ahead = clock.too_far_ahead(typed["ts"], valid, typed["ts"][valid & is_tx])
        flag(ahead, f"tx_datetime is more than {clock.describe()} ahead of the stream's event time")

    good = reason == ""
    tokens = np.empty(n, dtype=object)
    if raw.tokens is not None:
        tokens[:] = raw.tokens
    tx_rows, label_rows = good & is_tx, good & is_label
    transactions = pd.DataFrame(
        {
            "transaction_id": typed["transaction_id"][tx_rows],
            "ts": typed["ts"][tx_rows],
            "customer_id": typed["customer_id"][tx_rows],
            "terminal_id": typed["terminal_id"][tx_rows],
            "tx_amount": amount[tx_rows],
            "token": tokens[tx_rows],
        },
        index=frame.index[tx_rows],
    )
    labels = pd.DataFrame(
        {
            "transaction_id": typed["transaction_id"][label_rows],
            "ts": typed["ts"][label_rows],
            "terminal_id": typed["terminal_id"][label_rows],
            "tx_fraud": fraud[label_rows].astype(np.int64),
            "token": tokens[label_rows],
        },
        index=frame.index[label_rows],
    )
    dead = list(raw.unparsed)
    bad_index = np.flatnonzero(~good)
    if bad_index.size:
        records = frame.iloc[bad_index].to_dict("records")
        for i, record in zip(bad_index, records, strict=True):
            dead.append(DeadLetter(str(reason[i]), _raw_json(record), raw.source, token=tokens[i]))
    return ValidatedBatch(transactions, labels, dead, raw.redelivered)


def records_to_batch(
    records: list[Any], source: str, tokens: list[Any] | None = None, fields: tuple[str, ...] = ALL_FIELDS
) -> RawBatch:
    """Raw payloads (dicts, or JSON text/bytes) from a stream into a RawBatch of `fields`."""
    rows: list[dict[str, Any]] = []
    kept_tokens: list[Any] = []
    unparsed: list[DeadLetter] = []
    for i, record in enumerate(records):
        token = tokens[i] if tokens is not None else None
        parsed: Any = record
        if isinstance(record, bytes | str):
            text = record.decode("utf-8", "replace") if isinstance(record, bytes) else record
            try:
                parsed = json.loads(text)
            except ValueError:
                unparsed.append(DeadLetter("payload is not valid JSON", text, source, token=token))
                continue
        if not isinstance(parsed, dict):
            unparsed.append(
                DeadLetter("payload is not a JSON object", json.dumps(parsed, default=str), source, token=token)
            )
            continue
        rows.append({k: parsed.get(k) for k in fields})
        kept_tokens.append(token)
    frame = pd.DataFrame(rows, columns=list(fields), dtype=object)
    return RawBatch(frame, source, kept_tokens if tokens is not None else None, unparsed)
