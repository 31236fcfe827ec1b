"""Helpers for tests that run real `vigil` processes: the command line, `vigil serve`."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from flows.declared import DeclaredReplaySource, build_flow, default_sinks, run_to_end
from flows.sinks import FlowStats
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import TrainingSet, default_split, logged_events, training_set, version_params
from vigil.lifecycle.training import train_and_register
from vigil.online.connection import connect
from vigil.service_process import serve_process, service_env
from vigil.settings import PROJECT_ROOT, Settings


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


# The handbook's features, declared with Feast's objects: the repo the service tests run.
HANDBOOK_REPO = PROJECT_ROOT / "feature_repo"


def ingest_and_train(
    settings: Settings,
    events: pd.DataFrame,
    kind: str = "xgboost",
    service: str | None = None,
    review_budget: float | None = None,
    **params: object,
) -> str:
    """What `vigil ingest` then `vigil train` leave on `settings`' repo: the events through the
    repo's flow (each label a week after its event) and a registered version of the model,
    trained on what the flow recorded (the first version is the champion). Its number."""
    ingest(settings, events)
    return train_on_log(settings, kind, service, review_budget, **params)


def ingest(settings: Settings, events: pd.DataFrame) -> FlowStats:
    """What `vigil ingest --transactions` leaves: the events through the repo's flow, each
    label a week after its event. What the flow's sinks counted."""
    declared = load_declared(settings.feature_repo)
    path = settings.data_dir / f"ingested-{uuid.uuid4().hex[:6]}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    events.to_parquet(path)
    sinks = default_sinks(settings, declared)
    run_to_end(build_flow(DeclaredReplaySource(path, declared, label_delay_days=7.0), sinks, settings, declared))
    path.unlink()
    return sinks.stats


def worst_from_backfill(settings: Settings, frame: pd.DataFrame) -> float:
    """The largest difference between what the store gives each event of `frame` (its fields)
    and the backfill of `frame`, over the default service's features; infinite when the store
    gives fewer events than `frame` holds."""
    declared = load_declared(settings.feature_repo)
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    ours = store.features(frame[list(declared.events.fields)]).set_index(declared.events.event_id)
    if len(ours) != len(frame):
        return float("inf")
    expected = compute_declared(declared, frame).set_index(declared.events.event_id).loc[ours.index]
    return float((ours - expected[ours.columns]).abs().max().max())


def logged_training_set(settings: Settings, service: str | None = None, every_feature: bool = False) -> TrainingSet:
    """The training set `vigil train` builds from what the repo's flow recorded."""
    declared = load_declared(settings.feature_repo)
    return training_set(declared, logged_events(declared, settings.event_log), service, every_feature)


def train_on_log(
    settings: Settings,
    kind: str = "xgboost",
    service: str | None = None,
    review_budget: float | None = None,
    **params: object,
) -> str:
    """`vigil train` on what the repo's flow recorded: a new registered version, its number
    (`review_budget`: reviews a day, for a world smaller than the handbook's)."""
    data = logged_training_set(settings, service)
    chosen = version_params(data.service, kind)
    chosen.update(params)
    budget = {} if review_budget is None else {"review_budget": review_budget}
    report = train_and_register(
        settings, data.frame, kind, params=chosen, split=default_split(data), show_progress=False, **budget
    )
    return str(report.version)
