"""Fault tests: alias moves (good and broken versions), a model slower than the budget, Redis killed."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from bytewax.testing import run_main

from tests.integration.serving_helpers import (
    HANDBOOK_REPO,
    SlowNet,
    ingest_and_train,
    running_server,
    server_env,
    train_on_log,
    write_broken_model,
)
from vigil.declared import load_declared
from vigil.lifecycle.tracking import CHAMPION, FALLBACK_ARTIFACT, REGISTERED_MODEL, configure
from vigil.online.connection import connect
from vigil.service_process import transaction_body
from vigil.settings import Settings

pytestmark = pytest.mark.integration


def wait_for(check, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def world(settings: Settings, small_world: pd.DataFrame, tmp_path: Path) -> tuple[Settings, pd.DataFrame]:
    frame = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=28)]
    settings = settings.model_copy(update={"feature_repo": HANDBOOK_REPO})
    ingest_and_train(settings, frame, "baseline")
    return settings, frame


def register_raw(settings: Settings, model_dir: Path, fallback_from_version: str = "1") -> str:
    """Registers an arbitrary model directory as a new version and moves champion to it."""
    from mlflow.tracking import MlflowClient

    import mlflow

    experiment = configure(settings)
    client = MlflowClient()
    fallback_run = client.get_model_version(REGISTERED_MODEL, fallback_from_version).run_id
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(model_dir), "model")
        fallback = mlflow.artifacts.download_artifacts(f"runs:/{fallback_run}/{FALLBACK_ARTIFACT}")
        mlflow.log_artifacts(fallback, FALLBACK_ARTIFACT)
    version = client.create_model_version(REGISTERED_MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, str(version.version))
    return str(version.version)


def test_alias_moves_are_picked_up_and_broken_versions_are_not(
    world: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    settings, frame = world
    body = transaction_body(frame.iloc[-1])
    with running_server(server_env(settings)) as base:
        assert httpx.post(f"{base}/v1/score", json=body).json()["model"]["version"] == "1"
        # A good new version becomes champion: served without a restart, no failed request meanwhile.
        train_on_log(settings, "xgboost", n_estimators=30)
        # Version 2 is the challenger now: scored in shadow, off the response path, both scores logged.
        shadow = connect(settings.redis_url)

        def shadowed() -> bool:
            httpx.post(f"{base}/v1/score", json=body)
            entries = shadow.xrevrange(settings.shadow_stream, count=1)
            return bool(entries) and entries[0][1][b"challenger_version"] == b"2"

        assert wait_for(shadowed)
        configure(settings)
        MlflowClient().set_registered_model_alias(REGISTERED_MODEL, CHAMPION, "2")
        statuses = []

        def swapped() -> bool:
            answer = httpx.post(f"{base}/v1/score", json=body)
            statuses.append(answer.status_code)
            return answer.json()["model"]["version"] == "2"

        assert wait_for(swapped)
        assert set(statuses) == {200}
        # A broken version is promoted: the old one keeps serving, the failure is counted.
        broken = register_raw(settings, write_broken_model(tmp_path / "broken"), fallback_from_version="1")
        assert wait_for(lambda: "vigil_model_reload_failures_total 1.0" in httpx.get(f"{base}/metrics").text)
        answer = httpx.post(f"{base}/v1/score", json=body)
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "2" and broken == "3"
        time.sleep(2.0)  # four polls of the alias: the broken version is not tried on each
        assert "vigil_model_reload_failures_total 1.0" in httpx.get(f"{base}/metrics").text
    # A service started while the champion does not load: up, not ready, 503s, one clear log line.
    log = tmp_path / "broken-start.log"
    with running_server(server_env(settings), stderr_to=log) as base:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "no_model"
        refused = httpx.post(f"{base}/v1/score", json=body)
        assert refused.status_code == 503 and "version 3 (champion) could not be loaded" in refused.json()["detail"]
    said = log.read_text()
    assert "version 3 (champion) could not be loaded" in said and "Traceback" not in said


def test_a_model_slower_than_the_budget_answers_from_the_fallback(
    world: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    import mlflow.pytorch

    settings, frame = world
    model_dir = tmp_path / "slow"
    mlflow.pytorch.save_model(SlowNet(0.5), str(model_dir), serialization_format="pickle")
    register_raw(settings, model_dir)
    with running_server(server_env(settings, VIGIL_SCORE_BUDGET_MS="40")) as base:
        answer = httpx.post(f"{base}/v1/score", json=transaction_body(frame.iloc[-1]))
        body = answer.json()
        assert answer.status_code == 200 and body["fallback"] is True and body["fallback_reason"] == "timeout"
        # The model sleeps 0.5 s; the answer did not wait for it (no timing assertion: CI load varies).
        assert 'vigil_fallbacks_total{reason="timeout"}' in httpx.get(f"{base}/metrics").text


def test_in_stream_scoring_flow(world: tuple[Settings, pd.DataFrame]) -> None:
    """The Bytewax scoring flow: the service's scorer, decisions to a stream, entries
    acknowledged after, a bad entry a dead letter."""
    import json

    from flows.declared_scoring import build_flow as build_scoring_flow
    from flows.sources import RedisStreamSource
    from vigil.declared.events import record_fields
    from vigil.stream_out import write_stream

    settings, frame = world
    rows = frame.tail(300)
    stream = settings.events_stream
    write_stream(rows, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}", with_labels=False)
    client = connect(settings.redis_url)
    client.xadd(stream, {"transaction_id": "x"})
    source = RedisStreamSource(settings.redis_url, stream, group="scoring", idle_timeout=1.0)
    source.fields = record_fields(load_declared(settings.feature_repo))
    run_main(build_scoring_flow(source, None, settings))
    decisions = [json.loads(fields[b"json"]) for _, fields in client.xrange(settings.stream("decisions"))]
    assert [d["transaction_id"] for d in decisions] == rows["transaction_id"].tolist()
    assert all(0 <= d["score"] <= 1 and d["fallback"] is False and d["model"]["version"] == "1" for d in decisions)
    assert client.xpending(stream, "scoring")["pending"] == 0
    assert client.xlen(settings.deadletter_stream) == 1
