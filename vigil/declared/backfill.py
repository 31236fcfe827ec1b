"""A declared repo's features for every event of a table, each as of its own time.

`compute_declared(declared, events)` is the backfill's computation: the stream feature
views' windows (`vigil.declared.windows`), then the on-demand views, called as Feast's
python mode calls them (a dict of lists in, a dict of lists out) on the whole table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vigil.declared.model import DeclaredFeatures, WindowAggregation
from vigil.declared.windows import Facts, IntArray


def _nanoseconds(times: pd.Series) -> IntArray:
    stamps = pd.to_datetime(times, utc=True)
    return stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def _labelled(declared: DeclaredFeatures, events: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    """The labels (event id, time, keys, label): given, or the label column of `events`."""
    schema = declared.labels
    assert schema is not None
    if labels is None:
        if schema.label not in events.columns:
            raise ValueError(f"views on the labels need the label column {schema.label!r} or a labels table")
        labels = events[events[schema.label].notna()]
    return labels.rename(columns={schema.event_id: declared.events.event_id, schema.time: declared.events.time})


def _window_features(
    declared: DeclaredFeatures, events: pd.DataFrame, labels: pd.DataFrame | None, wanted: list[WindowAggregation]
) -> dict[str, np.ndarray]:
    schema = declared.events
    ts = _nanoseconds(events[schema.time])
    ids = events[schema.event_id].to_numpy(np.int64)
    out: dict[str, np.ndarray] = {}
    groups: dict[tuple[str, str], list[WindowAggregation]] = {}
    for aggregation in wanted:
        groups.setdefault((aggregation.on, aggregation.key), []).append(aggregation)
    for (on, key), aggregations in groups.items():
        table = events if on == "events" else _labelled(declared, events, labels)
        columns = {a.column: table[a.column] for a in aggregations}
        keys = pd.Index(pd.unique(pd.concat([events[key], table[key]], ignore_index=True)))
        facts = Facts.build(
            table[key], _nanoseconds(table[schema.time]), table[schema.event_id].to_numpy(np.int64), columns, keys
        )
        for a in aggregations:
            window, delay = a.window_seconds * 1_000_000_000, a.delay_seconds * 1_000_000_000
            out[a.name] = facts.aggregate(events[key], ts, ids, a.column, a.function, window, delay, on == "events")
    return out


def _request_lists(events: pd.DataFrame, declared: DeclaredFeatures) -> dict[str, list[Any]]:
    """The events' fields as Python values, times as UTC datetimes (as Feast passes them)."""
    lists: dict[str, list[Any]] = {}
    for name, kind in declared.events.fields.items():
        if name not in events.columns:
            continue
        if kind == "time":
            lists[name] = list(pd.DatetimeIndex(pd.to_datetime(events[name], utc=True)).to_pydatetime())
        else:
            lists[name] = events[name].tolist()
    return lists


def compute_declared(
    declared: DeclaredFeatures,
    events: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    service: str | None = None,
    features: list[str] | None = None,
) -> pd.DataFrame:
    """The event id and the features of `service` (or `features`, or all) for each event."""
    if features is None:
        features = list(declared.service(service).features if declared.services else declared.feature_names)
    names = features
    wanted_derived = [d for d in declared.derived if set(d.outputs) & set(names)]
    needed = set(names) | {i for d in wanted_derived for i in d.inputs}
    values = _window_features(declared, events, labels, [a for a in declared.aggregations if a.name in needed])
    if wanted_derived:
        request = _request_lists(events, declared)
        for view in wanted_derived:
            inputs = {**{i: values[i].tolist() for i in view.inputs}, **(request if view.wants_request else {})}
            result = view.transform(inputs)
            for output in view.outputs:
                values[output] = np.asarray(result[output])
    frame = pd.DataFrame({declared.events.event_id: events[declared.events.event_id].to_numpy()})
    for name in names:
        frame[name] = values[name]
    return frame
