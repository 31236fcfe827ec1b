"""Request-time rollup: the features of transactions (spec.ALL_FEATURES) as of their own time.

Given each transaction's customer history and terminal label history (as read from the
online store), computes the features with the compiled per-transaction pass
(`vigil.features.kernel`), which the tests hold equal to the backfill's window functions.
The transaction itself counts once, whether or not it was already ingested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vigil.features import spec
from vigil.features.history import EntityHistory
from vigil.features.kernel import served_inputs
from vigil.features.windows import FloatArray, IntArray, SortedFacts


@dataclass(frozen=True)
class TransactionFacts:
    """What a request tells about the transactions being scored (columnar)."""

    tx_id: IntArray
    ts: IntArray  # naive event time as unix seconds
    amount: FloatArray

    def __len__(self) -> int:
        return int(self.tx_id.shape[0])


def stack(histories: Sequence[EntityHistory]) -> SortedFacts:
    """History i becomes entity i. Each history is sorted by (ts, tx_id), so the stack is
    sorted by (entity, ts, tx_id) without a re-sort."""
    every = [EntityHistory.empty(), *histories]  # never an empty concatenate
    return SortedFacts(
        np.repeat(np.arange(-1, len(histories), dtype=np.int64), [len(h) for h in every]),
        np.concatenate([h.ts for h in every]),
        np.concatenate([h.tx_id for h in every]),
        np.concatenate([h.value for h in every]),
    )


def features_for_stacked(
    customers: SortedFacts, terminals: SortedFacts, txs: TransactionFacts
) -> dict[str, FloatArray]:
    """Features of transaction i from the facts of entity i in each stack, as of txs.ts[i]."""
    matrix = served_inputs(customers, terminals, txs.tx_id, txs.ts, txs.amount)
    return {name: matrix[:, j + 1] for j, name in enumerate(spec.ALL_FEATURES)}  # column 0: the amount


def features_as_of(
    customers: Sequence[EntityHistory],
    terminals: Sequence[EntityHistory],
    txs: TransactionFacts,
) -> dict[str, FloatArray]:
    """Features of each transaction i from customers[i] and terminals[i], as of txs.ts[i]."""
    if not (len(customers) == len(terminals) == len(txs)):
        raise ValueError("one customer and one terminal history per transaction")
    return features_for_stacked(stack(customers), stack(terminals), txs)
