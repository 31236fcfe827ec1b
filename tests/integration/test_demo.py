"""`make demo` runs end to end (what the contracts page promises), on its own namespace."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.online.store import delete_namespace
from vigil.settings import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path: Path, redis_url: str) -> None:
    env = {
        **os.environ,
        "VIGIL_DATA_DIR": str(tmp_path / "data"),
        "VIGIL_REPORTS_DIR": str(tmp_path / "reports"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
        "VIGIL_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        "REDIS_URL": redis_url,
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "vigil.demo"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert (tmp_path / "reports" / "demo" / "index.html").exists()
        summary = result.stdout[result.stdout.index("=== Vigil demo summary ===") :]
        for line in (
            "ingest:",
            "features: served == backfill",
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
