"""Evaluation the Fraud Detection Handbook's way: AUC, AP and card precision@100.

Protocol (single split): train on a window, wait a delay (labels arrive late), test on
the following days. Customers known to be compromised are removed from the test set:
those with a fraud in the training window, plus, for each test day d, those with a
fraud on any day up to d - 8 (known by then, a week's delay plus the day itself).
CP@k: each test day, the k customers with the highest maximum score; customers already
detected (a true fraud in an earlier day's top k) are left out; precision averaged over
days.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

KNOWN_AFTER_DAYS = 8


@dataclass(frozen=True)
class Metrics:
    auc: float
    ap: float
    cp_at_100: float
    transactions: int
    frauds: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Split:
    """Day boundaries (inclusive dates) of one train / delay / test split."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    @staticmethod
    def book(test_start: str | pd.Timestamp, train_days: int = 7, delay_days: int = 7, test_days: int = 7) -> Split:
        start = pd.Timestamp(test_start).normalize()
        train_end = start - pd.Timedelta(days=delay_days + 1)
        return Split(
            train_end - pd.Timedelta(days=train_days - 1), train_end, start, start + pd.Timedelta(days=test_days - 1)
        )

    def with_train_start(self, start: str | pd.Timestamp) -> Split:
        return Split(pd.Timestamp(start).normalize(), self.train_end, self.test_start, self.test_end)


def _day(times: pd.Series) -> pd.Series:
    return pd.to_datetime(times).dt.normalize()


def in_days(frame: pd.DataFrame, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    day = _day(frame["tx_datetime"])
    return frame[(day >= first) & (day <= last)]


def book_test_set(history: pd.DataFrame, split: Split) -> pd.DataFrame:
    """Test-window rows minus customers known to be compromised by each test day.

    `history` holds at least every labelled transaction from the split's training start
    to its test end (tx_datetime, customer_id, tx_fraud).
    """
    day = _day(history["tx_datetime"])
    frauds = history[(history["tx_fraud"] == 1) & (day >= split.train_start)]
    fraud_days = _day(frauds["tx_datetime"])
    parts = []
    for test_day in pd.date_range(split.test_start, split.test_end, freq="D"):
        known = set(frauds.loc[fraud_days <= test_day - pd.Timedelta(days=KNOWN_AFTER_DAYS), "customer_id"])
        rows = history[(day == test_day) & ~history["customer_id"].isin(known)]
        parts.append(rows)
    return pd.concat(parts) if parts else history.iloc[0:0]


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """Mean over test days of the share of true frauds among the top-k customers."""
    data = pd.DataFrame(
        {
            "day": _day(frame["tx_datetime"]).to_numpy(),
            "customer_id": frame["customer_id"].to_numpy(),
            "score": scores,
            "fraud": frame["tx_fraud"].to_numpy(),
        }
    )
    detected: set[int] = set()
    precisions = []
    for _, rows in data.groupby("day", sort=True):
        rows = rows[~rows["customer_id"].isin(detected)]
        per_customer = rows.groupby("customer_id").agg(score=("score", "max"), fraud=("fraud", "max"))
        top = per_customer.sort_values("score", ascending=False, kind="stable").head(k)
        hits = top.index[top["fraud"] == 1]
        precisions.append(len(hits) / k)
        detected.update(int(c) for c in hits)
    return float(np.mean(precisions)) if precisions else float("nan")


def evaluate(frame: pd.DataFrame, scores: np.ndarray, k: int = 100) -> Metrics:
    labels = frame["tx_fraud"].to_numpy()
    both = len(np.unique(labels)) == 2
    return Metrics(
        auc=float(roc_auc_score(labels, scores)) if both else float("nan"),
        ap=float(average_precision_score(labels, scores)) if both else float("nan"),
        cp_at_100=card_precision_at_k(frame, scores, k),
        transactions=len(frame),
        frauds=int(labels.sum()),
    )
