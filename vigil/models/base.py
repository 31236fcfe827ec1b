"""The one interface every fraud model implements (fallbacks included)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vigil.features import spec

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


def as_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The 15 model inputs, in their fixed order, as float32 (what every model sees)."""
    missing = [c for c in spec.MODEL_INPUTS if c not in frame.columns]
    if missing:
        raise KeyError(f"missing model inputs: {', '.join(missing)}")
    return frame[list(spec.MODEL_INPUTS)].to_numpy(dtype=np.float32)


class FraudModel(ABC):
    """fit on a training frame; predict_proba on a batch; saved and loaded as a native MLflow model."""

    kind: ClassVar[str]
    mlflow_flavor: ClassVar[str]

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.params = {**self.default_params(), **(params or {})}
        self.device = device

    @classmethod
    @abstractmethod
    def default_params(cls) -> dict[str, Any]: ...

    @abstractmethod
    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> FraudModel:
        """Trains on `frame` (it must hold spec.MODEL_INPUTS) and 0/1 `labels`."""

    @abstractmethod
    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Probability of fraud in [0, 1] for each row."""

    @property
    def progress_units(self) -> int:
        """How many progress units `fit` reports (boosting rounds, epochs, 1)."""
        return 1

    def setup(self, device: str = "cpu", threads: int = 1) -> None:
        """Prepares for serving: device, thread count, and a warm-up prediction."""
        self.device = device
        self.predict_proba(np.zeros((1, len(spec.MODEL_INPUTS)), dtype=np.float32))

    def feature_importance(self) -> dict[str, float] | None:
        return None

    @abstractmethod
    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:
        """Logs the native MLflow model in the active run; returns MLflow's ModelInfo."""

    @classmethod
    @abstractmethod
    def load_model(cls, uri: str) -> FraudModel:
        """Loads what `log_model` saved (any models:/ or runs:/ URI)."""

    @staticmethod
    def matrix(frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        return frame if isinstance(frame, np.ndarray) else as_matrix(frame)
