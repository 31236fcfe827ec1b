"""A declared repo's features for a table of queries (events), from fact tables.

The one computation every execution runs: the backfill gives it the events and labels
themselves as facts (`vigil.declared.backfill`), the online store the facts it keeps plus
the queries (`vigil.declared.online`). The stream feature views' windows are computed by
`vigil.declared.windows`; the on-demand views are called as Feast's python mode calls
them (a dict of lists in, a dict of lists out) on the whole table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import numpy as np
import pandas as pd

from vigil.declared.batch import EventColumns, column
from vigil.declared.model import DeclaredFeatures, DerivedView, WindowAggregation
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


@dataclass(frozen=True)
class WindowGroup:
    """The aggregations over one kind of facts (`on`, per `key`), computed together."""

    on: str
    key: str
    aggregations: tuple[WindowAggregation, ...]
    columns: list[str]
    query: QueryPlan | None  # a request's one event in one call; None: a window function among them


@dataclass(frozen=True)
class FeaturePlan:
    """What a set of features needs computed: the windows, by kind of facts, then the
    on-demand views that derive the rest."""

    groups: tuple[WindowGroup, ...]
    derived: tuple[DerivedView, ...]


def _groups(wanted: Sequence[WindowAggregation]) -> tuple[WindowGroup, ...]:
    grouped: dict[tuple[str, str], list[WindowAggregation]] = {}
    for aggregation in wanted:
        grouped.setdefault((aggregation.on, aggregation.key), []).append(aggregation)
    return tuple(
        WindowGroup(
            on,
            key,
            tuple(aggregations),
            sorted({a.column for a in aggregations}),
            None
            if any(a.custom is not None for a in aggregations)
            else query_plan(
                tuple((a.column, a.function, a.window_seconds * NS, a.delay_seconds * NS) for a in aggregations)
            ),
        )
        for (on, key), aggregations in grouped.items()
    )


def feature_plan(declared: DeclaredFeatures, names: Sequence[str]) -> FeaturePlan:
    """The plan of `names`, made once per repo and set of names (a service asks the same)."""
    asked = tuple(names)
    plan = declared.plans.get(asked)
    if plan is None:
        derived = tuple(d for d in declared.derived if set(d.outputs) & set(asked))
        needed = set(asked) | {i for d in derived for i in d.inputs}
        plan = FeaturePlan(_groups([a for a in declared.aggregations if a.name in needed]), derived)
        declared.plans[asked] = plan
    return cast(FeaturePlan, plan)


def window_values(
    declared: DeclaredFeatures, queries: Events, load: FactLoader, wanted: Sequence[WindowAggregation]
) -> dict[str, np.ndarray]:
    """The aggregations `wanted` of each query, as of its own time, by name."""
    return _windows(declared, queries, load, _groups(wanted))


def _windows(
    declared: DeclaredFeatures, queries: Events, load: FactLoader, groups: tuple[WindowGroup, ...]
) -> dict[str, np.ndarray]:
    schema = declared.events
    ts = nanoseconds(queries[schema.time])
    ids = column(queries, schema.event_id).astype(np.int64, copy=False)
    out: dict[str, np.ndarray] = {}
    for group in groups:
        table = load(group.on, group.key, group.columns)
        asked = column(queries, group.key)
        if len(asked) == 1 and group.query is not None:
            one = _one_query(table, asked[0], int(ts[0]), int(ids[0]), group)
            if one is not None:
                out.update(one)  # a request's one event: every built-in window of the kind in one call
                continue
        # The queries' and the facts' entities coded together, in one pass.
        every, entities = pd.factorize(np.concatenate([asked, table[KEY]]))
        every = every.astype(np.int64)
        columns = {name: table[name] for name in group.columns}
        facts = Facts.build(every[len(asked) :], len(entities), table[TS], table[ID], columns, group.on != "events")
        codes = every[: len(asked)]
        for a in group.aggregations:
            window, delay = a.window_seconds * NS, a.delay_seconds * NS
            out[a.name] = facts.aggregate(codes, ts, ids, a.column, a.computed_by, window, delay, group.on == "events")
    return out


def _one_query(
    table: FactTable, entity: Any, ts: int, event_id: int, group: WindowGroup
) -> dict[str, np.ndarray] | None:
    """One query's built-in aggregations over its entity's facts (`windows.one_query`), or
    None when a column is not numeric (then `Facts` computes them)."""
    assert group.query is not None
    mine = table[KEY] == entity
    pick = (lambda column: column) if bool(np.all(mine)) else (lambda column: column[mine])
    columns = {name: pick(table[name]) for name in group.query.names}
    values = one_query(pick(table[TS]), pick(table[ID]), columns, ts, event_id, group.query, group.on == "events")
    if values is None:
        return None
    return {a.name: values[i : i + 1] for i, a in enumerate(group.aggregations)}


def request_lists(events: Events, declared: DeclaredFeatures) -> dict[str, list[Any]]:
    """The events' fields as Python values, times as UTC datetimes (as Feast passes them)."""
    if isinstance(events, EventColumns):
        return events.lists(declared)
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
    plan = feature_plan(declared, names)
    return derived_values(declared, queries, plan, _windows(declared, queries, load, plan.groups), names)


def derived_values(
    declared: DeclaredFeatures, queries: Events, plan: FeaturePlan, values: dict[str, np.ndarray], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The features `names`, given the plan's windows (`values`): the on-demand views called
    on them and on the queries' fields, as Feast's python mode calls them."""
    if plan.derived:
        request = request_lists(queries, declared)
        for view in plan.derived:
            inputs = {**{i: values[i].tolist() for i in view.inputs}, **(request if view.wants_request else {})}
            result = view.transform(inputs)
            for output in view.outputs:
                values[output] = np.asarray(result[output])
    return {name: values[name] for name in names}
