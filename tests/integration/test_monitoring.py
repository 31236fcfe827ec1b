"""The prediction log's roll to Parquet and `vigil monitor` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest_and_train, server_env, vigil
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.lifecycle.tracking import REGISTERED_MODEL, configure
from vigil.models.loading import load_native
from vigil.monitoring.predictions import read_predictions, roll_predictions
from vigil.settings import Settings

# The default service's inputs, in order: what the service logs with each answer.
INPUTS = list(load_declared(HANDBOOK_REPO).service("fraud_v1").features)

pytestmark = pytest.mark.integration


def log_answers(
    client: redis.Redis, settings: Settings, rows: pd.DataFrame, version: str, scores: np.ndarray | None = None
) -> None:
    """Prediction-log entries as the scoring service writes them."""
    scores = np.full(len(rows), 0.01) if scores is None else scores
    with client.pipeline(transaction=False) as pipe:
        for row, score in zip(rows.itertuples(index=False), scores, strict=True):
            pipe.xadd(
                settings.prediction_stream,
                {
                    "transaction_id": int(row.transaction_id),
                    "ts": int(pd.Timestamp(row.tx_datetime).timestamp()),
                    "customer_id": int(row.customer_id),
                    "terminal_id": int(row.terminal_id),
                    "score": float(score),
                    "version": version,
                    "fallback": 0,
                    "reason": "",
                    "latency_ms": 1.5,
                    "features": json.dumps([float(getattr(row, n)) for n in INPUTS]),
                },
            )
        pipe.execute()


def model_inputs(world: pd.DataFrame) -> pd.DataFrame:
    features = compute_declared(load_declared(HANDBOOK_REPO), world, service="fraud_v1")
    return pd.concat(
        [
            world[["transaction_id", "tx_datetime", "customer_id", "terminal_id"]].reset_index(drop=True),
            features[INPUTS].reset_index(drop=True),
        ],
        axis=1,
    )


def test_rolling_copies_every_entry_once(
    settings: Settings, redis_client: redis.Redis, small_world: pd.DataFrame
) -> None:
    rows = model_inputs(small_world).head(500)
    log_answers(redis_client, settings, rows.head(300), "1")
    assert roll_predictions(settings, redis_client) == 300
    log_answers(redis_client, settings, rows.iloc[300:], "1")
    assert roll_predictions(settings, redis_client) == 200
    assert roll_predictions(settings, redis_client) == 0
    logged = read_predictions(settings)
    assert logged["transaction_id"].tolist() == rows["transaction_id"].tolist()
    assert np.allclose(logged[INPUTS].to_numpy(), rows[INPUTS].to_numpy())
    assert (logged["tx_datetime"] == rows["tx_datetime"].dt.floor("s")).all()


def test_monitor_without_traffic_says_what_to_do(settings: Settings) -> None:
    result = vigil("monitor", env=server_env(settings))
    assert result.returncode == 0, result.stderr
    assert "no scored traffic yet" in result.stdout


def test_monitor_reports_drift_and_a_dry_run_changes_nothing(
    settings: Settings, redis_client: redis.Redis, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    day = (small_world["tx_datetime"] - small_world["tx_datetime"].min().normalize()).dt.days
    settings = settings.model_copy(update={"feature_repo": HANDBOOK_REPO})
    ingest_and_train(settings, small_world[day < 35], "baseline")
    traffic = model_inputs(small_world)[(day >= 35).to_numpy()]
    traffic_day = (traffic["tx_datetime"] - traffic["tx_datetime"].min().normalize()).dt.days
    shifted = traffic.copy()
    late = traffic_day >= 4  # amounts triple from the fifth day on
    shifted.loc[late, "tx_amount"] *= 3
    for name in INPUTS:
        if name.startswith("customer_id_avg_amount"):
            shifted.loc[late, name] *= 3
    model = load_native(f"models:/{REGISTERED_MODEL}/1")
    log_answers(redis_client, settings, shifted, "1", model.predict_proba(shifted[INPUTS]))
    # One request dated years ahead (a client's clock): left out, the windows stay as they are.
    log_answers(redis_client, settings, shifted.tail(1).assign(tx_datetime=pd.Timestamp("2026-12-04")), "1")

    def everything_written() -> dict[str, bytes]:
        """The prediction log's files, the monitor's state and reports, the event log and features
        (Feast's own registry file aside: its bytes are Feast's business, its contents the same)."""
        files = [p for root in (settings.data_dir, settings.reports_dir) if root.exists() for p in root.rglob("*")]
        return {str(p): p.read_bytes() for p in files if p.is_file() and not p.name.endswith("-registry.db")}

    before = (everything_written(), redis_client.xlen(settings.prediction_stream))
    result = vigil("monitor", "--dry-run", "--min-rows", "100", env=server_env(settings))
    assert result.returncode == 0, result.stderr
    assert (everything_written(), redis_client.xlen(settings.prediction_stream)) == before  # changed nothing
    assert "1 answers dated more than a day past the bulk" in result.stdout, result.stdout
    assert "DRIFT" in result.stdout and "retraining (dry-run): would train" in result.stdout, result.stdout
    windows = [line for line in result.stdout.splitlines() if line.strip().startswith("window")]
    assert len(windows) == 7
    # This small world (300 cards) is noisy day to day, so its plain days may drift on their
    # own (the stable-week test runs on a larger world); the tripled days must drift more.
    assert all("DRIFT" in w and "[tx_amount" in w for w in windows[4:]), windows
    share = [float(w.split("drift share ")[1].split()[0]) for w in windows]
    assert min(share[4:]) > float(np.mean(share[:4])), windows
    assert "dry run: nothing written" in result.stdout
    real = vigil("monitor", "--min-rows", "100", "--retrain", "never", env=server_env(settings))
    assert real.returncode == 0, real.stderr
    assert [line for line in real.stdout.splitlines() if line.strip().startswith("window")] == windows
    assert (settings.reports_dir / "index.html").exists()
    assert "vigil_drift_alert 1.0" in (settings.reports_dir / "metrics.prom").read_text()
    from mlflow.tracking import MlflowClient

    configure(settings)
    assert len(MlflowClient().search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1  # nothing registered
