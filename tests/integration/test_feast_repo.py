"""The Feast repo applies, and our fast Redis writer/reader is Feast's own layout."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from bytewax.testing import run_main
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from flows.features import build_flow, default_sinks
from flows.sources import FileReplaySource
from vigil.features import spec
from vigil.features.history import EntityHistory
from vigil.features.online import max_differences, online_features
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo, feast_features
from vigil.online.layout import OnlineLayout, entity_key_bytes
from vigil.online.store import OnlineHistoryStore
from vigil.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.handwritten]


def test_entity_key_matches_feast() -> None:
    for value in (0, 7, 4999, 2**40 + 3):
        proto = EntityKey(join_keys=["customer_id"], entity_values=[Value(int64_val=value)])
        assert entity_key_bytes("customer_id", value, "p") == serialize_entity_key(proto, 3) + b"p"


def test_field_names_match_feast() -> None:
    from feast.infra.online_stores.helpers import _mmh3

    layout = OnlineLayout.for_project("p")
    for view in (layout.customer, layout.terminal):
        assert list(view.field_keys) == [_mmh3(f"{view.name}:{feature}") for feature in view.features]


def test_apply_registers_the_feature_service(settings: Settings) -> None:
    store = apply_repo(settings)
    service = store.get_feature_service(spec.FEATURE_SERVICE)
    names = [f.name for projection in service.feature_view_projections for f in projection.features]
    assert names == list(spec.FEATURE_NAMES)
    for features in (spec.FRAUD_V2, spec.FRAUD_V3):
        served = store.get_feature_service(features.service)
        assert [f.name for p in served.feature_view_projections for f in p.features] == list(features.features)
        training_service = store.get_feature_service(features.training_service)
        trained = [f.name for p in training_service.feature_view_projections for f in p.features]
        assert trained == list(features.model_inputs)
    assert {e.name for e in store.list_entities()} == {"customer", "terminal", "transaction"}
    training = store.get_feature_service("fraud_v1_training")
    source = store.get_feature_view("transaction_features_v1").batch_source
    assert training.name == "fraud_v1_training" and str(settings.offline_dir) in source.path  # type: ignore[attr-defined]


def test_stock_feast_plans_and_applies_the_repo(tmp_path: Path, redis_url: str) -> None:
    """`feast plan`, `feast apply` and `feast feature-services list`, as documented, in a copy
    of the default repo, feature_repo/ (its registry then lands in the copy's ../data, not the
    checkout's)."""
    import os
    import shutil
    import subprocess
    import sys

    from vigil.settings import PROJECT_ROOT

    repo = tmp_path / "feature_repo"
    shutil.copytree(PROJECT_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("__pycache__", "data"))
    feast = str(Path(sys.executable).parent / "feast")
    env = {**os.environ, "REDIS_URL": redis_url, "VIGIL_OFFLINE_DIR": str(tmp_path / "data" / "offline")}
    for command in (["plan"], ["apply"], ["feature-services", "list"]):
        run = subprocess.run([feast, *command], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, (command, run.stderr[-3000:])
    assert all(f"{name} " in run.stdout for name in ("fraud_v1", "fraud_v2", "fraud_v3")), run.stdout


def test_our_writes_are_byte_identical_to_feasts(settings: Settings, redis_client: redis.Redis) -> None:
    store = apply_repo(settings)
    history = EntityHistory(np.array([1_522_540_831, 1_522_600_000]), np.array([3, 9]), np.array([10.5, 20.25]))
    when = datetime.fromtimestamp(int(history.ts[-1]), tz=UTC)
    store.write_to_online_store(
        spec.CUSTOMER_VIEW,
        pd.DataFrame(
            {
                "customer_id": [11],
                "tx_ts_list": [history.ts.tolist()],
                "tx_id_list": [history.tx_id.tolist()],
                "tx_amount_list": [history.value.tolist()],
                "event_timestamp": [when],
            }
        ),
    )
    ours = OnlineHistoryStore(redis_client, settings.feast_project)
    key = ours.view("customer").redis_key(11)
    written_by_feast = redis_client.hgetall(key)
    redis_client.delete(key)
    ours.write([("customer", 11, history)])
    assert redis_client.hgetall(key) == written_by_feast
    assert ours.read("customer", [11])[0].tx_id.tolist() == [3, 9]


def test_feast_get_online_features_equals_our_rollup(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    """A plain Feast client asking for fraud_v1 or fraud_v2 gets the scoring path's numbers."""
    store = apply_repo(settings)
    frame = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=21)]
    path = tmp_path / "tx.parquet"
    frame.to_parquet(path)
    run_main(build_flow(FileReplaySource(path), default_sinks(settings), settings))
    sample = frame.sample(300, random_state=5)
    new = sample.iloc[:20].assign(transaction_id=lambda f: f["transaction_id"] + 10_000_000)  # never ingested
    asked = pd.concat([sample, new])
    ours = online_features(asked, OnlineHistoryStore(connect(settings.redis_url), settings.feast_project))
    for service in spec.FEATURE_SETS:
        diffs = max_differences(feast_features(store, asked, service), ours)
        assert set(diffs) == set(spec.FEATURE_SETS[service].features)
        assert max(diffs.values()) <= 1e-9, (service, diffs)
    # A new transaction counts itself once on top of its customer's history.
    ingested_count = ours.set_index("transaction_id").loc[sample["transaction_id"].iloc[:20]]
    new_count = ours.set_index("transaction_id").loc[new["transaction_id"]]
    assert (
        new_count[spec.customer_count_name(30)].to_numpy()
        == ingested_count[spec.customer_count_name(30)].to_numpy() + 1
    ).all()
