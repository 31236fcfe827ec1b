"""Parity with the book: our pipeline on the default repo (the repo's flow -> the training set
from the event log -> model -> evaluation) gives the metrics a plain-pandas computation gets
from features_reference.parquet, to 3 decimals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from tests.integration.serving_helpers import ingest, logged_training_set
from vigil.declared.training import version_params
from vigil.lifecycle.evaluation import Split, book_test_set, evaluate, in_days
from vigil.models.xgb import XGBoostModel
from vigil.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.handbook]

# The book's 14 features, in its order (fraud_v1 serves the amount first, then these).
BOOK_FEATURES = [
    "tx_during_weekend", "tx_during_night",
    *(f"customer_id_{what}_{days}day_window" for days in (1, 7, 30) for what in ("nb_tx", "avg_amount")),
    *(f"terminal_id_{what}_{days}day_window" for days in (1, 7, 30) for what in ("nb_tx", "risk")),
]  # fmt: skip

BOOK_XGBOOST = {
    "n_estimators": 100,
    "max_depth": 6,
    "learning_rate": 0.3,
    "tree_method": "exact",
    "base_score": 0.5,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "min_child_weight": 1.0,
    "standardise": True,
    "hidden_compromise_rate": 0,  # no floor (fraud_v1 has no label age anyway)
}


def plain_pandas_metrics(handbook: Path) -> tuple[float, float, float]:
    """The book's protocol written out plainly on the reference features (no vigil code)."""
    tx = pd.read_parquet(handbook / "transactions.parquet")
    data = tx.merge(pd.read_parquet(handbook / "features_reference.parquet"), on="transaction_id")
    day = data["tx_datetime"].dt.normalize()
    train = data[(day >= "2018-07-03") & (day <= "2018-07-09")]
    inputs = ["tx_amount", *BOOK_FEATURES]
    scaler = StandardScaler().fit(train[inputs])
    model = xgb.XGBClassifier(
        n_estimators=100, max_depth=6, learning_rate=0.3, tree_method="exact", base_score=0.5, random_state=0, n_jobs=2
    )
    model.fit(scaler.transform(train[inputs]), train["tx_fraud"])
    frauds = data[(data["tx_fraud"] == 1) & (day >= "2018-07-03")]
    test_parts, detected, precisions = [], set(), []
    for d in pd.date_range("2018-07-17", "2018-07-23"):
        known = set(frauds.loc[frauds["tx_datetime"].dt.normalize() <= d - pd.Timedelta(days=8), "customer_id"])
        rows = data[(day == d) & ~data["customer_id"].isin(known)].copy()
        rows["score"] = model.predict_proba(scaler.transform(rows[inputs]))[:, 1]
        test_parts.append(rows)
        candidates = rows[~rows["customer_id"].isin(detected)]
        top = candidates.groupby("customer_id").agg(score=("score", "max"), fraud=("tx_fraud", "max"))
        top = top.sort_values("score", ascending=False, kind="stable").head(100)
        hits = set(top.index[top["fraud"] == 1])
        precisions.append(len(hits) / 100)
        detected |= hits
    test = pd.concat(test_parts)
    return (
        roc_auc_score(test["tx_fraud"], test["score"]),
        average_precision_score(test["tx_fraud"], test["score"]),
        float(np.mean(precisions)),
    )


def test_pipeline_matches_plain_pandas_on_the_book_split(settings: Settings, handbook: Path) -> None:
    tx = pd.read_parquet(handbook / "transactions.parquet")
    # Enough history before the training week for every window (30 days + the 7-day delay).
    part = tx[(tx["tx_datetime"] >= "2018-05-20") & (tx["tx_datetime"] < "2018-07-24")]
    assert ingest(settings, part).dead_letters == 0
    training = logged_training_set(settings, "fraud_v1")
    assert list(training.service.features) == ["tx_amount", *BOOK_FEATURES]
    data = training.frame
    split = Split.book("2018-07-17")
    train = in_days(data, split.train_start, split.train_end)
    model = XGBoostModel({**BOOK_XGBOOST, **version_params(training.service, "xgboost")})
    model.fit(train, train["tx_fraud"].to_numpy())
    test = book_test_set(data, split)
    ours = evaluate(test, model.predict_proba(test))
    auc, ap, cp = plain_pandas_metrics(handbook)
    assert round(ours.auc, 3) == round(auc, 3)
    assert round(ours.ap, 3) == round(ap, 3)
    assert round(ours.cp_at_100, 3) == round(cp, 3)
