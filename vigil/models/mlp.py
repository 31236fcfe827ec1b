"""A feed-forward network in PyTorch; inputs standardised inside the module, CUDA when allowed."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from vigil.models.base import FraudModel, Progress, feature_set_of_width, requirements


class FraudNet(nn.Module):
    """Standardise -> hidden layers with ReLU and dropout -> one logit."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = len(mean)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*layers)

    mean: torch.Tensor
    std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std).squeeze(-1)


class MLPModel(FraudModel):
    kind: ClassVar[str] = "mlp"
    mlflow_flavor: ClassVar[str] = "pytorch"

    def __init__(self, params: dict[str, Any] | None = None, device: str = "cpu") -> None:
        super().__init__(params, device)
        self.net: FraudNet | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {
            "hidden": (64, 32),
            "dropout": 0.1,
            "epochs": 8,
            "batch_size": 512,
            "learning_rate": 1e-3,
            "seed": 0,
            "feature_service": "fraud_v1",
        }

    @property
    def progress_units(self) -> int:
        return int(self.params["epochs"])

    def fit(self, frame: pd.DataFrame, labels: np.ndarray, progress: Progress | None = None) -> MLPModel:
        generator = torch.Generator().manual_seed(int(self.params["seed"]))
        torch.manual_seed(int(self.params["seed"]))
        x = self.matrix(frame)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        self.net = FraudNet(mean, std, tuple(self.params["hidden"]), float(self.params["dropout"])).to(self.device)
        optimiser = torch.optim.Adam(self.net.parameters(), lr=float(self.params["learning_rate"]))
        loss_fn = nn.BCEWithLogitsLoss()
        xs = torch.as_tensor(x, device=self.device)
        ys = torch.as_tensor(np.asarray(labels, dtype=np.float32), device=self.device)
        batch = int(self.params["batch_size"])
        self.net.train()
        for _ in range(int(self.params["epochs"])):
            order = torch.randperm(xs.shape[0], generator=generator).to(self.device)
            for start in range(0, xs.shape[0], batch):
                idx = order[start : start + batch]
                optimiser.zero_grad()
                loss = loss_fn(self.net(xs[idx]), ys[idx])
                loss.backward()
                optimiser.step()
            if progress:
                progress(1)
        self.net.eval()
        if self.params.get("inputs"):  # a declared service's: the model carries their names
            self.net.__dict__["vigil_inputs"] = (list(self.inputs), self.service_name)
        return self

    def predict_proba(self, frame: pd.DataFrame | np.ndarray) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("model is not trained or loaded")
        with torch.inference_mode():
            logits = self.net(torch.as_tensor(self.matrix(frame), device=self.device))
            return torch.sigmoid(logits).double().cpu().numpy()

    def setup(self, device: str = "cpu", threads: int = 1) -> None:
        if self.net is None:
            raise RuntimeError("model is not trained or loaded")
        torch.set_num_threads(threads)
        self.net = self.net.to(device).eval()
        super().setup(device, threads)

    def log_model(self, name: str, input_example: pd.DataFrame, signature: Any) -> Any:

        assert self.net is not None
        from mlflow.models import Model

        from vigil.models import pyfunc_flavor

        # Native pytorch flavour (pickle keeps the module's class); pyfunc through Vigil's
        # loader: named inputs in, probabilities out (see pyfunc_flavor).
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=pyfunc_flavor,
            flavor_name="mlflow.pytorch",
            native="pytorch",
            pytorch_model=self.net.cpu(),
            input_example=input_example,
            signature=signature,
            serialization_format="pickle",
            pip_requirements=requirements("mlflow", "torch", "cloudpickle", "numpy", "pandas"),
        )

    @classmethod
    def load_model(cls, uri: str) -> MLPModel:
        import mlflow.pytorch

        model = cls()
        model.net = mlflow.pytorch.load_model(uri, map_location="cpu").eval()
        mean = getattr(model.net, "mean", None)  # a FraudNet knows its width; another module: fraud_v1
        declared = getattr(model.net, "vigil_inputs", None)
        if declared:
            model.params["inputs"], model.params["feature_service"] = declared
        elif mean is not None:
            model.params["feature_service"] = feature_set_of_width(int(mean.shape[0])).service
        return model
