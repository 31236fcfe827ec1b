"""Model kinds by name, and loading any logged model natively by its flavor."""

from __future__ import annotations

from vigil.models.base import FraudModel
from vigil.models.baseline import BaselineModel
from vigil.models.mlp import MLPModel
from vigil.models.xgb import XGBoostModel

MODEL_KINDS: dict[str, type[FraudModel]] = {
    XGBoostModel.kind: XGBoostModel,
    MLPModel.kind: MLPModel,
    BaselineModel.kind: BaselineModel,
}
_BY_FLAVOR = {cls.mlflow_flavor: cls for cls in MODEL_KINDS.values()}


def load_native(uri: str) -> FraudModel:
    """Loads a logged model (e.g. models:/fraud-detector@champion) with its native flavor."""
    from mlflow.models import get_model_info

    flavors = get_model_info(uri).flavors
    for flavor, cls in _BY_FLAVOR.items():
        if flavor in flavors:
            return cls.load_model(uri)
    raise ValueError(f"{uri}: no supported flavor among {sorted(flavors)}")
