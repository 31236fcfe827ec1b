"""Gradient-boosted trees (XGBoost), CUDA when the device allows."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xgboost as xgb

from vigil.features import spec
from vigil.models.base import FraudModel, Progress


class _ProgressCallback(xgb.callback.TrainingCallback):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.progress(1)
        return False


class XGBoostModel(FraudModel):
    kind: ClassVar[str] = "xgboost"
    mlflow_flavor: ClassVar[str] = "xgboost"

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self.booster: xgb.Booster | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # Chosen by `vigil evaluate --tune` on validation windows before July (see README).
        return {
            "n_estimators": 300,
            "max_depth": 6,
            "learning_rate": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 1.0,
            "tree_method": "hist",
            "base_score": 0.5,
            "seed": 0,
        }

    @property
    def progress_units(self) -> int:
        return int(self.params["n_estimators"])

    def _train_params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.params.items() if k != "n_estimators"}
        params.update(objective="binary:logistic", eval_metric="aucpr", device=self.device, nthread=2)
        return params

    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> XGBoostModel:
        data = xgb.DMatrix(self.matrix(frame), label=np.asarray(labels), feature_names=list(spec.MODEL_INPUTS))
        callbacks = [_ProgressCallback(progress)] if progress else []
        self.booster = xgb.train(
            self._train_params(), data, num_boost_round=int(self.params["n_estimators"]), callbacks=callbacks
        )
        return self

    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        data = xgb.DMatrix(self.matrix(frame), feature_names=list(spec.MODEL_INPUTS))
        return np.asarray(self.booster.predict(data), dtype=np.float64)

    def setup(self, device: str = "cpu", threads: int = 1) -> None:
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        # One thread for single rows: OpenMP fan-out costs more than it saves (p99 stalls).
        self.booster.set_param({"device": device, "nthread": threads})
        super().setup(device, threads)

    def feature_importance(self) -> dict[str, float] | None:
        if self.booster is None:
            return None
        gain = self.booster.get_score(importance_type="gain")
        return {name: float(gain.get(name, 0.0)) for name in spec.MODEL_INPUTS}  # type: ignore[arg-type]

    def contributions(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Per-feature SHAP contributions (last column: bias), cheap for trees."""
        if self.booster is None:
            raise RuntimeError("model is not trained or loaded")
        data = xgb.DMatrix(self.matrix(frame), feature_names=list(spec.MODEL_INPUTS))
        return np.asarray(self.booster.predict(data, pred_contribs=True))

    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:
        import mlflow.xgboost

        return mlflow.xgboost.log_model(
            self.booster, name=name, input_example=input_example, signature=signature, model_format="ubj"
        )

    @classmethod
    def load_model(cls, uri: str) -> XGBoostModel:
        import mlflow.xgboost

        model = cls()
        model.booster = mlflow.xgboost.load_model(uri)
        return model
