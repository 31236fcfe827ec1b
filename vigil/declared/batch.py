"""Typed events as numpy columns: what the scoring path carries from the request to the answer.

A request holds one event, a batch call up to a few thousand. A pandas table of them costs
more to build and to read (tens of microseconds each, a column read a few) than computing
their features, so the scoring service types them straight into arrays and every step on
its path reads them as arrays. The features are computed by the same functions as the
backfill's (`vigil.declared.compute`), which take either a table or these columns
(`column`, `nanoseconds`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vigil.declared.model import DeclaredFeatures

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class EventColumns(Mapping[str, np.ndarray]):
    """Events by field: integers int64, numbers float64, booleans bool, strings as Python
    str objects, times datetime64[ns] (UTC)."""

    columns: dict[str, np.ndarray]
    size: int

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return self.size

    @classmethod
    def of(cls, frame: pd.DataFrame) -> EventColumns:
        """A table of typed events (`check_records`') as columns."""
        columns = {}
        for name in frame.columns:
            values = frame[name]
            if isinstance(values.dtype, pd.DatetimeTZDtype):
                columns[str(name)] = values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
            else:
                columns[str(name)] = values.to_numpy()
        return cls(columns, len(frame))

    def part(self, start: int, stop: int) -> EventColumns:
        """Events `start` to `stop` (views of the same arrays)."""
        return EventColumns(
            {name: values[start:stop] for name, values in self.columns.items()}, max(0, min(stop, self.size) - start)
        )

    def frame(self, fields: list[str] | None = None) -> pd.DataFrame:
        """The events as a table (times tz-aware, UTC), as `check_records` types them."""
        names = fields if fields is not None else list(self.columns)
        return pd.DataFrame(
            {
                name: pd.DatetimeIndex(values, tz="UTC") if values.dtype.kind == "M" else values
                for name in names
                for values in (self.columns[name],)
            },
            copy=False,  # fresh arrays, owned by nobody else: no copy, no consolidation into blocks
        )

    def lists(self, declared: DeclaredFeatures) -> dict[str, list[Any]]:
        """The events' fields as lists of Python values, times as UTC datetimes (as Feast
        passes request fields to on-demand views)."""
        return {name: python_values(self.columns[name]) for name in declared.events.fields if name in self.columns}

    def records(self, declared: DeclaredFeatures) -> list[dict[str, Any]]:
        """Each event's fields as Python values, times as UTC datetimes (what rules read)."""
        lists = self.lists(declared)
        return [{name: values[i] for name, values in lists.items()} for i in range(self.size)]


def python_values(values: np.ndarray) -> list[Any]:
    """A column as Python values; times as UTC datetimes to the microsecond (as pandas'
    `to_pydatetime` gives them)."""
    if values.dtype.kind == "M":
        micros = values.astype("datetime64[ns]").view(np.int64) // 1_000
        return [EPOCH + dt.timedelta(microseconds=m) for m in micros.tolist()]
    return list(values.tolist())


def column(table: pd.DataFrame | Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """A field of a table of events or of `EventColumns`, as an array (times as stored)."""
    values = table[name]
    return values if isinstance(values, np.ndarray) else values.to_numpy()
