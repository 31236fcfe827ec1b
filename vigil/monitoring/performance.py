"""Live model performance once labels arrive: logged scores joined to label events.

Labels reach Vigil as label events through the feature flow, which keeps them in the
offline store (`offline/labels/`). Each day of transactions with labels gets the
served model's AUC, average precision and card precision@k on that day; a day whose
AP falls below the version's expected AP by more than a tolerance is an alert.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from vigil.lifecycle.evaluation import card_precision_at_k
from vigil.offline.eventlog import read_log
from vigil.settings import Settings


@dataclass(frozen=True)
class DayPerformance:
    day: str
    version: str
    transactions: int
    frauds: int
    auc: float
    ap: float
    cp_at_100: float
    expected_ap: float | None
    alert: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_labels(settings: Settings, first_day: str | None = None) -> pd.DataFrame:
    """Every label event ingested so far (of transactions from `first_day` on), one per
    transaction (the latest wins)."""
    labels = read_log(settings.event_log, "labels", first=first_day)
    return labels[["transaction_id", "tx_fraud"]]


def daily_performance(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    expected_ap: dict[str, float],
    tolerance: float = 0.3,
    min_frauds: int = 10,
) -> list[DayPerformance]:
    """Per (day, version) performance of the answers the models gave (fallbacks excluded).

    A day is an alert when it has at least `min_frauds` labelled frauds and its AP is below
    (1 - tolerance) x the version's expected AP (its test AP at training time).
    """
    served = predictions[~predictions["fallback"].astype(bool)]
    joined = served.merge(labels, on="transaction_id", how="inner")
    out: list[DayPerformance] = []
    if joined.empty:
        return out
    joined = joined.assign(day=pd.to_datetime(joined["tx_datetime"]).dt.normalize())
    for (day, version), rows in joined.groupby(["day", "version"], sort=True):
        y, score = rows["tx_fraud"].to_numpy(), rows["score"].to_numpy()
        both = len(np.unique(y)) == 2
        ap = float(average_precision_score(y, score)) if both else float("nan")
        expected = expected_ap.get(str(version))
        frauds = int(y.sum())
        alert = bool(both and expected is not None and frauds >= min_frauds and ap < (1 - tolerance) * expected)
        out.append(
            DayPerformance(
                day=str(pd.Timestamp(day).date()),
                version=str(version),
                transactions=len(rows),
                frauds=frauds,
                auc=float(roc_auc_score(y, score)) if both else float("nan"),
                ap=ap,
                cp_at_100=card_precision_at_k(rows, score),
                expected_ap=expected,
                alert=alert,
            )
        )
    return out
