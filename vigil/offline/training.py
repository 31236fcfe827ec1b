"""The offline store: the flow's event log, the backfilled feature table, training sets.

The flow appends validated events to `offline/transactions/` and `offline/labels/`
(Parquet parts; replays add duplicates, removed here by transaction_id). The backfill
turns them into `offline/transaction_features.parquet`, the source of Feast's
`transaction_features_v1`, `_v2_offline` and `_v3_offline` views, and training sets come from
Feast's `get_historical_features` on the newest set's training service (`fraud_v3_training`:
each set's inputs extend the one before, so one training set serves a model of any).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from feast import FeatureStore
from tqdm import tqdm

from vigil.features import spec
from vigil.features.backfill import compute_features
from vigil.offline.eventlog import KINDS, list_parts, read_log
from vigil.settings import Settings

TRAINING_SERVICE = spec.SERVED.training_service


class OfflineStoreEmptyError(RuntimeError):
    """Nothing has been ingested yet."""


def read_events(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ingested transactions and labels, one row per transaction id, times as datetimes."""
    transactions = read_log(settings.offline_dir, "transactions")
    if transactions.empty:
        raise OfflineStoreEmptyError(
            f"no ingested transactions under {settings.offline_dir}: run `vigil ingest --transactions PATH` first"
        )
    labels = read_log(settings.offline_dir, "labels")
    transactions = transactions.sort_values(["ts", "transaction_id"])
    transactions["tx_datetime"] = pd.to_datetime(transactions["ts"], unit="s")
    labels["tx_datetime"] = pd.to_datetime(labels["ts"], unit="s")
    return transactions.reset_index(drop=True), labels.reset_index(drop=True)


def features_path(settings: Settings) -> Path:
    return settings.offline_dir / "transaction_features.parquet"


def _newest_part(settings: Settings) -> float:
    stamps = [p.mtime_ns / 1e9 for kind in KINDS for p in list_parts(settings.offline_dir, kind)]
    return max(stamps, default=0.0)


def _complete(table: Path) -> bool:
    """Whether a feature table holds every feature (one written by an older version may not)."""
    return set(spec.ALL_FEATURES) <= set(pq.read_schema(table).names)


def backfill(settings: Settings, force: bool = False, progress: bool = False) -> Path:
    """(Re)computes the feature table from the event log when the log is newer."""
    target = features_path(settings)
    if not force and target.exists() and target.stat().st_mtime >= _newest_part(settings) and _complete(target):
        return target
    steps = tqdm(total=3, desc="backfill", unit="step", disable=not progress)
    transactions, labels = read_events(settings)
    steps.update(1)
    features = compute_features(transactions, labels)
    steps.update(1)
    table = features.assign(
        event_timestamp=transactions["tx_datetime"].dt.tz_localize("UTC").to_numpy(),
        tx_amount=transactions["tx_amount"].to_numpy(np.float64),
        customer_id=transactions["customer_id"].to_numpy(np.int64),
        terminal_id=transactions["terminal_id"].to_numpy(np.int64),
    )
    tmp = target.with_suffix(".tmp")
    table.to_parquet(tmp, index=False)
    tmp.rename(target)
    steps.update(1)
    steps.close()
    return target


def training_set(
    store: FeatureStore,
    settings: Settings,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Point-in-time training rows for transactions in [start, end] (dates inclusive).

    Columns: transaction_id, tx_datetime, customer_id, terminal_id, spec.SERVED_INPUTS
    and tx_fraud (from the label events; unlabelled transactions are left out).
    """
    backfill(settings, progress=progress)
    transactions, labels = read_events(settings)
    chosen = transactions
    if start is not None:
        chosen = chosen[chosen["tx_datetime"] >= pd.Timestamp(start)]
    if end is not None:
        chosen = chosen[chosen["tx_datetime"] < pd.Timestamp(end) + pd.Timedelta(days=1)]
    chosen = chosen.merge(labels[["transaction_id", "tx_fraud"]], on="transaction_id", how="inner")
    entity_df = pd.DataFrame(
        {
            "transaction_id": chosen["transaction_id"].to_numpy(np.int64),
            "event_timestamp": chosen["tx_datetime"].dt.tz_localize("UTC").to_numpy(),
            "customer_id": chosen["customer_id"].to_numpy(np.int64),
            "terminal_id": chosen["terminal_id"].to_numpy(np.int64),
            "tx_fraud": chosen["tx_fraud"].to_numpy(np.int64),
        }
    )
    if entity_df.empty:
        return entity_df.assign(
            tx_datetime=pd.Series(dtype="datetime64[ns]"),
            **{name: pd.Series(dtype=float) for name in spec.SERVED_INPUTS},
        )
    job = store.get_historical_features(entity_df=entity_df, features=store.get_feature_service(TRAINING_SERVICE))
    frame = job.to_df()
    frame["tx_datetime"] = pd.to_datetime(frame["event_timestamp"]).dt.tz_convert("UTC").dt.tz_localize(None)
    frame = frame.sort_values(["tx_datetime", "transaction_id"]).reset_index(drop=True)
    return frame[["transaction_id", "tx_datetime", "customer_id", "terminal_id", *spec.SERVED_INPUTS, "tx_fraud"]]
