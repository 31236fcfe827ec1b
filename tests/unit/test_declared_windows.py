"""The declared functions' window semantics, on events small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.declared.backfill import compute_declared
from vigil.declared.model import (
    DeclaredFeatures,
    EventSchema,
    LabelSchema,
    Service,
    WindowAggregation,
    WindowFunction,
)

HOUR = 3600


def declared(*aggregations: WindowAggregation) -> DeclaredFeatures:
    events = EventSchema(
        "event",
        {"id": "integer", "at": "time", "card": "string", "merchant": "string", "amount": "number"},
        "id",
        "at",
    )
    return DeclaredFeatures(
        "test", events, LabelSchema("labels", "id", "at", "fraud"), {"card": "card"}, aggregations, (),
        {"all": Service("all", tuple(a.name for a in aggregations), True)},
    )  # fmt: skip


def on_events(function: str, column: str = "amount", hours: int = 2) -> WindowAggregation:
    return WindowAggregation(f"{function}_{column}", "v", "card", "card", "events", column, function, hours * HOUR)


def frame(rows: list[tuple[int, float, str, str, float]]) -> pd.DataFrame:
    """(id, hour, card, merchant, amount) rows."""
    base = pd.Timestamp("2026-01-05T00:00:00Z")
    return pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "at": [base + pd.Timedelta(hours=r[1]) for r in rows],
            "card": [r[2] for r in rows],
            "merchant": [r[3] for r in rows],
            "amount": [r[4] for r in rows],
        }
    )


EVENTS = frame(
    [
        (1, 0.0, "a", "m1", 10.0),
        (2, 1.0, "a", "m2", 30.0),
        (3, 2.0, "a", "m1", 20.0),  # hour 0 is exactly 2 h before: out of (t - 2h, t]
        (4, 2.0, "b", "m1", 5.0),
        (5, 2.5, "a", "m3", 40.0),
        (6, 9.0, "a", "m1", 1.0),  # alone in its window
    ]
)


@pytest.mark.parametrize(
    ("function", "column", "expected"),
    [
        ("count", "amount", [1, 2, 2, 1, 3, 1]),
        ("sum", "amount", [10, 40, 50, 5, 90, 1]),
        ("mean", "amount", [10, 20, 25, 5, 30, 1]),
        ("min", "amount", [10, 10, 20, 5, 20, 1]),
        ("max", "amount", [10, 30, 30, 5, 40, 1]),
        ("count_distinct", "merchant", [1, 2, 2, 1, 3, 1]),
    ],
)
def test_each_function_over_the_window_ending_at_the_event_itself(
    function: str, column: str, expected: list[float]
) -> None:
    values = compute_declared(declared(on_events(function, column)), EVENTS)
    assert values["id"].tolist() == EVENTS["id"].tolist()
    assert np.allclose(values[f"{function}_{column}"], expected, rtol=0, atol=1e-12)


def test_of_two_events_at_one_time_the_lower_id_comes_first() -> None:
    events = frame([(8, 1.0, "a", "m", 3.0), (7, 1.0, "a", "m", 2.0), (9, 1.0, "a", "m", 4.0)])
    values = compute_declared(declared(on_events("count"), on_events("sum")), events)
    assert values["count_amount"].tolist() == [2.0, 1.0, 3.0]
    assert values["sum_amount"].tolist() == [5.0, 2.0, 9.0]


def test_an_event_in_a_shuffled_table_sees_the_same_window() -> None:
    aggregations = [on_events(f) for f in ("count", "sum", "mean", "min", "max")]
    ordered = compute_declared(declared(*aggregations), EVENTS)
    shuffled = compute_declared(declared(*aggregations), EVENTS.sample(frac=1.0, random_state=3))
    assert shuffled.sort_values("id").reset_index(drop=True).equals(ordered)


def test_labels_count_in_the_window_before_their_delay() -> None:
    """A 1 h window 2 h late: labels of events in (t - 3h, t - 2h]; empty windows give 0."""
    late = WindowAggregation("rate", "v", "card", "card", "labels", "fraud", "mean", HOUR, 2 * HOUR)
    counted = WindowAggregation("labelled", "v", "card", "card", "labels", "fraud", "count", HOUR, 2 * HOUR)
    labels = pd.DataFrame({"id": [1, 2, 3], "at": EVENTS["at"][:3], "card": ["a"] * 3, "fraud": [1, 0, 0]})
    values = compute_declared(declared(late, counted), EVENTS, labels)
    # event 3 (hour 2): (-1, 0] holds event 1; event 5 (2.5): (-0.5, 0.5] holds 1; event 6 (9): nothing.
    assert values["labelled"].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert values["rate"].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_labels_may_come_from_the_label_column_of_the_events() -> None:
    counted = WindowAggregation("labelled", "v", "card", "card", "labels", "fraud", "count", 10 * HOUR, 0)
    events = EVENTS.assign(fraud=[1, None, 0, 1, None, 0])
    values = compute_declared(declared(counted), events)
    assert values["labelled"].tolist() == [1.0, 1.0, 2.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="label column 'fraud'"):
        compute_declared(declared(counted), EVENTS)


def _spread(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """The largest amount less the smallest; -1 for a window without the event last."""
    if ids.shape[0] == 0 or ids[-1] != event_id or times[-1] != t:
        return -1.0
    return float(values.max() - values.min())


def _spread_in_python(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """The same, in code numba cannot compile (a dict): Vigil calls it from Python."""
    seen = {int(i): float(v) for i, v in zip(ids, values, strict=True)}
    if not seen or list(seen)[-1] != event_id:
        return -1.0
    return max(seen.values()) - min(seen.values())


@pytest.mark.parametrize("code", [_spread, _spread_in_python], ids=["compiled", "python"])
def test_a_window_function_sees_the_window_ending_at_the_event_itself(code: object) -> None:
    function = WindowFunction(code, "spread")  # type: ignore[arg-type]
    spread = WindowAggregation("spread", "v", "card", "card", "events", "amount", "spread", 2 * HOUR, 0, function)
    values = compute_declared(declared(spread), EVENTS)
    assert values["spread"].tolist() == [0.0, 20.0, 10.0, 0.0, 20.0, 0.0]
    assert function.compilable is (code is _spread)


def test_a_window_function_on_labels_is_called_for_empty_windows_too() -> None:
    """Ages are taken from the event's own time; an entity without labels gets the function's
    own answer for an empty window."""

    def age_hours(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
        return 99.0 if times.shape[0] == 0 else (t - times[-1]) / (HOUR * 10**9)

    aged = WindowAggregation(
        "age", "v", "card", "card", "labels", "fraud", "age", HOUR, 2 * HOUR, WindowFunction(age_hours)
    )
    labels = pd.DataFrame({"id": [1, 2, 3], "at": EVENTS["at"][:3], "card": ["a"] * 3, "fraud": [1, 0, 0]})
    values = compute_declared(declared(aged), EVENTS, labels)
    # event 3 (hour 2) and 5 (2.5) see event 1's label (hour 0); card b has no labels at all.
    assert values["age"].tolist() == [99.0, 99.0, 2.0, 99.0, 2.5, 99.0]


def test_one_query_gives_every_function_exactly_what_the_batch_kernel_gives() -> None:
    """A request's one event (`one_query`: every built-in window of an entity in one call)
    against `Facts.aggregate` on the same facts: equal to the last bit, for each function,
    with ties in time, a delay, NaN and -0.0 among the values, and an empty window."""
    from vigil.declared.windows import FUNCTION_CODES, Facts, one_query, query_plan

    rng = np.random.default_rng(4)
    n = 400
    ts = rng.integers(0, 50, n).astype(np.int64) * 1_000_000_000  # many events share a time
    ids = rng.permutation(n).astype(np.int64)
    amount = np.round(rng.normal(50, 30, n), 1)
    amount[rng.integers(0, n, 20)] = np.nan
    amount[rng.integers(0, n, 20)] = -0.0
    amount[rng.integers(0, n, 20)] = 0.0
    merchant = rng.integers(0, 12, n).astype(np.int64) * 7919  # hashed strings: int64
    columns = {"amount": amount, "merchant": merchant}
    facts = Facts.build(np.zeros(n, np.int64), 1, ts, ids, columns)
    asked = [
        (column, function, window * 1_000_000_000, delay * 1_000_000_000)
        for column in ("amount", "merchant")
        for function in FUNCTION_CODES
        for window, delay in ((10, 0), (30, 5), (1, 0), (5, 100))
        if not (column == "merchant" and function not in ("count", "count_distinct"))
    ]
    for query in rng.choice(n, 25, replace=False).tolist():
        q_ts, q_id = np.array([ts[query]]), np.array([ids[query]])
        fused = one_query(ts, ids, columns, int(ts[query]), int(ids[query]), query_plan(tuple(asked)), True)
        assert fused is not None
        for (column, function, window, delay), value in zip(asked, fused.tolist(), strict=True):
            want = facts.aggregate(np.zeros(1, np.int64), q_ts, q_id, column, function, window, delay, True)[0]
            assert value == want or (np.isnan(value) and np.isnan(want)), (column, function, window, delay)


def test_facts_are_ordered_per_entity_by_time_then_id_each_id_read_once() -> None:
    """`Facts.build` (a compiled counting sort by entity, each entity's facts sorted on their
    own) against pandas: the facts in order of (entity, time, id), and an id delivered twice
    to one entity read once, its first delivery kept (a label's last: a correction); one
    event's windows (`one_query`) read the repeats the same way."""
    from vigil.declared.windows import Facts, one_query, query_plan

    rng = np.random.default_rng(11)
    n = 3_000
    code = rng.integers(0, 40, n).astype(np.int64)
    ts = rng.integers(0, 500, n).astype(np.int64) * 1_000_000_000  # many ties in time
    ids = rng.integers(0, 2_000, n).astype(np.int64)  # many ids delivered more than once
    first_ts = pd.Series(ts).groupby(ids).transform("first").to_numpy()  # a redelivery has its time
    value = rng.normal(size=n)
    facts = Facts.build(code, 40, first_ts, ids, {"v": value})

    frame = pd.DataFrame({"code": code, "ts": first_ts, "id": ids, "v": value, "at": np.arange(n)})
    expected = frame.drop_duplicates(["code", "id"], keep="first").sort_values(["code", "ts", "id"], kind="stable")
    assert facts.ts.tolist() == expected["ts"].tolist()
    assert facts.ids.tolist() == expected["id"].tolist()
    assert facts.raw["v"].tolist() == expected["v"].tolist()
    counts = expected["code"].value_counts().reindex(range(40), fill_value=0).to_numpy()
    assert (facts.seg_end - facts.seg_start).tolist() == counts.tolist()

    mine = frame[frame["code"] == 0]
    plan = query_plan((("v", "sum", 10**12, 0), ("v", "count", 10**12, 0)))
    query_ts, query_id = int(mine["ts"].max()) + 1, 10**9
    repeated = one_query(
        mine["ts"].to_numpy(), mine["id"].to_numpy(), {"v": mine["v"].to_numpy()}, query_ts, query_id, plan, True
    )
    once = mine.drop_duplicates("id", keep="first")
    unique = one_query(
        once["ts"].to_numpy(), once["id"].to_numpy(), {"v": once["v"].to_numpy()}, query_ts, query_id, plan, True
    )
    assert repeated is not None and unique is not None
    assert repeated.tolist() == unique.tolist() and unique[1] == len(once)

    # Labels: a label delivered again is a correction, its last delivery counts, on both paths.
    corrected = Facts.build(code, 40, first_ts, ids, {"v": value}, keep_last=True)
    expected = frame.drop_duplicates(["code", "id"], keep="last").sort_values(["code", "ts", "id"], kind="stable")
    assert corrected.ids.tolist() == expected["id"].tolist()
    assert corrected.raw["v"].tolist() == expected["v"].tolist()
    last = mine.drop_duplicates("id", keep="last")
    relabelled = one_query(
        mine["ts"].to_numpy(), mine["id"].to_numpy(), {"v": mine["v"].to_numpy()}, query_ts, query_id, plan, False
    )
    want = one_query(
        last["ts"].to_numpy(), last["id"].to_numpy(), {"v": last["v"].to_numpy()}, query_ts, query_id, plan, False
    )
    assert relabelled is not None and want is not None and relabelled.tolist() == want.tolist()
    assert corrected.raw["v"].tolist() != facts.raw["v"].tolist()  # the other delivery of each repeat


def test_packed_query_reads_the_store_s_bytes_as_one_query_reads_its_columns() -> None:
    """A request's windows straight from the bytes Redis sent (`packed_query`: records of
    time, id and columns at any offset of the reply, the query's own record added and any
    stored copy of it left out) against `one_query` on the same facts: equal to the last bit,
    with NaN, -0.0, hashed strings, count_distinct and repeats among them."""
    from vigil.declared.windows import FUNCTION_CODES, one_query, packed_query, query_plan

    rng = np.random.default_rng(5)
    n = 300
    dtype = np.dtype([("ts", "<i8"), ("id", "<i8"), ("amount", "<f8"), ("merchant", "<i8")])
    stored = np.empty(n, dtype)
    stored["ts"] = rng.integers(0, 60, n) * 1_000_000_000
    stored["id"] = rng.integers(0, 250, n)  # repeats
    stored["amount"] = np.round(rng.normal(50, 30, n), 1)
    stored["amount"][rng.integers(0, n, 15)] = np.nan
    stored["amount"][rng.integers(0, n, 15)] = -0.0
    stored["merchant"] = rng.integers(0, 9, n) * 7919
    own = np.zeros(1, dtype)
    own[0] = (61_000_000_000, int(stored["id"][7]), 12.5, 7919)  # recorded already, as id 7's fact
    reply = np.frombuffer(b"junk!" + stored.tobytes() + b"\r\n", np.uint8)  # at an odd offset
    asked = tuple(
        (column, function, window * 1_000_000_000, delay * 1_000_000_000)
        for column in ("amount", "merchant")
        for function in FUNCTION_CODES
        for window, delay in ((10, 0), (30, 5), (100, 0))
        if not (column == "merchant" and function not in ("count", "count_distinct"))
    )
    plan = query_plan(asked)
    offsets = np.array([dtype.names.index(name) for name in plan.names], np.int64)  # type: ignore[union-attr]
    floats = np.array([dtype[name] == np.float64 for name in plan.names])
    for with_own in (True, False):
        mine = own.view(np.int64) if with_own else np.zeros(0, np.int64)
        packed = packed_query(
            np.require(reply, np.uint8, ["C", "W"]), 5, stored.nbytes, 4, mine, offsets, floats,
            int(own["ts"][0]), int(own["id"][0]), plan, with_own,
        )  # fmt: skip
        facts = np.concatenate([stored[stored["id"] != own["id"][0]], own]) if with_own else stored
        columns = {"amount": facts["amount"].copy(), "merchant": facts["merchant"].copy()}
        want = one_query(facts["ts"], facts["id"], columns, int(own["ts"][0]), int(own["id"][0]), plan, with_own)
        assert want is not None
        assert np.array_equal(packed, want, equal_nan=True), with_own
