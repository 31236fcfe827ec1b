"""Shared fixtures: a private Feast project and key prefix per test on the one Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis

from vigil.online.connection import connect
from vigil.online.store import delete_namespace
from vigil.redis_server import ensure_redis
from vigil.settings import PROJECT_ROOT, Settings
from vigil.simulate import SimulationConfig, simulate

HANDBOOK = PROJECT_ROOT.parent / "shared" / "data" / "handbook"
# The hand-written handbook (features coded in vigil/features/, the repo a façade over them):
# the baseline the benchmarks measure the declared default repo against, and what the tests
# marked `handwritten` run.
HANDWRITTEN_REPO = PROJECT_ROOT / "benchmarks" / "handwritten_repo"


@pytest.fixture(autouse=True)
def mlflow_environment() -> Iterator[None]:
    """MLflow exports the URIs a test points it at to the environment (for child processes):
    put them back after each test, so a later test's commands do not inherit another's store."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = Settings().redis_url
    ensure_redis(url, PROJECT_ROOT / ".redis")
    return url


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    """Settings on a project, key prefix, data folder and MLflow store of this test's own;
    its Redis keys are removed afterwards. The repo is feature_repo/ (the declared handbook),
    or the hand-written baseline for a test marked `handwritten`."""
    name = f"t{uuid.uuid4().hex[:10]}"
    handwritten = request.node.get_closest_marker("handwritten") is not None
    value = Settings(
        feature_repo=HANDWRITTEN_REPO if handwritten else PROJECT_ROOT / "feature_repo",
        redis_url=redis_url,
        feast_project=name,
        key_prefix=name,
        data_dir=tmp_path / "data",
        reports_dir=tmp_path / "reports",
        mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        mlflow_artifacts_dir=tmp_path / "artifacts",
    )
    yield value
    delete_namespace(redis_url, name, name)
    # The Kafka tests' settled offsets are keyed by consumer group and topic; their topics
    # are named after the test's prefix.
    client = connect(redis_url)
    try:
        stale = list(client.scan_iter(match=f"vigil:kafka-done:*:{name}-*", count=1_000))
        if stale:
            client.delete(*stale)
    finally:
        client.close()


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = connect(settings.redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def small_world() -> pd.DataFrame:
    """Six simulated weeks of a small world: every fraud pattern, fast to replay."""
    return simulate(SimulationConfig(customers=300, terminals=600, days=42, seed=7))


@pytest.fixture(scope="session")
def handbook() -> Path:
    if not (HANDBOOK / "transactions.parquet").exists():
        pytest.skip(f"handbook data not found at {HANDBOOK} (it ships with ../shared, not with a clone)")
    return HANDBOOK


# The longest files, started first, longest first (as `--durations` measures them): with the
# suite spread over workers (`make test`, which keeps this order with --no-loadscope-reorder:
# by default xdist starts the files with the most tests first, and these single-test files
# came last), the last file to start sets the wall time, so the long ones must not be left
# for the end.
LONGEST_FIRST = (
    "test_store_faults.py",
    "test_payments_example.py",
    "03_monitoring.ipynb",
    "test_quickstart.py",
    "test_declared_serving.py",
    "test_declared_examples.py",
    "test_api_hardening.py",
    "test_prediction_log.py",
    "test_serving_faults.py",
    "test_monitoring.py",
    "test_demo.py",
    "test_cli.py",
    "05_new_feature.ipynb",
    "test_declared_handbook_reference.py",
    "test_declared_flow.py",
    "test_training.py",
    "04_decisions.ipynb",
    "test_decisions.py",
    "test_book_parity.py",
    "02_train_and_register.ipynb",
    "test_declared_repo.py",
    "test_declared_spark.py",
    "test_serving.py",
    "test_feast_repo.py",
    "test_stream_sources.py",
    "test_offline_store.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
