"""Request-time rollup: the 14 features of transactions as of their own time.

Given each transaction's customer history and terminal label history (as read from
the online store), computes the features with the same window functions as the
backfill. The transaction itself counts once, whether or not it was already ingested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vigil.features import windows
from vigil.features.history import EntityHistory
from vigil.features.windows import FloatArray, IntArray, SortedFacts


@dataclass(frozen=True)
class TransactionFacts:
    """What a request tells about the transactions being scored (columnar)."""

    tx_id: IntArray
    ts: IntArray  # naive event time as unix seconds
    amount: FloatArray

    def __len__(self) -> int:
        return int(self.tx_id.shape[0])


def _customer_facts(histories: Sequence[EntityHistory], txs: TransactionFacts) -> tuple[SortedFacts, IntArray]:
    """Stacks each request's customer history plus the request itself, as entity i."""
    parts_ts, parts_id, parts_val, parts_ent = [], [], [], []
    for i, history in enumerate(histories):
        own = history.tx_id != txs.tx_id[i]  # an ingested copy of this transaction
        parts_ts.append(history.ts[own])
        parts_id.append(history.tx_id[own])
        parts_val.append(history.value[own])
        parts_ent.append(np.full(int(own.sum()), i, dtype=np.int64))
    n = len(txs)
    entity = np.concatenate([*parts_ent, np.arange(n, dtype=np.int64)])
    facts = SortedFacts.build(
        entity,
        np.concatenate([*parts_ts, txs.ts]),
        np.concatenate([*parts_id, txs.tx_id]),
        np.concatenate([*parts_val, txs.amount]),
    )
    # Each entity i holds exactly one row with the request's id (its copy was dropped
    # above); entities are sorted, so the matches come out in request order.
    position = np.flatnonzero(facts.tx_id == txs.tx_id[facts.entity])
    return facts, position


def _terminal_facts(histories: Sequence[EntityHistory]) -> SortedFacts:
    # Histories are already sorted by (ts, tx_id); stacking them in entity order keeps
    # the (entity, ts, tx_id) order, so no re-sort is needed.
    stacked = [EntityHistory.empty(), *histories]
    return SortedFacts(
        np.concatenate([np.full(len(h), i - 1, dtype=np.int64) for i, h in enumerate(stacked)]),
        np.concatenate([h.ts for h in stacked]),
        np.concatenate([h.tx_id for h in stacked]),
        np.concatenate([h.value for h in stacked]),
    )


def features_as_of(
    customers: Sequence[EntityHistory],
    terminals: Sequence[EntityHistory],
    txs: TransactionFacts,
) -> dict[str, FloatArray]:
    """Features of each transaction i from customers[i] and terminals[i], as of txs.ts[i]."""
    n = len(txs)
    if not (len(customers) == len(terminals) == n):
        raise ValueError("one customer and one terminal history per transaction")
    out: dict[str, FloatArray] = dict(windows.calendar(txs.ts))
    facts, position = _customer_facts(customers, txs)
    out.update(windows.customer_windows(facts, position))
    out.update(windows.terminal_windows(_terminal_facts(terminals), np.arange(n, dtype=np.int64), txs.ts))
    return out
