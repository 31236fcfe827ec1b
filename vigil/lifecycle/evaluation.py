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

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

KNOWN_AFTER_DAYS = 8
METRICS: tuple[str, ...] = ("auc", "ap", "cp_at_100")  # the three, in this order everywhere


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

    @staticmethod
    def after(train_end: str | pd.Timestamp, delay_days: int = 7, test_days: int = 7) -> Split:
        """The book's split whose training ends on `train_end`: the test week follows the delay."""
        end = pd.Timestamp(train_end).normalize()
        return Split.book(end + pd.Timedelta(days=delay_days + 1), delay_days=delay_days, test_days=test_days)

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


def book_week_test_set(history: pd.DataFrame, split: Split) -> pd.DataFrame:
    """`book_test_set` with the customers known from the book's 7-day training week (the
    week before the delay), whatever days the model itself trained on. A model trained on
    months of history would otherwise drop every customer with a fraud in those months (most
    of them, on the handbook's data), so its test week would hold other customers than the
    book's, and than another version's trained on other days."""
    return book_test_set(history, split.with_train_start(split.train_end - pd.Timedelta(days=6)))


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """Mean over test days of the share of true frauds among the top-k customers."""
    day = _day(frame["tx_datetime"]).to_numpy()
    return _card_precision(day, frame["customer_id"].to_numpy(), np.asarray(scores, np.float64),
                           frame["tx_fraud"].to_numpy(), k)  # fmt: skip


def _card_precision(day: np.ndarray, customer: np.ndarray, score: np.ndarray, fraud: np.ndarray, k: int) -> float:
    """`card_precision_at_k` on columns: each row's day, customer, score and label."""
    detected = np.empty(0, customer.dtype)
    precisions = []
    for today in np.unique(day):
        rows = (day == today) & ~np.isin(customer, detected)
        order = np.argsort(customer[rows], kind="stable")
        c, s, f = customer[rows][order], score[rows][order], fraud[rows][order]
        if not c.size:
            precisions.append(0.0)
            continue
        first = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
        # Each customer's highest score and whether any of its payments is a fraud; ties
        # keep customer-id order (a stable sort), as the handbook's pandas code does.
        best, hit = np.maximum.reduceat(s, first), np.maximum.reduceat(f, first)
        top = np.argsort(-best, kind="stable")[:k]
        hits = c[first][top][hit[top] == 1]
        precisions.append(hits.size / k)
        detected = np.union1d(detected, hits)
    return float(np.mean(precisions)) if precisions else float("nan")


def evaluate(frame: pd.DataFrame, scores: np.ndarray, k: int = 100) -> Metrics:
    day = _day(frame["tx_datetime"]).to_numpy()
    return _evaluate(day, frame["customer_id"].to_numpy(), frame["tx_fraud"].to_numpy(), np.asarray(scores), k)


def _evaluate(day: np.ndarray, customer: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 100) -> Metrics:
    """`evaluate` on columns: each row's day, customer, label and score."""
    both = len(np.unique(labels)) == 2
    return Metrics(
        auc=float(roc_auc_score(labels, scores)) if both else float("nan"),
        ap=float(average_precision_score(labels, scores)) if both else float("nan"),
        cp_at_100=_card_precision(day, customer, np.asarray(scores, np.float64), labels, k),
        transactions=len(labels),
        frauds=int(labels.sum()),
    )


@dataclass(frozen=True)
class Difference:
    """One metric of model A minus model B on the same test set, with a bootstrap interval."""

    metric: str
    value: float
    low: float
    high: float

    @property
    def settled(self) -> bool:
        """Whether the interval excludes zero (the sign of the difference is not noise)."""
        return self.low > 0 or self.high < 0


def paired_differences(
    frame: pd.DataFrame,
    reference: np.ndarray,
    others: Mapping[str, np.ndarray],
    rounds: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, list[Difference]]:
    """AUC, AP and CP@100 of `reference` minus each of `others`, with percentile bootstrap intervals.

    Customers are resampled with replacement, each with all of its test payments (a
    customer's payments are not independent: a compromised card repeats its frauds), and
    every model is measured on the same resample, so the interval is that of the
    difference. A customer drawn twice counts as two customers for CP@100.
    """
    if rounds < 1 or not 0 < level < 1:
        raise ValueError("rounds must be at least 1 and level within (0, 1)")
    scores = {"": np.asarray(reference, np.float64), **{k: np.asarray(v, np.float64) for k, v in others.items()}}
    customers, codes = np.unique(frame["customer_id"].to_numpy(), return_inverse=True)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=customers.size)
    starts = np.cumsum(counts) - counts
    # Days once, not in every round: converting the times was most of a round's cost.
    day, fraud = _day(frame["tx_datetime"]).to_numpy(), frame["tx_fraud"].to_numpy()
    observed = {k: _metric_values(evaluate(frame, s)) for k, s in scores.items()}
    rng = np.random.default_rng(seed)
    draws = {k: np.empty((rounds, 3)) for k in scores}
    for r in range(rounds):
        chosen = rng.integers(0, customers.size, customers.size)
        sizes = counts[chosen]
        # Row positions of every chosen customer's payments, customer after customer.
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        rows = order[np.repeat(starts[chosen], sizes) + within]
        drawn = np.repeat(np.arange(chosen.size), sizes)  # a customer drawn twice counts twice
        for k, s in scores.items():
            draws[k][r] = _metric_values(_evaluate(day[rows], drawn, fraud[rows], s[rows]))
    tail = (1 - level) / 2 * 100
    result = {}
    for k in others:
        low, high = np.nanpercentile(draws[""] - draws[k], [tail, 100 - tail], axis=0)
        value = observed[""] - observed[k]
        result[k] = [Difference(n, float(value[i]), float(low[i]), float(high[i])) for i, n in enumerate(METRICS)]
    return result


def _metric_values(metrics: Metrics) -> np.ndarray:
    return np.array([metrics.auc, metrics.ap, metrics.cp_at_100])
