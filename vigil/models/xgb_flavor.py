"""The MLflow flavour module behind Vigil's XGBoost models: the native `xgboost` flavour
plus a `python_function` loader that applies the model's own input transform.

A Vigil booster expects the columns it was trained on: the four derived ratios after
the 15 inputs (the default), standardised inputs (the book's settings). MLflow's stock
pyfunc loader for XGBoost would hand it the 15 raw inputs: an error for the first, wrong
scores without a warning for the second. `Model.log(flavor=this module)` writes the same
native flavour (`mlflow.xgboost.load_model` still returns the Booster, with Vigil's
attributes) and points `python_function` at `_load_pyfunc` below, so
`mlflow.pyfunc.load_model` and `mlflow models serve --env-manager local` (in an
environment where vigil is installed) score the 15 raw inputs exactly like `vigil serve`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd


def save_model(xgb_model: Any, path: str, mlflow_model: Any = None, **kwargs: Any) -> None:
    import mlflow.xgboost
    from mlflow.models import Model

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    mlflow.xgboost.save_model(xgb_model, path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


class VigilXGBoostPyfunc:
    """What `mlflow.pyfunc.load_model` returns: fraud probabilities of raw model inputs."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model.booster

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        # A frame is read by column name; anything else as a matrix in SERVED_INPUTS order.
        result: np.ndarray = self.model.predict_proba(data if isinstance(data, pd.DataFrame) else np.asarray(data))
        return result


def _load_pyfunc(path: str) -> VigilXGBoostPyfunc:
    """`path` is the flavour's data file (the booster); the model directory holds it."""
    from vigil.models.xgb import XGBoostModel

    return VigilXGBoostPyfunc(XGBoostModel.load_model(os.path.dirname(path) if os.path.isfile(path) else path))
