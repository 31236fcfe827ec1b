"""A declared repo's backfill on Spark (local mode) equals the local one: string keys,
delayed labels, distinct counts and the repo's own on-demand code, shipped to the workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.serving_helpers import server_env
from vigil.settings import PROJECT_ROOT, Settings

pytest.importorskip("pyspark")


def test_the_spark_engine_equals_the_local_one(settings: Settings, tmp_path: Path) -> None:
    events, local = tmp_path / "payments.parquet", tmp_path / "local.parquet"
    env = server_env(settings)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600)

    made = run(sys.executable, "examples/payments/simulate.py", "--out", str(events), "--cards", "300", "--days", "20")
    assert made.returncode == 0, made.stderr
    repo = ["repo", "compute", "--repo", "examples/payments", "--events", str(events)]
    done = run(sys.executable, "-m", "vigil.cli", *repo, "--out", str(local))
    assert done.returncode == 0, done.stderr
    spark = run(
        sys.executable, "-m", "vigil.cli", *repo, "--engine", "spark", "--spark-master", "local[2]",
        "--reference", str(local),
    )  # fmt: skip
    assert spark.returncode == 0, spark.stdout + spark.stderr[-3000:]
    assert "MATCH" in spark.stdout and "largest difference 0" in spark.stdout, spark.stdout
