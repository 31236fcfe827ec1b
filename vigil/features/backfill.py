"""Vectorised batch backfill: the features of every transaction in a frame (spec.ALL_FEATURES).

Used to build training sets and to check the streaming path. It calls the same window
functions as the request-time rollup, over all transactions at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil.features import spec, windows
from vigil.features.windows import SortedFacts


def epoch_seconds(times: pd.Series) -> np.ndarray:
    """Naive timestamps to int64 unix seconds (the handbook's times are naive)."""
    values = pd.to_datetime(times)
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.to_numpy(dtype="datetime64[s]").astype(np.int64)


def compute_features(transactions: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features for every row of `transactions`, in its row order.

    `transactions` needs transaction_id, tx_datetime, customer_id, terminal_id and
    tx_amount. Terminal risk uses `labels` (transaction_id, tx_datetime, terminal_id,
    tx_fraud); by default the frame's own tx_fraud column. Duplicated transaction ids
    count once.
    """
    txs = transactions.drop_duplicates("transaction_id", keep="last")
    ts = epoch_seconds(txs["tx_datetime"])
    tx_id = txs["transaction_id"].to_numpy(np.int64)
    customer = SortedFacts.build(
        txs["customer_id"].to_numpy(np.int64), ts, tx_id, txs["tx_amount"].to_numpy(np.float64)
    )
    # Position of each transaction (in frame order) inside the sorted customer facts.
    order = np.lexsort((tx_id, ts, txs["customer_id"].to_numpy(np.int64)))
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])

    label_frame = txs if labels is None else labels.drop_duplicates("transaction_id", keep="last")
    label_frame = label_frame[label_frame["tx_fraud"].notna()]
    terminal = SortedFacts.build(
        label_frame["terminal_id"].to_numpy(np.int64),
        epoch_seconds(label_frame["tx_datetime"]),
        label_frame["transaction_id"].to_numpy(np.int64),
        label_frame["tx_fraud"].to_numpy(np.float64),
    )

    columns = windows.calendar(ts)
    columns.update(windows.customer_windows(customer, position))
    columns.update(windows.customer_habits(customer, position))
    terminal_ids = txs["terminal_id"].to_numpy(np.int64)
    columns.update(windows.terminal_windows(terminal, terminal_ids, ts))
    columns.update(windows.terminal_streaks(terminal, terminal_ids, ts))
    out = pd.DataFrame({"transaction_id": tx_id})
    for name in spec.ALL_FEATURES:
        out[name] = columns[name]
    for flag in (spec.WEEKEND, spec.NIGHT):
        out[flag] = out[flag].astype(np.int64)
    if len(txs) != len(transactions):
        out = out.set_index("transaction_id").loc[transactions["transaction_id"].to_numpy()].reset_index()
    return out
