"""The flow's per-partition history cache: bounded, least recently updated dropped first,
and a dropped entity reloaded from the store gives the same history as a kept one."""

from __future__ import annotations

import numpy as np

from flows.state import CUSTOMER, EntityEvents, PartitionState, apply_events
from vigil.features.history import EntityHistory


class Store:
    """What the online sink wrote: the histories the flow emitted (the loader's source)."""

    def __init__(self) -> None:
        self.written: dict[int, EntityHistory] = {}
        self.loads = 0

    def load(self, kind: str, entities: list[int]) -> list[EntityHistory]:
        self.loads += len(entities)
        return [self.written.get(e, EntityHistory.empty()) for e in entities]

    def apply(self, state: PartitionState, entity: list[int], ts: list[int]) -> None:
        n = len(entity)
        ids = np.asarray(ts, np.int64) * 10 + np.asarray(entity, np.int64)  # unique per fact
        events = EntityEvents(CUSTOMER, np.asarray(entity, np.int64), np.asarray(ts, np.int64), ids, np.ones(n))
        for update in apply_events(state, events, self.load).updates:
            self.written[update.entity] = update.history


def test_the_cache_keeps_the_most_recently_updated_entities() -> None:
    store, state = Store(), PartitionState(max_entities=3)
    for t, entity in enumerate([1, 2, 3, 1, 4, 5]):
        store.apply(state, [entity], [1_000 + t])
    assert list(state.histories) == [1, 4, 5]  # 2 and 3 were the least recently updated


def test_a_batch_larger_than_the_cache_is_kept_whole() -> None:
    store, state = Store(), PartitionState(max_entities=2)
    store.apply(state, [1, 2, 3, 4], [1_000, 1_001, 1_002, 1_003])
    assert sorted(state.histories) == [1, 2, 3, 4]


def test_a_dropped_entity_comes_back_from_the_store_with_the_same_history() -> None:
    rng = np.random.default_rng(0)
    entity = rng.integers(0, 50, 2_000).tolist()
    ts = (10_000 + np.arange(2_000) * 60).tolist()
    bounded_store, bounded = Store(), PartitionState(max_entities=5)
    whole_store, whole = Store(), PartitionState()
    for lo in range(0, 2_000, 25):
        bounded_store.apply(bounded, entity[lo : lo + 25], ts[lo : lo + 25])
        whole_store.apply(whole, entity[lo : lo + 25], ts[lo : lo + 25])
    assert len(bounded.histories) <= 25 and bounded_store.loads > 50  # evicted and reloaded
    for e, history in whole.histories.items():
        again = bounded_store.written[e]
        assert np.array_equal(history.ts, again.ts) and np.array_equal(history.tx_id, again.tx_id)
        assert np.array_equal(history.value, again.value)
