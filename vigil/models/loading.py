"""Loading a logged model natively by its flavor, importing only that flavor's framework."""

from __future__ import annotations

import importlib

from vigil.models.base import FraudModel

# Each flavor's class by module path, imported when a model of that flavor is loaded: a
# scoring worker then imports only its champion's and fallback's frameworks (torch alone
# took 2-3 s of a worker's start-up). tests/integration/test_models.py holds this equal to
# `vigil.models.registry.MODEL_KINDS`; the order is the order flavors are tried in.
FLAVOR_CLASSES = {
    "xgboost": "vigil.models.xgb.XGBoostModel",
    "pytorch": "vigil.models.mlp.MLPModel",
    "sklearn": "vigil.models.baseline.BaselineModel",
}


def load_native(uri: str) -> FraudModel:
    """Loads a logged model (e.g. models:/fraud-detector@champion) with its native flavor."""
    from mlflow.models import get_model_info

    flavors = get_model_info(uri).flavors
    for flavor, path in FLAVOR_CLASSES.items():
        if flavor in flavors:
            module, name = path.rsplit(".", 1)
            model_class: type[FraudModel] = getattr(importlib.import_module(module), name)
            return model_class.load_model(uri)
    raise ValueError(f"{uri}: no supported flavor among {sorted(flavors)}")
