"""The MLflow flavour module behind Vigil's MLP and baseline models: their native flavour
(`pytorch`, `sklearn`) plus a `python_function` loader that scores like `vigil serve`.

MLflow's stock pyfunc of a PyTorch model takes a float32 tensor and returns the network's
logits; a scikit-learn model's returns classes. `Model.log(flavor=this module, native=...)`
writes the same native flavour (`load_native` and `mlflow.<flavour>.load_model` are
unchanged) and points `python_function` at `_load_pyfunc` below: `mlflow.pyfunc.load_model`
and `mlflow models serve --env-manager local` (where vigil is installed) take the model's
named inputs (a frame; a matrix in their order) and return fraud probabilities. XGBoost's
counterpart is `vigil.models.xgb_flavor`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def save_model(path: str, mlflow_model: Any = None, native: str = "pytorch", **kwargs: Any) -> None:
    from mlflow.models import Model

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    importlib.import_module(f"mlflow.{native}").save_model(path=path, mlflow_model=mlflow_model, **kwargs)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(os.path.join(path, "MLmodel"))


class VigilPyfunc:
    """What `mlflow.pyfunc.load_model` returns: fraud probabilities of the named inputs."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        result: np.ndarray = self.model.predict_proba(data if isinstance(data, pd.DataFrame) else np.asarray(data))
        return result


def _load_pyfunc(path: str, model_config: Any = None) -> VigilPyfunc:
    """`path` is the flavour's data (a file or folder) inside the model's folder."""
    from vigil.models.loading import load_native

    root = Path(path)
    while not (root / "MLmodel").exists() and root != root.parent:
        root = root.parent
    model = load_native(str(root))
    model.setup("cpu")
    return VigilPyfunc(model)
