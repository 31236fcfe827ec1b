"""Helpers for tests that run real `vigil` processes: the command line, `vigil serve`."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vigil.service_process import serve_process, service_env
from vigil.settings import Settings


def vigil(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs the `vigil` command line as a user would; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """`vigil serve`'s environment for `settings`, polling aliases fast, never starting a Redis."""
    return service_env(settings, **{"VIGIL_ALIAS_POLL_SECONDS": "0.5", "VIGIL_START_LOCAL_REDIS": "false", **extra})


def running_server(
    env: dict[str, str], workers: int = 1, timeout: float = 90, stderr_to: Path | None = None
) -> AbstractContextManager[str]:
    """A real `vigil serve`; alive is enough (some tests start it with the store away)."""
    return serve_process(env, workers=workers, ready_path="/healthz", timeout=timeout, stderr_to=stderr_to)


class SlowNet(nn.Module):
    """A model slower than any budget: an injected fault for the deadline test."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.linear = nn.Linear(15, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.linear(x).squeeze(-1)


def write_broken_model(folder: Path) -> Path:
    """An MLflow model directory whose weights are garbage (a version that cannot load)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(
        "flavors:\n  xgboost:\n    data: model.ubj\n    model_format: ubj\n"
        "    xgb_version: 3.2.0\n    code: null\n    model_class: xgboost.core.Booster\n"
    )
    (folder / "model.ubj").write_bytes(np.random.default_rng(0).bytes(64))
    return folder
