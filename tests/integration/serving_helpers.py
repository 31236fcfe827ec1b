"""Helpers for the scoring-service tests: a served world, a real `vigil serve` process."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch
from torch import nn

from vigil.service_process import free_port, service_env
from vigil.settings import PROJECT_ROOT, Settings


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """`vigil serve`'s environment for `settings`, polling aliases fast, never starting a Redis."""
    return service_env(settings, **{"VIGIL_ALIAS_POLL_SECONDS": "0.5", "VIGIL_START_LOCAL_REDIS": "false", **extra})


@contextmanager
def running_server(env: dict[str, str], workers: int = 1, timeout: float = 90) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"vigil serve exited: {process.stderr.read() if process.stderr else ''}")
            try:
                if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("vigil serve did not start in time")
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def request_body(row: pd.Series) -> dict[str, object]:
    return {
        "transaction_id": int(row["transaction_id"]),
        "customer_id": int(row["customer_id"]),
        "terminal_id": int(row["terminal_id"]),
        "tx_amount": float(row["tx_amount"]),
        "tx_datetime": pd.Timestamp(row["tx_datetime"]).isoformat(),
    }


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
