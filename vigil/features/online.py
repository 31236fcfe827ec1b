"""Features of transactions computed from the online store (the request-time path)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil.features import spec
from vigil.features.backfill import epoch_seconds
from vigil.features.rollup import TransactionFacts, features_for_stacked
from vigil.online.store import OnlineHistoryStore


def online_features(transactions: pd.DataFrame, store: OnlineHistoryStore, chunk: int = 2_000) -> pd.DataFrame:
    """The features (spec.ALL_FEATURES) of each row as of its own tx_datetime, from stored histories.

    Reads each chunk's customer and terminal histories in one round trip and rolls them
    up with the shared window functions; row order is kept.
    """
    parts = []
    for start in range(0, len(transactions), chunk):
        rows = transactions.iloc[start : start + chunk]
        customers, terminals = store.read_stacked(
            rows["customer_id"].to_numpy(np.int64).tolist(), rows["terminal_id"].to_numpy(np.int64).tolist()
        )
        txs = TransactionFacts(
            tx_id=rows["transaction_id"].to_numpy(np.int64),
            ts=epoch_seconds(rows["tx_datetime"]),
            amount=rows["tx_amount"].to_numpy(np.float64),
        )
        features = features_for_stacked(customers, terminals, txs)
        frame = pd.DataFrame({"transaction_id": txs.tx_id})
        for name in spec.ALL_FEATURES:
            frame[name] = features[name]
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["transaction_id", *spec.ALL_FEATURES])
    for flag in (spec.WEEKEND, spec.NIGHT):
        out[flag] = out[flag].astype(np.int64)
    return out


def max_differences(ours: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """Largest absolute difference per feature the two frames share, rows matched by transaction_id."""
    merged = ours.merge(reference, on="transaction_id", suffixes=("", "_ref"), validate="one_to_one")
    if len(merged) != len(ours):
        raise ValueError(f"{len(ours) - len(merged)} transactions have no reference row")
    return {
        name: float(
            np.max(np.abs(merged[name].to_numpy(np.float64) - merged[f"{name}_ref"].to_numpy(np.float64)), initial=0.0)
        )
        for name in spec.ALL_FEATURES
        if name in ours and name in reference
    }
