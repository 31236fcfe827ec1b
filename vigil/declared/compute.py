"""A declared repo's features for a table of queries (events), from fact tables.

The one computation every execution runs: the backfill gives it the events and labels
themselves as facts (`vigil.declared.backfill`), the online store the facts it keeps plus
the queries (`vigil.declared.online`). The stream feature views' windows are computed by
`vigil.declared.windows`; the on-demand views are called as Feast's python mode calls
them (a dict of lists in, a dict of lists out) on the whole table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from vigil.declared.batch import EventColumns, column, python_values
from vigil.declared.model import DeclaredFeatures, WindowAggregation
from vigil.declared.windows import Facts, IntArray, QueryPlan, one_query, query_plan

# (on, key, columns) -> the facts of that kind: arrays KEY, TS (ns), ID and `columns`.
FactTable = dict[str, np.ndarray]
FactLoader = Callable[[str, str, list[str]], FactTable]
KEY, TS, ID = "__key", "__ts", "__id"
# The queries: a table (the backfill's, Spark's) or typed columns (the scoring path's).
Events: TypeAlias = pd.DataFrame | EventColumns
NS = 1_000_000_000


def _utc(dtype: object) -> bool:
    """Whether a column holds times typed in UTC already (nothing to parse)."""
    return isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"


def nanoseconds(times: pd.Series | np.ndarray) -> IntArray:
    """Times as int64 nanoseconds since the epoch, UTC (naive times are UTC)."""
    if isinstance(times, np.ndarray) and times.dtype.kind == "M":  # `EventColumns`' times
        return times.astype("datetime64[ns]").view(np.int64)
    if _utc(times.dtype) and times.dtype.unit == "ns":
        return times.to_numpy(dtype="datetime64[ns]").astype(np.int64)  # typed already: no parse
    stamps = pd.to_datetime(times, utc=True, cache=False)  # cache: a uniqueness scan of every value
    return stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)


def feature_names(declared: DeclaredFeatures, service: str | None, features: Sequence[str] | None) -> list[str]:
    if features is not None:
        return list(features)
    return list(declared.service(service).features if declared.services else declared.feature_names)


def window_values(
    declared: DeclaredFeatures, queries: Events, load: FactLoader, wanted: list[WindowAggregation]
) -> dict[str, np.ndarray]:
    schema = declared.events
    ts = nanoseconds(queries[schema.time])
    ids = column(queries, schema.event_id).astype(np.int64, copy=False)
    out: dict[str, np.ndarray] = {}
    groups: dict[tuple[str, str], list[WindowAggregation]] = {}
    for aggregation in wanted:
        groups.setdefault((aggregation.on, aggregation.key), []).append(aggregation)
    for (on, key), aggregations in groups.items():
        table = load(on, key, sorted({a.column for a in aggregations}))
        asked = column(queries, key)
        if len(asked) == 1 and (one := _one_query(table, asked[0], int(ts[0]), int(ids[0]), aggregations, on)):
            out.update(one)  # a request's one event: every built-in window of the kind in one call
            continue
        # The queries' and the facts' entities coded together, in one pass.
        every, entities = pd.factorize(np.concatenate([asked, table[KEY]]))
        every = every.astype(np.int64)
        columns = {a.column: table[a.column] for a in aggregations}
        facts = Facts.build(every[len(asked) :], len(entities), table[TS], table[ID], columns)
        codes = every[: len(asked)]
        for a in aggregations:
            window, delay = a.window_seconds * NS, a.delay_seconds * NS
            out[a.name] = facts.aggregate(codes, ts, ids, a.column, a.computed_by, window, delay, on == "events")
    return out


def _one_query(
    table: FactTable, entity: Any, ts: int, event_id: int, aggregations: list[WindowAggregation], on: str
) -> dict[str, np.ndarray] | None:
    """One query's aggregations over its entity's facts (`windows.one_query`), or None when
    one of them is a window function or a column is not numeric (then `Facts` computes them)."""
    if any(a.custom is not None for a in aggregations):
        return None
    plan = _plan(tuple(aggregations))
    mine = table[KEY] == entity
    pick = (lambda column: column) if bool(np.all(mine)) else (lambda column: column[mine])
    columns = {name: pick(table[name]) for name in plan.names}
    values = one_query(pick(table[TS]), pick(table[ID]), columns, ts, event_id, plan, on == "events")
    if values is None:
        return None
    return {a.name: values[i : i + 1] for i, a in enumerate(aggregations)}


@functools.lru_cache(maxsize=256)
def _plan(aggregations: tuple[WindowAggregation, ...]) -> QueryPlan:
    """A set of built-in aggregations' `QueryPlan`, made once (a request asks the same sets)."""
    return query_plan(tuple((a.column, a.function, a.window_seconds * NS, a.delay_seconds * NS) for a in aggregations))


def request_lists(events: Events, declared: DeclaredFeatures) -> dict[str, list[Any]]:
    """The events' fields as Python values, times as UTC datetimes (as Feast passes them)."""
    if isinstance(events, EventColumns):
        return {name: python_values(events[name]) for name in declared.events.fields if name in events}
    lists: dict[str, list[Any]] = {}
    for name, kind in declared.events.fields.items():
        if name not in events.columns:
            continue
        if kind == "time":
            times = events[name]
            if not _utc(times.dtype):
                times = pd.to_datetime(times, utc=True)
            lists[name] = list(pd.DatetimeIndex(times).to_pydatetime())
        else:
            lists[name] = events[name].tolist()
    return lists


def features_of(declared: DeclaredFeatures, queries: Events, load: FactLoader, names: list[str]) -> pd.DataFrame:
    """The event id and the features `names` of each query, as of its own time."""
    event_id = declared.events.event_id
    values = feature_values(declared, queries, load, names)
    return pd.DataFrame({event_id: column(queries, event_id), **values})


def feature_values(
    declared: DeclaredFeatures, queries: Events, load: FactLoader, names: list[str]
) -> dict[str, np.ndarray]:
    """The features `names` of each query, as of its own time, by name (what a request
    needs: a table of a few rows costs more to build than its features)."""
    wanted_derived = [d for d in declared.derived if set(d.outputs) & set(names)]
    needed = set(names) | {i for d in wanted_derived for i in d.inputs}
    values = window_values(declared, queries, load, [a for a in declared.aggregations if a.name in needed])
    if wanted_derived:
        request = request_lists(queries, declared)
        for view in wanted_derived:
            inputs = {**{i: values[i].tolist() for i in view.inputs}, **(request if view.wants_request else {})}
            result = view.transform(inputs)
            for output in view.outputs:
                values[output] = np.asarray(result[output])
    return {name: values[name] for name in names}
