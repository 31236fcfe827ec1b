"""Raw records of a declared repo's schema in, typed events and labels and dead letters out.

A record is a label when its `kind` field is `label`, an event otherwise. An event has
every field of the events' schema; a label the labelled event's id and time, the join
keys of the views on the labels, and the label (0 or 1). JSON kinds: `integer` (an
integer, or a string of one; not a boolean), `number` (finite), `string` (non-empty),
`boolean`, `time` (ISO 8601; without an offset, UTC). A record that breaks one of these
is a dead letter whose reason names the first field at fault, in schema order.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from vigil.declared.batch import EventColumns
from vigil.declared.model import DeclaredFeatures, Kind
from vigil.events import DeadLetter

KIND = "kind"
LABEL = "label"


@dataclass
class Checked:
    """A batch sorted out: typed events and labels, their tokens, and the dead letters."""

    events: pd.DataFrame
    labels: pd.DataFrame
    tokens: list[Any] = field(default_factory=list)  # the valid events' (None-free)
    dead: list[DeadLetter] = field(default_factory=list)
    label_tokens: list[Any] = field(default_factory=list)  # one per label row (None: no token)
    source: str = ""


def label_fields(declared: DeclaredFeatures) -> dict[str, Kind]:
    """What a label carries: event id, time, the label views' join keys, the label."""
    schema = declared.labels
    if schema is None:
        return {}
    keys = {a.key for a in declared.aggregations if a.on == "labels"}
    kinds = declared.events.fields
    return {
        schema.event_id: "integer",
        schema.time: "time",
        **{k: kinds[k] for k in sorted(keys)},
        schema.label: "integer",
    }


def record_fields(declared: DeclaredFeatures) -> tuple[str, ...]:
    """Every field a stream entry or a replay row may carry."""
    return tuple(dict.fromkeys([KIND, *declared.events.fields, *label_fields(declared)]))


# What pandas infers for an object column with no bool in it (bools make it "boolean",
# "mixed" or "mixed-integer"): such a column needs no per-value look for bools.
_NO_BOOLS = ("integer", "floating", "mixed-integer-float", "empty")


def _is(values: pd.Series, kinds: tuple[type, ...]) -> np.ndarray:
    return values.map(lambda v: isinstance(v, kinds)).to_numpy(bool)


def _strings(values: pd.Series) -> np.ndarray:
    """Which values are strings: at C speed when all are (a stream's usual batch)."""
    if infer_dtype(values, skipna=False) == "string":
        return np.ones(len(values), bool)
    return _is(values, (str,))


def _typed(values: pd.Series, kind: Kind) -> tuple[pd.Series, np.ndarray, str]:
    """(typed values, which rows are good, why the others are not)."""
    present = values.notna().to_numpy(bool)
    if kind == "time":
        stamps = pd.to_datetime(values.astype(object), utc=True, errors="coerce", format="ISO8601", cache=False)
        return stamps, present & stamps.notna().to_numpy(bool), "not an ISO 8601 time"
    if kind == "string":
        good = present & _strings(values) & (values.astype(str).str.len() > 0).to_numpy(bool)
        return values.astype(object), good, "not a non-empty string"
    if kind == "boolean":
        text = values.map(lambda v: str(v).lower() if isinstance(v, str | bool) else None)
        good = present & text.isin(["true", "false"]).to_numpy(bool)
        return (text == "true").astype(bool), good, "not a boolean"
    if infer_dtype(values, skipna=True) not in _NO_BOOLS:  # True is not the number 1 here
        values = values.where(~_is(values, (bool, np.bool_)))
    numbers = pd.to_numeric(values, errors="coerce")
    finite = np.isfinite(numbers.to_numpy(np.float64, na_value=np.nan))
    if kind == "number":
        return numbers.astype(np.float64), present & finite, "not a finite number"
    as_float = numbers.to_numpy(np.float64, na_value=0)
    whole = finite & (np.floor(as_float) == as_float)
    return numbers.fillna(0).astype(np.int64), present & whole, "not an integer"


def _sort_out(
    frame: pd.DataFrame, fields: dict[str, Kind], bounds: dict[str, tuple[float, float]]
) -> tuple[pd.DataFrame, list[str | None]]:
    reasons: list[str | None] = [None] * len(frame)
    typed = pd.DataFrame(index=frame.index)
    for name, kind in fields.items():
        values = frame[name] if name in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        column, good, why = _typed(values, kind)
        if name in bounds:
            low, high = bounds[name]
            outside = good & ~column.between(low, high).to_numpy(bool)
            good &= ~outside
            why = why if not outside.any() else f"{why} between {low:g} and {high:g}"
        typed[name] = column
        missing = ~values.notna().to_numpy(bool)
        for i in np.flatnonzero(~good).tolist():
            if reasons[i] is None:
                reasons[i] = f"{name}: missing" if missing[i] else f"{name}: {why} ({excerpt(values.iloc[i])!r})"
    return typed, reasons


