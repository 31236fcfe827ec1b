"""The offline store at scale: the event log partitioned by day and written by several flow
processes, the incremental backfill (equal to a full recompute; a late label recomputes
exactly the days it affects), the log on S3-compatible storage (moto's server), and the
Spark engine equal to the local one. Real runs: no mock of Vigil's own code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.sources import FileReplaySource
from vigil.features import spec
from vigil.features.backfill import compute_features
from vigil.ingest import run_ingest
from vigil.offline.backfill import backfill_days, day_range, read_features, shift
from vigil.offline.eventlog import EventLogWriter, list_parts, read_log
from vigil.service_process import free_port
from vigil.settings import Settings

pytestmark = pytest.mark.integration


def ingest(settings: Settings, frame: pd.DataFrame, tmp: Path, workers: int = 1) -> None:
    path = tmp / f"w-{uuid.uuid4().hex[:6]}.parquet"
    frame.to_parquet(path)
    run_ingest(settings, lambda n: FileReplaySource(path, shards=n), workers, show_progress=False)


def assert_equal_features(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    ours = ours.set_index("transaction_id").sort_index()
    reference = reference.set_index("transaction_id").loc[ours.index]
    assert len(ours) == len(reference) > 0
    for name in spec.ALL_FEATURES:
        np.testing.assert_allclose(ours[name].to_numpy(np.float64), reference[name].to_numpy(np.float64), atol=1e-9)


def test_two_flow_processes_write_day_partitions_without_clashing(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    frame = small_world.iloc[:20_000]
    ingest(settings, frame, tmp_path, workers=2)
    parts = list_parts(settings.event_log, "transactions")
    days = sorted({p.day for p in parts})
    assert days == sorted(frame["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    writers = {Path(p.path).name.split("-w")[0] + "-w" + Path(p.path).name.split("-w")[1][0] for p in parts}
    assert len(writers) == 2  # each process wrote its own parts
    assert sorted(read_log(settings.event_log, "transactions")["transaction_id"]) == sorted(frame["transaction_id"])
    assert sorted(read_log(settings.event_log, "labels")["transaction_id"]) == sorted(frame["transaction_id"])


def test_incremental_backfill_equals_a_full_recompute_and_a_late_label_recomputes_its_days(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    ingest(settings, small_world, tmp_path)
    logged = sorted(small_world["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    first = backfill_days(settings.event_log, settings.offline_dir)
    assert first.computed == logged and first.rows == len(small_world)
    assert_equal_features(read_features(settings.offline_dir, logged[0], logged[-1]), compute_features(small_world))
    again = backfill_days(settings.event_log, settings.offline_dir)
    assert again.computed == [] and again.skipped == logged

    # A chargeback arrives late for a genuine transaction of day X: only the days whose
    # terminal windows hold day X, [X + 7, X + 37], are computed again.
    genuine = small_world[(small_world["tx_fraud"] == 0) & (small_world["tx_datetime"].dt.day == 10)].iloc[0]
    day = str(genuine["tx_datetime"].date())
    late = pd.DataFrame(
        {
            "transaction_id": [int(genuine["transaction_id"])],
            "ts": [int(pd.Timestamp(genuine["tx_datetime"]).timestamp())],
            "terminal_id": [int(genuine["terminal_id"])],
            "tx_fraud": [1],
        }
    )
    EventLogWriter(settings.event_log).write("labels", late)
    third = backfill_days(settings.event_log, settings.offline_dir)
    assert third.computed == [d for d in day_range(shift(day, 7), shift(day, 37)) if d in logged]
    relabelled = small_world.copy()
    relabelled.loc[relabelled["transaction_id"] == genuine["transaction_id"], "tx_fraud"] = 1
    assert_equal_features(read_features(settings.offline_dir, logged[0], logged[-1]), compute_features(relabelled))

    # Asked for some days, it computes those only.
    shutil.rmtree(settings.offline_dir / "features")
    some = backfill_days(settings.event_log, settings.offline_dir, logged[20], logged[26])
    assert some.computed == logged[20:27]


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


def test_the_event_log_on_s3_compatible_storage(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, moto_s3: str
) -> None:
    on_s3 = Settings(**{**settings.model_dump(), "offline_url": moto_s3})
    frame = small_world.iloc[:15_000]
    ingest(on_s3, frame, tmp_path, workers=2)
    parts = list_parts(moto_s3, "transactions")
    assert parts and all(p.path.startswith("vigil-offline/events/transactions/date=") for p in parts)
    assert sorted(read_log(moto_s3, "transactions")["transaction_id"]) == sorted(frame["transaction_id"])
    report = backfill_days(moto_s3, on_s3.offline_dir)
    logged = sorted(frame["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    assert report.computed == logged
    assert_equal_features(read_features(on_s3.offline_dir, logged[0], logged[-1]), compute_features(frame))


def test_the_spark_engine_equals_the_local_one(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path, handbook_or_world: pd.DataFrame
) -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the Spark engine needs Java 17")
    from vigil.offline.spark_engine import session

    frame = handbook_or_world
    ingest(settings, frame, tmp_path, workers=2)
    days = sorted(frame["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    window = days[-21:]  # three weeks, each with its full look-back in the log
    local_dir, spark_dir = tmp_path / "local", tmp_path / "spark"
    local = backfill_days(settings.event_log, local_dir, window[0], window[-1])
    spark = backfill_days(settings.event_log, spark_dir, window[0], window[-1], engine="spark", spark_master="local[2]")
    assert local.computed == spark.computed == window and local.rows == spark.rows
    assert_equal_features(
        read_features(spark_dir, window[0], window[-1]), read_features(local_dir, window[0], window[-1])
    )
    session(None).stop()


@pytest.fixture
def handbook_or_world(small_world: pd.DataFrame) -> pd.DataFrame:
    """Three weeks of the handbook (with their look-back) when ../shared has it, else the small world."""
    from tests.conftest import HANDBOOK

    path = HANDBOOK / "transactions.parquet"
    if not path.exists():
        return small_world
    frame = pd.read_parquet(path)
    return frame[(frame["tx_datetime"] >= "2018-06-01") & (frame["tx_datetime"] < "2018-08-01")].reset_index(drop=True)


def test_a_training_set_through_feasts_spark_offline_store_equals_the_file_store(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("the Spark engine needs Java 17")
    from vigil.offline import training_set
    from vigil.online.feast_store import apply_repo

    ingest(settings, small_world, tmp_path)
    store = apply_repo(settings)
    days = sorted(small_world["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    local = training_set(store, settings, days[-14], days[-1])
    shutil.rmtree(settings.offline_dir / "features")  # the Spark engine computes them again
    spark = training_set(store, settings, days[-14], days[-1], engine="spark", spark_master="local[2]")
    assert len(spark) == len(local) > 0
    spark = spark.set_index("transaction_id").loc[local["transaction_id"]]
    for name in spec.SERVED_INPUTS:
        np.testing.assert_allclose(spark[name].to_numpy(np.float64), local[name].to_numpy(np.float64), atol=1e-9)
    assert (spark["tx_fraud"].to_numpy() == local["tx_fraud"].to_numpy()).all()
    from vigil.offline.spark_engine import session

    session(None).stop()
