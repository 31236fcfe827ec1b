"""`make demo` runs end to end (what the contracts page promises), on its own namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.online.store import delete_namespace
from vigil.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path: Path, redis_url: str) -> None:
    """With no MLFLOW_TRACKING_URI, as `make demo` runs: the demo keeps a registry of its own
    (mlflow/demo/), so the quick start's `vigil train` after it still registers version 1 in
    mlflow/mlflow.db, which the demo leaves as it was."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIGIL_MLFLOW_ARTIFACTS")},
        "VIGIL_DATA_DIR": str(tmp_path / "data"),
        "VIGIL_REPORTS_DIR": str(tmp_path / "reports"),
        "REDIS_URL": redis_url,
    }
    default = PROJECT_ROOT / "mlflow" / "mlflow.db"
    before = default.stat().st_mtime_ns if default.exists() else None
    own = PROJECT_ROOT / "mlflow" / "demo"
    existed = own.exists()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vigil.demo"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert (default.stat().st_mtime_ns if default.exists() else None) == before
        assert f"MLflow sqlite:///{own / 'mlflow.db'}" in result.stdout, result.stdout[-2000:]
        assert (tmp_path / "reports" / "demo" / "index.html").exists()
        summary = result.stdout[result.stdout.index("=== Vigil demo summary ===") :]
        for line in (
            "ingest:",
            "features: served == backfill",
            "Feast: get_online_features == backfill",
            "model: fraud-detector v1",
            "scoring:",
            "p99",
            "drift: window",
            "monitoring index:",
            "where:",
        ):
            assert line in summary, summary
    finally:
        delete_namespace(redis_url, "demo", "demo")
        if not existed:
            shutil.rmtree(own, ignore_errors=True)
