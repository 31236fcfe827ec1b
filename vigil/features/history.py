"""Per-entity history: the bounded state from which features are exact as of any time.

A customer's history holds its recent transactions (time, id, amount); a terminal's
holds the labels that came back for its recent transactions (time of the transaction,
id, fraud 0/1). Updates are set unions keyed by transaction id, so applying the same
facts twice changes nothing (idempotent replays and restarts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigil.features import spec
from vigil.features.windows import FloatArray, IntArray

_EMPTY_INT = np.zeros(0, dtype=np.int64)
_EMPTY_FLOAT = np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class EntityHistory:
    """Facts about one entity, sorted by (ts, tx_id), one per transaction id."""

    ts: IntArray
    tx_id: IntArray
    value: FloatArray

    @staticmethod
    def empty() -> EntityHistory:
        return EntityHistory(_EMPTY_INT, _EMPTY_INT, _EMPTY_FLOAT)

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def latest_ts(self) -> int | None:
        return int(self.ts[-1]) if len(self) else None


def merge(
    history: EntityHistory,
    ts: IntArray,
    tx_id: IntArray,
    value: FloatArray,
    horizon: int = spec.HORIZON_SECONDS,
) -> EntityHistory:
    """Union of `history` and new facts; a repeated transaction id keeps the newest fact.

    Facts older than `horizon` seconds before the newest fact are dropped, so the state
    per entity stays bounded (spec.CUSTOMER_/TERMINAL_HORIZON_SECONDS per kind).
    """
    if _appends_in_order(history, ts, tx_id):
        return evict(
            EntityHistory(
                np.concatenate([history.ts, ts]),
                np.concatenate([history.tx_id, tx_id]),
                np.concatenate([history.value, value]),
            ),
            horizon,
        )
    all_ts = np.concatenate([history.ts, ts])
    all_id = np.concatenate([history.tx_id, tx_id])
    all_val = np.concatenate([history.value, value])
    # Reverse so that np.unique's first occurrence is the last one written.
    _, first = np.unique(all_id[::-1], return_index=True)
    keep = all_id.shape[0] - 1 - first
    all_ts, all_id, all_val = all_ts[keep], all_id[keep], all_val[keep]
    order = np.lexsort((all_id, all_ts))
    merged = EntityHistory(all_ts[order], all_id[order], all_val[order])
    return evict(merged, horizon)


def _appends_in_order(history: EntityHistory, ts: IntArray, tx_id: IntArray) -> bool:
    """True when the new facts are strictly after the history and strictly increasing in
    (ts, tx_id): then no id can repeat and a plain append keeps the order (the common,
    in-order streaming case)."""
    if ts.shape[0] == 0:
        return True
    if len(history) and ts[0] <= history.ts[-1]:
        return False
    if ts.shape[0] == 1:
        return True
    dts = np.diff(ts)
    return bool(np.all((dts > 0) | ((dts == 0) & (np.diff(tx_id) > 0))))


def evict(history: EntityHistory, horizon: int = spec.HORIZON_SECONDS) -> EntityHistory:
    """Drops facts no feature can need: older than the horizon before the newest fact."""
    if not len(history):
        return history
    cutoff = history.ts[-1] - horizon
    start = int(np.searchsorted(history.ts, cutoff, "right"))
    if start == 0:
        return history
    return EntityHistory(history.ts[start:], history.tx_id[start:], history.value[start:])
