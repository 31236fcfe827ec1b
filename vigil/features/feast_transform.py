"""The body of Feast's `transaction_features` on-demand view (feature_repo/features.py).

Feast hands a python-mode view a dict of columns (lists over the requested rows);
this turns them into histories and calls the shared rollup, so a plain Feast client
gets the same numbers as the scoring service.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vigil.features import spec
from vigil.features.history import EntityHistory
from vigil.features.rollup import TransactionFacts, features_as_of


def to_epoch_seconds(value: Any) -> int:
    """Event time as unix seconds; naive times are taken as they are (no zone shift)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return int((value - datetime(1970, 1, 1)).total_seconds())
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[s]").astype(np.int64))
    if isinstance(value, str):
        return to_epoch_seconds(datetime.fromisoformat(value))
    return int(value)


def _history(ts: Sequence[int] | None, ids: Sequence[int] | None, vals: Sequence[float] | None) -> EntityHistory:
    # A missing entity comes as None; anything else that is not three equal-length
    # sequences is treated as no history rather than failing the whole request.
    if not all(isinstance(x, Sequence | np.ndarray) for x in (ts, ids, vals)):
        return EntityHistory.empty()
    assert ts is not None and ids is not None and vals is not None
    if not (len(ts) == len(ids) == len(vals)):
        return EntityHistory.empty()
    ts_arr = np.asarray(ts, dtype=np.int64)
    ids_arr = np.asarray(ids, dtype=np.int64)
    order = np.lexsort((ids_arr, ts_arr))
    return EntityHistory(ts_arr[order], ids_arr[order], np.asarray(vals, dtype=np.float64)[order])


def transaction_features(inputs: dict[str, Any]) -> dict[str, list[Any]]:
    """Columns in, columns out: every feature (spec.ALL_FEATURES) for every requested row."""
    tx_ids = list(inputs["transaction_id"])
    n = len(tx_ids)

    def column(name: str) -> list[Any]:
        values = inputs.get(name)
        return list(values) if values is not None else [None] * n

    # Full "<view>__<field>" names: Feast provides them for every source field.
    customer_cols = [column(f"{spec.CUSTOMER_VIEW}__{f}") for f in spec.CUSTOMER_FIELDS]
    terminal_cols = [column(f"{spec.TERMINAL_VIEW}__{f}") for f in spec.TERMINAL_FIELDS]
    customers = [_history(*(c[i] for c in customer_cols)) for i in range(n)]
    terminals = [_history(*(c[i] for c in terminal_cols)) for i in range(n)]
    txs = TransactionFacts(
        tx_id=np.asarray([int(x) for x in tx_ids], dtype=np.int64),
        ts=np.asarray([to_epoch_seconds(t) for t in column("tx_datetime")], dtype=np.int64),
        amount=np.asarray([float(a) for a in column("tx_amount")], dtype=np.float64),
    )
    features = features_as_of(customers, terminals, txs)
    out: dict[str, list[Any]] = {}
    for name in spec.ALL_FEATURES:
        values = features[name]
        out[name] = values.astype(np.int64).tolist() if name in (spec.WEEKEND, spec.NIGHT) else values.tolist()
    return out
