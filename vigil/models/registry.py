"""Model kinds by name (what `vigil train --model` offers)."""

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
