"""The offline event log, partitioned by day and written by several flow processes, on
S3-compatible storage (moto's server): what `vigil train` and `vigil monitor` read. Real runs:
no mock of Vigil's own code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.serving_helpers import server_env, vigil
from vigil.declared import load_declared
from vigil.declared.training import logged_events
from vigil.offline.eventlog import list_parts
from vigil.service_process import free_port
from vigil.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def moto_s3(tmp_path: Path) -> Iterator[str]:
    server = str(Path(sys.executable).parent / "moto_server")  # this environment's moto, not another on PATH
    if not Path(server).exists():
        pytest.skip("moto's server is not installed (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}  # fmt: skip
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    try:
        import pyarrow.fs as pafs

        deadline = time.monotonic() + 30
        while True:
            try:
                pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("vigil-offline")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield "s3://vigil-offline/events"
    finally:
        process.kill()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_two_flow_processes_write_the_event_log_to_s3_compatible_storage(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, moto_s3: str
) -> None:
    """`vigil ingest --workers 2` with VIGIL_OFFLINE_URL on S3: each process writes its own
    day partitions, and the log holds every event once, with its label."""
    frame = small_world.iloc[:15_000]
    path = tmp_path / "world.parquet"
    frame.to_parquet(path)
    env = server_env(settings, VIGIL_OFFLINE_URL=moto_s3)
    done = vigil("ingest", "--transactions", str(path), "--workers", "2", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    parts = list_parts(moto_s3, "events")
    assert parts and all(p.path.startswith("vigil-offline/events/events/date=") for p in parts)
    assert sorted({p.day for p in parts}) == sorted(frame["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    assert len({Path(p.path).name.split("-w")[1][0] for p in parts}) == 2  # each process wrote its own parts
    logged = logged_events(load_declared(settings.feature_repo), moto_s3)
    assert sorted(logged["transaction_id"]) == sorted(frame["transaction_id"])
    labels = frame.set_index("transaction_id")["tx_fraud"]
    assert (logged.set_index("transaction_id")["tx_fraud"] == labels.loc[logged["transaction_id"]]).all()
