"""History updates are idempotent set unions with bounded size."""

from __future__ import annotations

import numpy as np

from vigil.features import spec
from vigil.features.history import EntityHistory, merge

DAY = spec.DAY_SECONDS


def arrays(ts: list[int], ids: list[int], values: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.array(ts, np.int64), np.array(ids, np.int64), np.array(values, np.float64)


def same(a: EntityHistory, b: EntityHistory) -> bool:
    return bool(np.array_equal(a.ts, b.ts) and np.array_equal(a.tx_id, b.tx_id) and np.array_equal(a.value, b.value))


def test_merge_is_idempotent_and_order_free() -> None:
    facts = arrays([30, 10, 20, 20], [3, 1, 2, 5], [3.0, 1.0, 2.0, 5.0])
    once = merge(EntityHistory.empty(), *facts)
    twice = merge(once, *facts)
    assert same(once, twice)
    assert once.tx_id.tolist() == [1, 2, 5, 3]
    reversed_facts = tuple(a[::-1].copy() for a in facts)
    assert same(merge(EntityHistory.empty(), *reversed_facts), once)


def test_in_order_appends_take_the_fast_path_with_same_result() -> None:
    h = merge(EntityHistory.empty(), *arrays([10, 20], [1, 2], [1.0, 2.0]))
    appended = merge(h, *arrays([30, 30], [3, 4], [3.0, 4.0]))
    slow = merge(
        merge(EntityHistory.empty(), *arrays([30, 30], [3, 4], [3.0, 4.0])), *arrays([10, 20], [1, 2], [1.0, 2.0])
    )
    assert same(appended, slow)


def test_repeated_id_keeps_the_newest_fact() -> None:
    h = merge(EntityHistory.empty(), *arrays([10], [1], [0.0]))
    h = merge(h, *arrays([10], [1], [1.0]))  # a corrected label
    assert h.value.tolist() == [1.0] and len(h) == 1


def test_state_is_bounded_by_the_horizon() -> None:
    for horizon in (spec.CUSTOMER_HORIZON_SECONDS, spec.TERMINAL_HORIZON_SECONDS):
        h = EntityHistory.empty()
        for day in range(200):
            h = merge(h, *arrays([day * DAY], [day], [1.0]), horizon=horizon)
        assert len(h) == horizon // DAY
        assert int(h.ts[0]) > int(h.ts[-1]) - horizon
    assert spec.CUSTOMER_HORIZON_SECONDS == 37 * DAY and spec.TERMINAL_HORIZON_SECONDS == 44 * DAY
