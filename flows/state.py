"""Per-partition state of the feature flow and the pure function that updates it.

Entities are grouped into a fixed number of partitions per kind; Bytewax routes every
partition key to one worker, so one entity is always updated by one worker. A
partition's state caches the histories of its entities; an entity seen for the first
time in this run is loaded from the online store first, so a restarted flow continues
from what was written (updates are idempotent set unions).

The cache is bounded (`max_entities` per partition): past it, the entities updated least
recently are dropped, and reloaded from the store if they come back, exactly as after a
restart. Never those of the batch at hand; the ones dropped were last updated at least
`max_entities` other entities ago, long written by the online sink, which follows this
step on the same worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.features import spec
from vigil.features.history import EntityHistory, merge
from vigil.features.windows import FloatArray, IntArray

CUSTOMER = "customer"
TERMINAL = "terminal"
PARTITIONS_PER_KIND = 64


@dataclass
class EntityEvents:
    """Facts for entities of one kind and partition (columnar, any order)."""

    kind: str
    entity: IntArray
    ts: IntArray
    tx_id: IntArray
    value: FloatArray
    tokens: list[Any] = field(default_factory=list)  # source acknowledgements to send once written

    def __len__(self) -> int:
        return int(self.entity.shape[0])


@dataclass(frozen=True)
class HistoryUpdate:
    """The new history of one entity, to be written to the online store."""

    kind: str
    entity: int
    history: EntityHistory


@dataclass
class UpdateBatch:
    """What one partition step emits: new histories plus the acknowledgements they settle."""

    kind: str
    updates: list[HistoryUpdate]
    tokens: list[Any]
    events: int


@dataclass
class PartitionState:
    # Least recently updated first (an update moves its entity to the end).
    histories: dict[int, EntityHistory] = field(default_factory=dict)
    max_entities: int | None = None


Loader = Callable[[str, Sequence[int]], list[EntityHistory]]


def apply_events(state: PartitionState, events: EntityEvents, load: Loader) -> UpdateBatch:
    """Merges `events` into the histories of their entities (loading unseen ones)."""
    if not len(events):
        return UpdateBatch(events.kind, [], list(events.tokens), 0)
    order = np.lexsort((events.tx_id, events.ts, events.entity))
    entity = events.entity[order]
    ts, tx_id, value = events.ts[order], events.tx_id[order], events.value[order]
    starts = np.flatnonzero(np.r_[True, entity[1:] != entity[:-1]])
    ends = np.r_[starts[1:], entity.shape[0]]
    entities = entity[starts].tolist()
    missing = [e for e in entities if e not in state.histories]
    if missing:
        for e, history in zip(missing, load(events.kind, missing), strict=True):
            state.histories[e] = history
    horizon = spec.CUSTOMER_HORIZON_SECONDS if events.kind == CUSTOMER else spec.TERMINAL_HORIZON_SECONDS
    updates = []
    for e, lo, hi in zip(entities, starts.tolist(), ends.tolist(), strict=True):
        history = merge(state.histories.pop(e), ts[lo:hi], tx_id[lo:hi], value[lo:hi], horizon)
        state.histories[e] = history
        updates.append(HistoryUpdate(events.kind, e, history))
    if state.max_entities is not None:
        evict_least_recent(state.histories, keep=max(state.max_entities, len(entities)))
    return UpdateBatch(events.kind, updates, list(events.tokens), len(events))


def evict_least_recent(histories: dict[int, EntityHistory], keep: int) -> int:
    """Drops the least recently updated histories beyond `keep`; returns how many."""
    excess = len(histories) - keep
    if excess <= 0:
        return 0
    for entity in list(itertools.islice(histories, excess)):
        del histories[entity]
    return excess
