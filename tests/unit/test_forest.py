"""The array forest answers exactly what XGBoost answers (it serves single rows)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from vigil.models.forest import Forest


@pytest.mark.parametrize("base_score", [0.5, 0.1])
def test_forest_equals_xgboost(base_score: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4_000, 15)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=len(x)) > 1).astype(int)
    x[rng.uniform(size=x.shape) < 0.02] = np.nan  # missing values follow the default direction
    params = {"objective": "binary:logistic", "max_depth": 5, "eta": 0.1, "base_score": base_score, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), 60)
    forest = Forest.from_booster(booster)
    expected = booster.inplace_predict(x[:500])
    np.testing.assert_allclose(forest.predict_proba(x[:500]), expected, atol=1e-6)
    single = np.concatenate([forest.predict_proba(x[i : i + 1]) for i in range(50)])
    np.testing.assert_allclose(single, expected[:50], atol=1e-6)
    clean = np.nan_to_num(x[:50])
    np.testing.assert_allclose(forest.predict_proba(clean), booster.inplace_predict(clean), atol=1e-6)


def test_other_objectives_are_refused() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1}, xgb.DMatrix(x, label=x[:, 0]), 3)
    with pytest.raises(ValueError, match="unsupported objective"):
        Forest.from_booster(booster)
