"""Vectorised batch backfill: the features of every transaction in a frame (spec.ALL_FEATURES).

Used to build training sets and to check the streaming path. It calls the same window
functions as the request-time rollup, over all transactions at once. The work splits in
two halves that need different groupings of the data, so a distributed engine can run
each on its own partition of entities (`vigil.offline.spark_engine`):
- `customer_features`: the calendar and the customer's windows and habits, from the
  customer's transactions;
- `terminal_features`: the terminal's windows, streaks and label age, from its labels,
  queried at each transaction's time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil.features import spec, windows
from vigil.features.windows import SortedFacts

CALENDAR = (spec.WEEKEND, spec.NIGHT)
CUSTOMER = tuple(
    name for name in spec.ALL_FEATURES if name.startswith("customer_id_") or name == spec.AMOUNT_OVER_MEDIAN
)
TERMINAL = tuple(name for name in spec.ALL_FEATURES if name.startswith("terminal_id_"))


def epoch_seconds(times: pd.Series) -> np.ndarray:
    """Naive timestamps to int64 unix seconds (the handbook's times are naive)."""
    values = pd.to_datetime(times)
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return values.to_numpy(dtype="datetime64[s]").astype(np.int64)


def customer_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """Calendar and customer features of every transaction of `transactions` (one row per
    transaction id, in the frame's order): the frame must hold each customer's transactions
    of the 30 days before any row it asks about."""
    txs = transactions.drop_duplicates("transaction_id", keep="last")
    ts = epoch_seconds(txs["tx_datetime"])
    tx_id = txs["transaction_id"].to_numpy(np.int64)
    customer_ids = txs["customer_id"].to_numpy(np.int64)
    facts = SortedFacts.build(customer_ids, ts, tx_id, txs["tx_amount"].to_numpy(np.float64))
    # Position of each transaction (in frame order) inside the sorted customer facts.
    order = np.lexsort((tx_id, ts, customer_ids))
    position = np.empty_like(order)
    position[order] = np.arange(order.shape[0])
    columns = windows.calendar(ts)
    columns.update(windows.customer_windows(facts, position))
    columns.update(windows.customer_habits(facts, position))
    out = pd.DataFrame({"transaction_id": tx_id})
    for name in (*CALENDAR, *CUSTOMER):
        out[name] = columns[name]
    return out


def label_facts(labels: pd.DataFrame) -> SortedFacts:
    """Known labels (transaction_id, tx_datetime, terminal_id, tx_fraud) as terminal facts."""
    known = labels.drop_duplicates("transaction_id", keep="last")
    known = known[known["tx_fraud"].notna()]
    return SortedFacts.build(
        known["terminal_id"].to_numpy(np.int64),
        epoch_seconds(known["tx_datetime"]),
        known["transaction_id"].to_numpy(np.int64),
        known["tx_fraud"].to_numpy(np.float64),
    )


def terminal_features(queries: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Terminal features of each query (transaction_id, tx_datetime, terminal_id), from
    `labels`, which must hold the terminal's labels of the 37 days before each query."""
    facts = label_facts(labels)
    ts = epoch_seconds(queries["tx_datetime"])
    terminal_ids = queries["terminal_id"].to_numpy(np.int64)
    columns = windows.terminal_windows(facts, terminal_ids, ts)
    columns.update(windows.terminal_streaks(facts, terminal_ids, ts))
    out = pd.DataFrame({"transaction_id": queries["transaction_id"].to_numpy(np.int64)})
    for name in TERMINAL:
        out[name] = columns[name]
    return out


def compute_features(transactions: pd.DataFrame, labels: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features for every row of `transactions`, in its row order.

    `transactions` needs transaction_id, tx_datetime, customer_id, terminal_id and
    tx_amount. Terminal risk uses `labels` (transaction_id, tx_datetime, terminal_id,
    tx_fraud); by default the frame's own tx_fraud column. Duplicated transaction ids
    count once.
    """
    txs = transactions.drop_duplicates("transaction_id", keep="last")
    customer = customer_features(txs)
    terminal = terminal_features(txs, txs if labels is None else labels)
    out = customer.merge(terminal, on="transaction_id", how="left", sort=False)
    out = out[["transaction_id", *spec.ALL_FEATURES]]
    for flag in CALENDAR:
        out[flag] = out[flag].astype(np.int64)
    if len(txs) != len(transactions):
        out = out.set_index("transaction_id").loc[transactions["transaction_id"].to_numpy()].reset_index()
    return out
