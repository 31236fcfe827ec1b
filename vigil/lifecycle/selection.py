"""Model selection and comparison over weekly test windows, the handbook's way.

For each test window, every candidate trains only on data before the window's delay
period (7 days), and is scored on the window with known-compromised customers removed.
`book_settings` are the handbook's best published settings, trained as the book does
(the 7 days before the delay, inputs standardised); `tune` picks the product default
among a few XGBoost candidates on validation windows that precede the test windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vigil.lifecycle.evaluation import (
    Metrics,
    Split,
    book_week_test_set,
    card_precision_at_k,
    evaluate,
    in_days,
    paired_differences,
)
from vigil.lifecycle.policy import choose_policy, outcome
from vigil.models.base import as_matrix
from vigil.models.xgb import XGBoostModel

Scorer = Callable[[pd.DataFrame, Sequence[pd.DataFrame]], list[np.ndarray]]  # (train, frames) -> scores of each


@dataclass(frozen=True)
class Candidate:
    name: str
    train_days: int | None  # None: all history before the delay
    fit_score: Scorer


def xgboost_candidate(name: str, params: dict[str, Any], train_days: int | None) -> Candidate:
    def run(train: pd.DataFrame, frames: Sequence[pd.DataFrame]) -> list[np.ndarray]:
        model = XGBoostModel(params).fit(train, train["tx_fraud"].to_numpy())
        return [model.predict_proba(frame) for frame in frames]

    return Candidate(name, train_days, run)


def random_forest_candidate(name: str, train_days: int = 7) -> Candidate:
    def run(train: pd.DataFrame, frames: Sequence[pd.DataFrame]) -> list[np.ndarray]:
        model = Pipeline(
            [
                ("scale", StandardScaler()),
                ("rf", RandomForestClassifier(n_estimators=100, max_depth=20, n_jobs=2, random_state=0)),
            ]
        )
        model.fit(as_matrix(train), train["tx_fraud"].to_numpy())
        return [np.asarray(model.predict_proba(as_matrix(frame))[:, 1]) for frame in frames]

    return Candidate(name, train_days, run)


def book_settings() -> list[Candidate]:
    """The handbook's best settings, run the book's way (7 training days, standardised)."""
    return [
        xgboost_candidate(
            "book xgboost (50 trees, depth 3, lr 0.3)",
            {
                "n_estimators": 50,
                "max_depth": 3,
                "learning_rate": 0.3,
                "subsample": 1.0,
                "colsample_bytree": 1.0,
                "tree_method": "exact",
                "standardise": True,
                "derived_inputs": False,
                "feature_service": "fraud_v1",
                "recent_days": 0,
                "hidden_compromise_rate": 0,
            },
            7,
        ),
        random_forest_candidate("book random forest (100 trees, depth 20)"),
    ]


def product_default() -> Candidate:
    return xgboost_candidate("vigil default (xgboost, all history)", {}, None)


def tuning_candidates() -> list[Candidate]:
    return [
        product_default(),
        xgboost_candidate(
            "xgboost 300 trees, depth 6, lr 0.05", {"n_estimators": 300, "max_depth": 6, "learning_rate": 0.05}, None
        ),
        xgboost_candidate(
            "xgboost 200 trees, depth 4, lr 0.1", {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.1}, None
        ),
        xgboost_candidate("xgboost default, last 8 weeks", {}, 56),
        xgboost_candidate("xgboost default without the derived ratios", {"derived_inputs": False}, None),
        xgboost_candidate("xgboost default on fraud_v2", {"feature_service": "fraud_v2"}, None),
        xgboost_candidate("xgboost default on fraud_v1", {"feature_service": "fraud_v1"}, None),
        xgboost_candidate("xgboost default with the recent-week companion at 0.2", {"recent_days": 7}, None),
        xgboost_candidate("xgboost default without the hidden-compromise floor", {"hidden_compromise_rate": 0}, None),
        xgboost_candidate(
            "xgboost default with the recent-week companion at 0.5", {"recent_days": 7, "recent_weight": 0.5}, None
        ),
    ]


WindowScores = Callable[[str, pd.DataFrame, dict[str, np.ndarray]], None]  # (test start, test set, scores)


def run_windows(
    data: pd.DataFrame,
    test_starts: Sequence[str],
    candidates: Sequence[Candidate],
    log: Callable[[str], None] = print,
    on_window: WindowScores | None = None,
    budget: float | None = None,
) -> pd.DataFrame:
    """Metrics of every candidate on every 7-day test window (after a 7-day delay);
    `on_window` also gets each window's test set and every candidate's scores.

    With a review `budget` (cards a day), each candidate also gets a decision policy,
    chosen as `vigil train` chooses one (`vigil.lifecycle.policy`) on the week before the
    test window (the delay week: never trained on; the review threshold needs none of its
    labels, the block threshold does), and what that policy does on the test window is
    added (`policy.*` columns), beside CP at the same budget in cards a day."""
    first_day = pd.to_datetime(data["tx_datetime"]).dt.normalize().min()
    rows = []
    for start in test_starts:
        split = Split.book(start)
        test = book_week_test_set(data, split)
        if test.empty:
            raise ValueError(f"no labelled transactions in the test window starting {split.test_start.date()}")
        frames = [test]
        if budget is not None:
            frames.append(book_week_test_set(data, Split.book(split.test_start - pd.Timedelta(days=7))))
        scores: dict[str, np.ndarray] = {}
        for candidate in candidates:
            train_start = (
                split.train_end - pd.Timedelta(days=candidate.train_days - 1) if candidate.train_days else first_day
            )
            train = in_days(data, train_start, split.train_end)
            began = time.perf_counter()
            scored = candidate.fit_score(train, frames)
            scores[candidate.name] = scored[0]
            metrics: Metrics = evaluate(test, scores[candidate.name])
            row: dict[str, Any] = {
                "test_start": str(split.test_start.date()),
                "model": candidate.name,
                "train_start": str(pd.Timestamp(train_start).date()),
                "train_end": str(split.train_end.date()),
                **metrics.as_dict(),
                "seconds": round(time.perf_counter() - began, 1),
            }
            if budget is not None:
                policy = choose_policy(frames[1], scored[1], budget=budget)
                row["policy.review_threshold"] = policy.review_threshold
                row["policy.block_threshold"] = policy.block_threshold
                row.update({f"policy.{k}": v for k, v in outcome(test, scored[0], policy).as_dict().items()})
                row["policy.cp_at_budget_cards_per_day"] = card_precision_at_k(test, scored[0], int(budget)) * budget
            rows.append(row)
            log(
                f"{split.test_start.date()}  {candidate.name:<45} AUC {metrics.auc:.4f}  AP {metrics.ap:.4f}  "
                f"CP@100 {metrics.cp_at_100:.4f}"
            )
        if on_window is not None:
            on_window(str(split.test_start.date()), test, scores)
    return pd.DataFrame(rows)


def choose(results: pd.DataFrame) -> str:
    """The candidate with the best mean AP over the windows (CP@100 breaks ties)."""
    means = results.groupby("model")[["ap", "cp_at_100", "auc"]].mean()
    return str(means.sort_values(["ap", "cp_at_100"], ascending=False).index[0])


def difference_rows(
    start: str, test: pd.DataFrame, scores: dict[str, np.ndarray], reference: str, rounds: int
) -> list[dict[str, Any]]:
    """`reference` minus every other candidate on one window, with 95 % bootstrap intervals."""
    others = {name: s for name, s in scores.items() if name != reference}
    return [
        {
            "test_start": start,
            "model": reference,
            "against": other,
            "metric": d.metric,
            "difference": d.value,
            "low": d.low,
            "high": d.high,
            "settled": d.settled,
        }
        for other, differences in paired_differences(test, scores[reference], others, rounds=rounds).items()
        for d in differences
    ]
