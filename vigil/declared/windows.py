"""Declared window aggregations, exact as of each query's own time.

One compiled loop serves every function: for each query (an entity, a time t and an
event id), the facts of its entity with time in (t - delay - window, t - delay] are
found by binary search in the facts sorted by (entity, time, id), and aggregated
directly (no running sums, so no rounding drifts with the length of a history). With
`by_id`, facts at time t count only up to the query's own id: of two events at one
time the one with the lower id comes first, and an event's window holds itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import numpy.typing as npt
import pandas as pd
from numba import njit

from vigil.declared.model import FUNCTIONS, WindowFunction

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
FUNCTION_CODES = {name: code for code, name in enumerate(FUNCTIONS)}
_NO_CODES = np.zeros(0, np.int64)  # what functions other than count_distinct are given as codes
log = logging.getLogger(__name__)


@njit(cache=True)
def _first_after(ts: IntArray, ids: IntArray, start: int, end: int, t: int, tie_id: int, by_id: bool) -> int:
    """The first index in [start, end) whose fact comes after (t, tie_id)."""
    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi) // 2
        if ts[mid] > t or (by_id and ts[mid] == t and ids[mid] > tie_id):
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _time_order(fact_ts: IntArray, fact_id: IntArray, facts: IntArray, keep_last: bool) -> IntArray:
    """`facts` (indices, in order of delivery) without the repeats of an id, in order of
    (time, id). An event delivered twice is read once, as first delivered; a label delivered
    again is a correction (an analyst's verdict): `keep_last` keeps the last delivery."""
    by_id = facts[np.argsort(fact_id[facts], kind="mergesort")]
    n = by_id.shape[0]
    kept = np.ones(n, np.bool_)
    for j in range(n - 1):
        if fact_id[by_id[j]] == fact_id[by_id[j + 1]]:
            kept[j + 1 if not keep_last else j] = False
    unique = by_id[kept]
    return unique[np.argsort(fact_ts[unique], kind="mergesort")]


@njit(cache=True)
def _entity_time_order(
    code: IntArray, entities: int, fact_ts: IntArray, fact_id: IntArray, keep_last: bool
) -> tuple[IntArray, IntArray]:
    """The facts (indices) in order of (entity code, time, id), each id once per entity,
    and where each entity's facts start (`entities` + 1 edges). An entity's facts are
    sorted on their own: a few hundred each, where one sort of all of a batch's facts by
    three keys (np.lexsort) costs several times more."""
    n = code.shape[0]
    edges = np.zeros(entities + 1, np.int64)
    for i in range(n):
        edges[code[i] + 1] += 1
    edges = np.cumsum(edges)
    by_code = np.empty(n, np.int64)
    fill = edges[:-1].copy()
    for i in range(n):  # a stable counting sort by entity code
        by_code[fill[code[i]]] = i
        fill[code[i]] += 1
    order = np.empty(n, np.int64)
    kept = np.zeros(entities + 1, np.int64)
    for c in range(entities):
        mine = _time_order(fact_ts, fact_id, by_code[edges[c] : edges[c + 1]], keep_last)
        order[kept[c] : kept[c] + mine.shape[0]] = mine
        kept[c + 1] = kept[c] + mine.shape[0]
    return order[: kept[entities]], kept


@njit(cache=True)
def _aggregate(
    seg_start: IntArray,
    seg_end: IntArray,
    fact_ts: IntArray,
    fact_id: IntArray,
    fact_value: FloatArray,
    fact_code: IntArray,
    query_entity: IntArray,
    query_ts: IntArray,
    query_id: IntArray,
    window: int,
    delay: int,
    function: int,
    by_id: bool,
) -> FloatArray:
    out = np.zeros(query_ts.shape[0])
    for i in range(query_ts.shape[0]):
        entity = query_entity[i]
        if entity < 0 or entity >= seg_start.shape[0]:
            continue
        start, end = seg_start[entity], seg_end[entity]
        if start == end:
            continue
        upper = query_ts[i] - delay
        hi = _first_after(fact_ts, fact_id, start, end, upper, query_id[i], by_id and delay == 0)
        lo = _first_after(fact_ts, fact_id, start, hi, upper - window, 0, False)
        if hi <= lo:
            continue  # an empty window: 0.0 for every function
        if function == 0:  # count
            out[i] = hi - lo
        elif function == 1 or function == 2:  # sum, mean
            total = 0.0
            for j in range(lo, hi):
                total += fact_value[j]
            out[i] = total if function == 1 else total / (hi - lo)
        elif function == 3 or function == 4:  # min, max
            best = fact_value[lo]
            for j in range(lo + 1, hi):
                if (function == 3 and fact_value[j] < best) or (function == 4 and fact_value[j] > best):
                    best = fact_value[j]
            out[i] = best
        else:  # count_distinct
            seen = set()
            for j in range(lo, hi):
                seen.add(fact_code[j])
            out[i] = len(seen)
    return out


@njit(cache=True)
def _one_query(
    fact_ts: IntArray,
    fact_id: IntArray,
    values: FloatArray,
    identity: IntArray,
    query_ts: int,
    query_id: int,
    column: IntArray,
    function: IntArray,
    window: IntArray,
    delay: IntArray,
    by_id: bool,
) -> FloatArray:
    """Every built-in aggregation of one query over one entity's facts, in one call: the
    facts sorted by (time, id), each id once, each window found and aggregated exactly as
    `_aggregate` does (the same order of addition, so the same values to the last bit).
    `values[:, c]` and `identity[:, c]` are column c as float64 and as count_distinct's identity."""
    order = _time_order(fact_ts, fact_id, np.arange(fact_ts.shape[0]), not by_id)  # labels: the last delivery
    ts, ids = fact_ts[order], fact_id[order]
    n = ts.shape[0]
    out = np.zeros(column.shape[0])
    for a in range(column.shape[0]):
        upper = query_ts - delay[a]
        hi = _first_after(ts, ids, 0, n, upper, query_id, by_id and delay[a] == 0)
        lo = _first_after(ts, ids, 0, hi, upper - window[a], 0, False)
        if hi <= lo:
            continue
        c, f = column[a], function[a]
        if f == 0:
            out[a] = hi - lo
        elif f == 1 or f == 2:
            total = 0.0
            for j in range(lo, hi):
                total += values[order[j], c]
            out[a] = total if f == 1 else total / (hi - lo)
        elif f == 3 or f == 4:
            best = values[order[lo], c]
            for j in range(lo + 1, hi):
                v = values[order[j], c]
                if (f == 3 and v < best) or (f == 4 and v > best):
                    best = v
            out[a] = best
        else:
            seen = set()
            for j in range(lo, hi):
                seen.add(identity[order[j], c])
            out[a] = len(seen)
    return out


_NAN_IDENTITY = np.int64(-(2**63))  # every NaN one value, as pd.factorize counts them


@dataclass(frozen=True)
class QueryPlan:
    """Built-in aggregations of one kind of facts as `_one_query` takes them, made once per
    set of aggregations (`query_plan`): a request's call then only copies its facts."""

    names: tuple[str, ...]  # the columns aggregated, in the order of `values`' columns
    column: IntArray
    function: IntArray
    window: IntArray
    delay: IntArray
    distinct: bool  # a count_distinct among them: identities are needed


def query_plan(aggregations: tuple[tuple[str, str, int, int], ...]) -> QueryPlan:
    """The plan of built-in aggregations (column, function, window ns, delay ns)."""
    names = tuple(sorted({a[0] for a in aggregations}))
    index = {name: c for c, name in enumerate(names)}
    return QueryPlan(
        names,
        np.array([index[a[0]] for a in aggregations], np.int64),
        np.array([FUNCTION_CODES[a[1]] for a in aggregations], np.int64),
        np.array([a[2] for a in aggregations], np.int64),
        np.array([a[3] for a in aggregations], np.int64),
        any(a[1] == "count_distinct" for a in aggregations),
    )


def one_query(
    ts: IntArray,
    ids: IntArray,
    columns: dict[str, np.ndarray],
    query_ts: int,
    query_id: int,
    plan: QueryPlan,
    by_id: bool,
) -> FloatArray | None:
    """The plan's built-in aggregations of one query over its entity's facts (`columns`:
    numbers as float64, strings hashed as int64); None when a column is of another kind
    (then `Facts` computes them)."""
    if any(columns[name].dtype.kind not in "if" for name in plan.names):
        return None
    values = np.empty((len(ts), len(plan.names)))
    identity = np.empty((len(ts) if plan.distinct else 0, len(plan.names)), np.int64)
    for c, name in enumerate(plan.names):
        column = columns[name]
        values[:, c] = column
        if not plan.distinct:
            continue
        if column.dtype.kind == "f":  # 0.0 and -0.0 one value, every NaN one value
            bits = (column + 0.0).view(np.int64)
            identity[:, c] = np.where(np.isnan(column), _NAN_IDENTITY, bits)
        else:
            identity[:, c] = column
    # One compiled signature: numba types a read-only or strided array (a view of the bytes
    # Redis sent) apart from a fresh one, and compiling a variant first met under traffic
    # stalls that request for half a second.
    ts, ids = np.require(ts, np.int64, ["C", "W"]), np.require(ids, np.int64, ["C", "W"])
    return _one_query(
        ts, ids, values, identity, query_ts, query_id, plan.column, plan.function, plan.window, plan.delay, by_id
    )


@njit(cache=True)
def _packed_query(
    data: npt.NDArray[np.uint8],
    start: int,
    size: int,
    width: int,
    own: IntArray,
    offsets: IntArray,
    floats: npt.NDArray[np.bool_],
    distinct: bool,
    query_ts: int,
    query_id: int,
    column: IntArray,
    function: IntArray,
    window: IntArray,
    delay: IntArray,
    by_id: bool,
) -> FloatArray:
    """`_one_query` over an entity's facts as the store keeps them: `size` bytes at `start`
    of `data`, records of `width` 8-byte words (time, id, then the columns: float64, or int64
    for hashed strings), with `own` (the query's own record, or nothing) counted once, any
    stored copy of it left out. `offsets[c]` is the word of the plan's column c."""
    n = size // (8 * width)
    words = np.empty(n * width, np.int64)
    words.view(np.uint8)[:] = data[start : start + n * width * 8]  # aligned, whatever the reply's offset
    numbers = words.view(np.float64)
    own_numbers = own.view(np.float64)
    m = n + (1 if own.shape[0] else 0)
    k = offsets.shape[0]
    ts, ids = np.empty(m, np.int64), np.empty(m, np.int64)
    values = np.empty((m, k))
    identity = np.empty((m if distinct else 0, k), np.int64)
    j = 0
    for i in range(m):
        source, source_numbers, base = (words, numbers, i * width) if i < n else (own, own_numbers, 0)
        if i < n and own.shape[0] and source[base + 1] == own[1]:
            continue  # the query itself, recorded already: counted once, as the request has it
        ts[j], ids[j] = source[base], source[base + 1]
        for c in range(k):
            word = source[base + offsets[c]]
            value = source_numbers[base + offsets[c]] if floats[c] else float(word)
            values[j, c] = value
            if distinct:  # count_distinct's identity: 0.0 and -0.0 one value, every NaN one value
                identity[j, c] = (
                    (_NAN_IDENTITY if np.isnan(value) else 0 if value == 0.0 else word) if floats[c] else word
                )
        j += 1
    return _one_query(ts[:j], ids[:j], values[:j], identity[: j if distinct else 0], query_ts, query_id,
                      column, function, window, delay, by_id)  # fmt: skip


def packed_query(
    data: npt.NDArray[np.uint8],
    start: int,
    size: int,
    width: int,
    own: IntArray,
    offsets: IntArray,
    floats: npt.NDArray[np.bool_],
    query_ts: int,
    query_id: int,
    plan: QueryPlan,
    by_id: bool,
) -> FloatArray:
    """The plan's built-in aggregations of one query, straight from the bytes the store
    read (see `_packed_query`): what `one_query` gives on the same facts, to the last bit."""
    return _packed_query(data, start, size, width, own, offsets, floats, plan.distinct, query_ts, query_id,
                         plan.column, plan.function, plan.window, plan.delay, by_id)  # fmt: skip


@njit(cache=True)
def _bounds(
    seg_start: IntArray,
    seg_end: IntArray,
    fact_ts: IntArray,
    fact_id: IntArray,
    query_entity: IntArray,
    query_ts: IntArray,
    query_id: IntArray,
    window: int,
    delay: int,
    by_id: bool,
) -> tuple[IntArray, IntArray]:
    """Each query's window as [lo, hi) of the sorted facts (lo == hi: an empty window)."""
    lo = np.zeros(query_ts.shape[0], np.int64)
    hi = np.zeros(query_ts.shape[0], np.int64)
    for i in range(query_ts.shape[0]):
        entity = query_entity[i]
        if entity < 0 or entity >= seg_start.shape[0]:
            continue
        start, end = seg_start[entity], seg_end[entity]
        upper = query_ts[i] - delay
        hi[i] = _first_after(fact_ts, fact_id, start, end, upper, query_id[i], by_id and delay == 0)
        lo[i] = _first_after(fact_ts, fact_id, start, hi[i], upper - window, 0, False)
    return lo, hi


def _apply_compiled(
    function: Any,
    lo: IntArray,
    hi: IntArray,
    ts: IntArray,
    ids: IntArray,
    values: FloatArray,
    q_ts: IntArray,
    q_id: IntArray,
) -> FloatArray:  # pragma: no cover - compiled per window function (see `_compiled`)
    out = np.zeros(q_ts.shape[0])
    for i in range(q_ts.shape[0]):
        a, b = lo[i], hi[i]
        out[i] = function(values[a:b], ts[a:b], ids[a:b], q_ts[i], q_id[i])
    return out


_APPLY = njit(_apply_compiled)


def _apply_python(
    function: Callable[..., float],
    lo: IntArray,
    hi: IntArray,
    ts: IntArray,
    ids: IntArray,
    values: FloatArray,
    q_ts: IntArray,
    q_id: IntArray,
) -> FloatArray:
    out = np.zeros(q_ts.shape[0])
    for i in range(q_ts.shape[0]):
        a, b = lo[i], hi[i]
        out[i] = function(values[a:b], ts[a:b], ids[a:b], int(q_ts[i]), int(q_id[i]))
    return out


def _compiled(function: WindowFunction) -> Any:
    """The window function compiled with numba, with the loop that applies it; None when numba
    cannot compile its code (it then runs as Python)."""
    if function.compiled is None and function.compilable:
        try:
            dispatcher = njit(function.function)
            integers, floats = numba.typeof(np.zeros(1, np.int64)), numba.typeof(np.zeros(1))
            _APPLY.compile(
                (numba.typeof(dispatcher), integers, integers, integers, integers, floats, integers, integers)
            )
            function.compiled = dispatcher
        except Exception as error:  # numba's typing errors are of many kinds: any means "not compilable"
            function.compilable = False
            log.info(
                "window function %s runs as Python (numba: %s)",
                function.name,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )
    return function.compiled


def apply_window_function(
    function: WindowFunction,
    lo: IntArray,
    hi: IntArray,
    ts: IntArray,
    ids: IntArray,
    values: FloatArray,
    q_ts: IntArray,
    q_id: IntArray,
) -> FloatArray:
    """`function(values, times, ids, t, event_id)` over each query's window: compiled with
    numba when its code allows (one loop, no Python call per query), else called from Python."""
    compiled = _compiled(function)
    lo, hi, ts, ids, q_ts, q_id = (np.ascontiguousarray(a, np.int64) for a in (lo, hi, ts, ids, q_ts, q_id))
    values = np.ascontiguousarray(values, np.float64)
    if compiled is not None:
        return np.asarray(_APPLY(compiled, lo, hi, ts, ids, values, q_ts, q_id), dtype=np.float64)
    return _apply_python(function.function, lo, hi, ts, ids, values, q_ts, q_id)


@dataclass(frozen=True)
class Facts:
    """One entity's kind of facts, sorted by (entity code, time, id): the facts of entity
    code c are [seg_start[c], seg_end[c])."""

    seg_start: IntArray
    seg_end: IntArray
    ts: IntArray
    ids: IntArray
    columns: dict[str, FloatArray]  # the numeric columns as float64
    raw: dict[str, np.ndarray]  # every column as it came, in the facts' order
    distinct: dict[str, IntArray] = field(default_factory=dict)  # count_distinct's codes, made once asked

    @classmethod
    def build(
        cls,
        code: IntArray,
        entities: int,
        ts: IntArray,
        ids: IntArray,
        columns: dict[str, np.ndarray],
        keep_last: bool = False,
    ) -> Facts:
        """The facts of entity codes `code` (0 .. `entities` - 1) at `ts` with `ids`, in order
        of delivery, each id once per entity: an event delivered twice is read once, as first
        delivered; `keep_last` (labels): the last delivery of an id counts, a correction."""
        code, ts, ids = (np.require(a, np.int64, ["C", "W"]) for a in (code, ts, ids))  # one compiled signature
        order, edges = _entity_time_order(code, entities, ts, ids, keep_last)
        values, raw = {}, {}
        for name, column in columns.items():
            raw[name] = column[order]
            if raw[name].dtype.kind in "iufb":
                values[name] = raw[name].astype(np.float64)
        return cls(edges[:-1], edges[1:], ts[order], ids[order], values, raw)

    def codes(self, column: str) -> IntArray:
        """A column's values as codes (equal values, equal codes): what count_distinct counts."""
        if column not in self.distinct:
            self.distinct[column] = pd.factorize(self.raw[column])[0].astype(np.int64)
        return self.distinct[column]

    def aggregate(
        self,
        entity: IntArray,
        query_ts: IntArray,
        query_id: IntArray,
        column: str,
        function: str | WindowFunction,
        window: int,
        delay: int,
        by_id: bool,
    ) -> FloatArray:
        values = self.columns.get(column, np.zeros(len(self.ts)))
        if isinstance(function, WindowFunction):
            return self.apply(entity, query_ts, query_id, values, function, window, delay, by_id)
        code = FUNCTION_CODES[function]
        codes = self.codes(column) if function == "count_distinct" else _NO_CODES
        return _aggregate(
            self.seg_start, self.seg_end, self.ts, self.ids, values, codes,
            entity, query_ts, query_id, window, delay, code, by_id,
        )  # fmt: skip

    def apply(
        self,
        entity: IntArray,
        query_ts: IntArray,
        query_id: IntArray,
        values: FloatArray,
        function: WindowFunction,
        window: int,
        delay: int,
        by_id: bool,
    ) -> FloatArray:
        lo, hi = _bounds(
            self.seg_start, self.seg_end, self.ts, self.ids, entity, query_ts, query_id, window, delay, by_id
        )
        return apply_window_function(function, lo, hi, self.ts, self.ids, values, query_ts, query_id)