def check_records(
    declared: DeclaredFeatures,
    frame: pd.DataFrame,
    source: str,
    tokens: list[Any] | None = None,
    ahead_seconds: float = 86_400,
) -> Checked:
    """Sorts a batch of raw records (object columns named as the fields) out. A time more
    than `ahead_seconds` past the wall clock is refused too: one fact dated 2200 would make
    every other fact of its entity look older than any window."""
    latest = pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=ahead_seconds)
    frame = frame.reset_index(drop=True)
    tokens = tokens if tokens is not None else [None] * len(frame)
    is_label = (frame[KIND] == LABEL).to_numpy(bool) if KIND in frame.columns else np.zeros(len(frame), bool)
    checked = Checked(pd.DataFrame(), pd.DataFrame(), source=source)
    for label, fields in ((False, declared.events.fields), (True, label_fields(declared))):
        rows = np.flatnonzero(is_label == label)
        if label and declared.labels is None and len(rows):
            for i in rows.tolist():
                raw = json.dumps(frame.iloc[i].dropna().to_dict(), default=str)
                checked.dead.append(DeadLetter("kind: the repo declares no labels", raw, source, token=tokens[i]))
            continue
        typed, reasons = _sort_out(frame.iloc[rows], fields, declared.events.bounds)
        time = declared.labels.time if label and declared.labels is not None else declared.events.time
        ahead = (typed[time] > latest).to_numpy(bool) if len(rows) else np.zeros(0, bool)
        for i in np.flatnonzero(ahead).tolist():
            if reasons[i] is None:
                when = typed[time].iloc[i].isoformat()
                reasons[i] = f"{time}: more than {ahead_seconds:.0f} s ahead of the wall clock ({when})"
        if label and declared.labels is not None:
            name = declared.labels.label
            for i in np.flatnonzero(~typed[name].isin([0, 1]).to_numpy(bool)).tolist():
                if reasons[i] is None:
                    reasons[i] = f"{name}: not 0 or 1 ({typed[name].iloc[i].item()!r})"
        good = np.array([r is None for r in reasons], bool)
        for i, reason in zip(rows.tolist(), reasons, strict=True):
            if reason is not None:
                raw = json.dumps(frame.iloc[i].dropna().to_dict(), default=str)
                checked.dead.append(DeadLetter(reason, raw, source, token=tokens[i]))
        kept = typed[good].reset_index(drop=True)
        if label:
            checked.labels = kept
        else:
            checked.events = kept
        if label:
            checked.label_tokens = [tokens[i] for i in rows[good].tolist()]
        else:
            checked.tokens = [tokens[i] for i in rows[good].tolist() if tokens[i] is not None]
    return checked


# Values each kind takes as they are, with nothing to convert: JSON's own types.
_PLAIN: dict[Kind, Callable[[Any], bool]] = {
    "integer": lambda v: type(v) is int and -(2**63) <= v < 2**63,
    "number": lambda v: (type(v) is float and math.isfinite(v)) or (type(v) is int and abs(v) < 2**53),
    "string": lambda v: type(v) is str and v != "",
    "boolean": lambda v: type(v) is bool,
    "time": lambda v: type(v) is str,
}


# What a JSON body (the API's) must hold for each kind: JSON's own type, nothing that a
# stream's text would be converted from ("42" for an integer, "2018-08-08" for a time).
_WHY_NOT_JSON: dict[Kind, str] = {
    "integer": "not a JSON integer",
    "number": "not a finite JSON number",
    "string": "not a non-empty JSON string",
    "boolean": "not a JSON boolean",
    "time": "not an ISO 8601 time with a date and a time to the second (YYYY-MM-DDTHH:MM:SS, an offset optional)",
}
_JSON: dict[Kind, Callable[[Any], bool]] = {
    **_PLAIN,
    "number": lambda v: (type(v) is float and math.isfinite(v)) or type(v) is int,
    "time": lambda v: type(v) is str and iso_nanoseconds(v) is not None,
}


