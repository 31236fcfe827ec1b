"""The one interface every fraud model implements (fallbacks included)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vigil.features import spec

FLOAT32_MAX = float(np.finfo(np.float32).max)


def model_matrix(features: np.ndarray) -> np.ndarray:
    """The float32 matrix models take: every value finite (out-of-range values clipped)."""
    return np.clip(np.nan_to_num(features, nan=0.0), -FLOAT32_MAX, FLOAT32_MAX).astype(np.float32)


def top_contributions(model: Any, matrix: np.ndarray, top: int = 5) -> list[dict[str, float]] | None:
    """Each row's `top` largest contributions to the score (by size), by input name; None
    for a model that cannot attribute its score."""
    contributions = getattr(model, "contributions", None)
    if contributions is None:
        return None
    values = contributions(matrix)[:, :-1]  # last column: the bias
    names = list(getattr(model, "input_names", model.inputs))
    out = []
    for row in values:
        order = np.argsort(-np.abs(row))[:top]
        out.append({names[j]: round(float(row[j]), 6) for j in order})
    return out


Progress = Callable[[int], None]  # called with how many units (rounds, epochs) just finished


def resolve_device(choice: str) -> str:
    """`cpu`, `cuda` or `auto` (CUDA when torch sees a GPU) -> the device to use."""
    if choice == "cpu":
        return "cpu"
    try:
        import torch

        available = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        available = False
    if choice == "cuda" and not available:
        raise RuntimeError("VIGIL_DEVICE=cuda but no CUDA device is visible; use cpu or auto")
    return "cuda" if available else "cpu"


def as_matrix(frame: pd.DataFrame, inputs: tuple[str, ...] = spec.MODEL_INPUTS) -> np.ndarray:
    """`inputs` (by default fraud_v1's 15), in their fixed order, as float32."""
    missing = [c for c in inputs if c not in frame.columns]
    if missing:
        raise KeyError(f"missing model inputs: {', '.join(missing)}")
    return frame[list(inputs)].to_numpy(dtype=np.float32)


def requirements(*packages: str) -> list[str]:
    """Pinned pip requirements for a logged model, given rather than inferred: MLflow's
    inference imports the model in a subprocess and warns about local version labels
    (torch's `+cpu`); a requirement must name an installable release."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in packages]


def take_inputs(data: pd.DataFrame | np.ndarray, inputs: tuple[str, ...]) -> np.ndarray:
    """A model's own inputs: columns of a frame by name, or the first len(inputs) columns of
    a matrix in spec.SERVED_INPUTS order (each feature set extends the one before it)."""
    if not isinstance(data, np.ndarray):
        return as_matrix(data, inputs)
    if data.ndim != 2 or data.shape[1] < len(inputs):
        raise ValueError(f"expected a matrix of at least {len(inputs)} columns ({inputs[-1]} last), got {data.shape}")
    return data[:, : len(inputs)]


def feature_set_of_width(width: int) -> spec.FeatureSet:
    """The feature set whose model inputs number `width` (how a loaded model tells its own)."""
    for features in spec.FEATURE_SETS.values():
        if len(features.model_inputs) == width:
            return features
    raise ValueError(f"no feature set has {width} model inputs")


class FraudModel(ABC):
    """fit on a training frame; predict_proba on a batch; saved and loaded as a native MLflow model."""

    kind: ClassVar[str]
    mlflow_flavor: ClassVar[str]

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        defaults = self.default_params()
        for name, value in (params or {}).items():
            _check_kind(name, value, defaults.get(name))
        self.params = {**defaults, **(params or {})}
        self.device = device
        if not self.params.get("inputs"):
            _ = self.feature_set  # an unknown feature service fails here, not at fit time

    @property
    def feature_set(self) -> spec.FeatureSet:
        """The feature service this model is trained on (params["feature_service"], fraud_v1 if unset)."""
        name = self.params.get("feature_service", spec.FRAUD_V1.service)
        if name not in spec.FEATURE_SETS:
            raise ValueError(f"unknown feature service {name!r}; choose from {', '.join(spec.FEATURE_SETS)}")
        return spec.FEATURE_SETS[name]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The model's inputs in order: a declared repo's feature service (params["inputs"],
        params["feature_service"] its name), else the handbook feature set's."""
        declared = self.params.get("inputs")
        return tuple(declared) if declared else self.feature_set.model_inputs

    @property
    def service_name(self) -> str:
        """The name of the feature service the model is trained on."""
        return str(self.params.get("feature_service") or spec.FRAUD_V1.service)

    @classmethod
    @abstractmethod
    def default_params(cls) -> dict[str, Any]: ...

    @abstractmethod
    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> FraudModel:
        """Trains on `frame` (it must hold the model's `inputs`) and 0/1 `labels`."""

    @abstractmethod
    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Probability of fraud in [0, 1] for each row (a frame, or a matrix as `take_inputs` reads it)."""

    @property
    def progress_units(self) -> int:
        """How many progress units `fit` reports (boosting rounds, epochs, 1)."""
        return 1

    def setup(self, device: str = "cpu", threads: int = 1) -> None:
        """Prepares for serving: device, thread count, and a warm-up prediction."""
        self.device = device
        self.predict_proba(np.zeros((1, len(self.inputs)), dtype=np.float32))

    def feature_importance(self) -> dict[str, float] | None:
        return None

    @abstractmethod
    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:
        """Logs the native MLflow model in the active run; returns MLflow's ModelInfo."""

    @classmethod
    @abstractmethod
    def load_model(cls, uri: str) -> FraudModel:
        """Loads what `log_model` saved (any models:/ or runs:/ URI)."""

    def matrix(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        return take_inputs(frame, self.inputs)


def _check_kind(name: str, value: Any, default: Any) -> None:
    """A parameter whose default is a number or a flag must be given as one (a JSON string
    such as "0.1" would otherwise fail deep inside training, without the parameter's name)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"parameter {name} must be true or false, got {value!r}")
    elif isinstance(default, int | float) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"parameter {name} must be a number, got {value!r}")
