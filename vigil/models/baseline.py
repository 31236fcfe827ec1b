"""A lightweight baseline: standardised logistic regression on the same inputs.

Cheap to train and to evaluate, and robust; the scoring service falls back to it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vigil.models.base import FraudModel, Progress, feature_set_of_width, requirements


class BaselineModel(FraudModel):
    kind: ClassVar[str] = "baseline"
    mlflow_flavor: ClassVar[str] = "sklearn"

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self.pipeline: Pipeline | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        # The fallback: fraud_v1 only needs the request itself and the 14 handbook features.
        return {"C": 1.0, "max_iter": 1000, "feature_service": "fraud_v1"}

    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> BaselineModel:
        self.pipeline = Pipeline(
            [
                ("scale", StandardScaler()),
                ("model", LogisticRegression(C=float(self.params["C"]), max_iter=int(self.params["max_iter"]))),
            ]
        )
        self.pipeline.fit(self.matrix(frame), np.asarray(labels))
        if self.params.get("inputs"):  # a declared service's: the model carries their names
            self.pipeline.vigil_inputs = (list(self.inputs), self.service_name)
        if progress:
            progress(1)
        return self

    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.pipeline is None:
            raise RuntimeError("model is not trained or loaded")
        return np.asarray(self.pipeline.predict_proba(self.matrix(frame))[:, 1], dtype=np.float64)

    def feature_importance(self) -> dict[str, float] | None:
        if self.pipeline is None:
            return None
        weights = np.abs(self.pipeline.named_steps["model"].coef_[0])
        return dict(zip(self.inputs, map(float, weights), strict=True))

    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:
        from mlflow.models import Model

        from vigil.models import pyfunc_flavor

        # Native sklearn flavour; pyfunc through Vigil's loader: named inputs in, probabilities
        # out (sklearn's own pyfunc would return classes; see pyfunc_flavor).
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=pyfunc_flavor,
            flavor_name="mlflow.sklearn",
            native="sklearn",
            sk_model=self.pipeline,
            input_example=input_example,
            signature=signature,
            pip_requirements=requirements("mlflow", "scikit-learn", "cloudpickle", "numpy", "pandas"),
        )

    @classmethod
    def load_model(cls, uri: str) -> BaselineModel:
        import mlflow.sklearn

        model = cls()
        model.pipeline = mlflow.sklearn.load_model(uri)
        declared = getattr(model.pipeline, "vigil_inputs", None)
        if declared:
            model.params["inputs"], model.params["feature_service"] = declared
        else:
            model.params["feature_service"] = feature_set_of_width(int(model.pipeline.n_features_in_)).service
        return model