def excerpt(value: Any, limit: int = 40) -> str:
    """A value as a refusal shows it: its text, cut short (a refusal never echoes a body)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def json_problems(records: Sequence[dict[str, Any]], fields: dict[str, Kind]) -> list[dict[str, Any]]:
    """The first field of each record (in schema order) whose value is present but not JSON's
    own type for its kind, as 422 problems (`loc`: the record's index, the field). A missing
    field is left to `check_records`, which says so."""
    problems = []
    for i, record in enumerate(records):
        for name, kind in fields.items():
            value = record.get(name)
            if value is not None and not _JSON[kind](value):
                why = _WHY_NOT_JSON[kind]
                problems.append({"type": "value_error", "loc": [i, name], "msg": why, "input": excerpt(value)})
                break
    return problems


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DIGITS = frozenset("0123456789")


def iso_nanoseconds(text: str) -> int | None:
    """A time written YYYY-MM-DD[T or space]HH:MM:SS[.1 to 6 digits][Z or +HH:MM or -HH:MM]
    (no offset: UTC) as nanoseconds since the epoch; None for any other shape. On this shape
    Python's parser and pandas' ISO 8601 parser agree to the nanosecond, and Python's costs
    a microsecond where pandas' fixed cost per call is a hundred."""
    n = len(text)
    if n < 19 or not text.isascii() or text[4] != "-" or text[7] != "-" or text[10] not in "T ":
        return None
    if text[13] != ":" or text[16] != ":":
        return None
    end = 19
    if n > 19 and text[19] == ".":
        end = 20
        while end < n and text[end] in _DIGITS:
            end += 1
        if not 21 <= end <= 26:  # 1 to 6 digits: Python's parser drops a 7th onwards
            return None
    offset = text[end:]
    if offset not in ("", "Z") and not (len(offset) == 6 and offset[0] in "+-" and offset[3] == ":"):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    delta = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)) - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return ns if _NS_MIN <= ns <= _NS_MAX else None


_NS_MIN, _NS_MAX = pd.Timestamp.min.value, pd.Timestamp.max.value


def _plain_times(values: list[Any], ahead_seconds: float, strict: bool = False) -> np.ndarray | None:
    """ISO 8601 times as UTC datetime64[ns], as `check_records` reads them; None if one is
    not a time or is more than `ahead_seconds` ahead of the wall clock (`strict`: or is not
    written with a date and a time to the second, as a JSON body's must be)."""
    latest = time.time_ns() + int(ahead_seconds * 1_000_000_000)
    quick = [iso_nanoseconds(v) for v in values]
    if all(ns is not None for ns in quick):
        if any(ns > latest for ns in quick):  # type: ignore[operator]
            return None
        return np.array(quick, dtype="datetime64[ns]")
    if strict:
        return None
    stamps = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce", format="ISO8601", cache=False)
    if stamps.isna().any() or (stamps > pd.Timestamp(latest, tz="UTC")).any():
        return None
    return stamps.dt.tz_localize(None).to_numpy("datetime64[ns]")


def plain_events(
    declared: DeclaredFeatures, records: Sequence[dict[str, Any]], ahead_seconds: float = 86_400
) -> pd.DataFrame | None:
    """The records as `check_records` types its events, when every one is plainly valid (each
    field of JSON's own type for its kind, every time an ISO 8601 time not ahead of the wall
    clock); None otherwise, and `check_records` says what is wrong."""
    plain = plain_columns(declared, records, ahead_seconds)
    return None if plain is None else plain.frame()


def plain_columns(
    declared: DeclaredFeatures, records: Sequence[dict[str, Any]], ahead_seconds: float = 86_400, strict: bool = False
) -> EventColumns | None:
    """`plain_events` as columns (`EventColumns`): a request's few events are typed here in
    tens of microseconds, where the batch checks' fixed cost is milliseconds. `strict`: times
    as a JSON body must write them (`json_problems`)."""
    fields, bounds = declared.events.fields, declared.events.bounds
    columns: dict[str, Any] = {}
    for name, kind in fields.items():
        values = [record.get(name) for record in records]
        plain = _PLAIN[kind]
        if not all(plain(v) for v in values):
            return None
        if kind == "time":
            stamps = _plain_times(values, ahead_seconds, strict)
            if stamps is None:
                return None
            columns[name] = stamps
        elif kind == "integer":
            columns[name] = np.array(values, dtype=np.int64)
        elif kind == "number":
            columns[name] = np.array(values, dtype=np.float64)
        elif kind == "boolean":
            columns[name] = np.array(values, dtype=bool)
        else:
            columns[name] = np.array(values, dtype=object)
        if name in bounds and not ((columns[name] >= bounds[name][0]) & (columns[name] <= bounds[name][1])).all():
            return None  # check_records says which and why
    return EventColumns(columns, len(records))


QUICK_BATCH_ROWS = 256  # a live stream's batches; a replay's (thousands) take the array checks


def check_batch(
    declared: DeclaredFeatures,
    frame: pd.DataFrame,
    source: str,
    tokens: list[Any] | None = None,
    ahead_seconds: float = 86_400,
) -> Checked:
    """`check_records`, with a small batch of plainly valid events and no label typed by
    `plain_events` (the same frame): a live stream hands the flow batches of a few events,
    on which the array checks' fixed cost (about 3 ms) is most of the flow's time."""
    if 0 < len(frame) <= QUICK_BATCH_ROWS and (KIND not in frame.columns or not (frame[KIND] == LABEL).any()):
        plain = plain_events(declared, frame.to_dict("records"), ahead_seconds)
        if plain is not None:
            kept = [token for token in tokens or [] if token is not None]
            return Checked(plain, pd.DataFrame(), tokens=kept, source=source)
    return check_records(declared, frame, source, tokens, ahead_seconds)
