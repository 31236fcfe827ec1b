"""Acceptance on the handbook data: the streaming, request-time, Feast and batch paths all equal
`features_reference.parquet` (counts exactly, averages and risks within 1e-9)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flows.sources import FileReplaySource
from vigil.features import spec
from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.ingest import run_ingest
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo, feast_features
from vigil.online.store import OnlineHistoryStore
from vigil.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.handbook]


@pytest.fixture(scope="module")
def transactions(handbook: Path) -> pd.DataFrame:
    return pd.read_parquet(handbook / "transactions.parquet")


@pytest.fixture(scope="module")
def reference(handbook: Path) -> pd.DataFrame:
    return pd.read_parquet(handbook / "features_reference.parquet")


def test_backfill_over_the_whole_file_equals_the_reference(transactions: pd.DataFrame, reference: pd.DataFrame) -> None:
    ours = compute_features(transactions)
    diffs = max_differences(ours, reference)
    assert max(diffs.values()) <= 1e-9, diffs
    counts = [n for n in spec.FEATURE_NAMES if "_nb_tx_" in n]
    assert all(diffs[n] == 0 for n in counts)


def test_three_weeks_replayed_by_two_workers_equal_the_reference(
    settings: Settings, transactions: pd.DataFrame, reference: pd.DataFrame, tmp_path: Path
) -> None:
    weeks = transactions[transactions["tx_datetime"] < pd.Timestamp("2018-04-22")]
    path = tmp_path / "three_weeks.parquet"
    weeks.to_parquet(path)
    store = apply_repo(settings)
    result = run_ingest(settings, lambda n: FileReplaySource(path, 7.0, shards=n), processes=2, show_progress=False)
    assert result.transactions == len(weeks) and result.dead_letters == 0
    expected = reference[reference["transaction_id"].isin(weeks["transaction_id"])]

    # Request-time rollup over the online store, every transaction as of its own time.
    online = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    diffs = max_differences(online_features(weeks, online), expected)
    assert max(diffs.values()) <= 1e-9, diffs

    # Feast's own get_online_features on fraud_v1, for a sample of every entity kind.
    sample = weeks.sample(1000, random_state=0)
    feast_frame = feast_features(store, sample)
    diffs = max_differences(feast_frame, expected)
    assert max(diffs.values()) <= 1e-9, diffs


def test_served_features_equal_the_reference_for_ingested_and_new_transactions(
    settings: Settings, transactions: pd.DataFrame, reference: pd.DataFrame, tmp_path: Path
) -> None:
    """?explain=true through a real server: transactions already ingested, and new ones."""
    import httpx

    from tests.integration.serving_helpers import running_server, server_env
    from vigil.lifecycle.training import train_and_register
    from vigil.offline import training_set
    from vigil.service_process import transaction_body

    weeks = transactions[transactions["tx_datetime"] < pd.Timestamp("2018-04-22")]
    ingested, later = weeks[weeks["tx_datetime"] < "2018-04-21"], weeks[weeks["tx_datetime"] >= "2018-04-21"]
    path = tmp_path / "ingested.parquet"
    ingested.to_parquet(path)
    run_ingest(settings, lambda n: FileReplaySource(path, 7.0, shards=n), processes=2, show_progress=False)
    train_and_register(settings, training_set(apply_repo(settings), settings), "baseline", show_progress=False)
    # New transactions: each customer's first of the new day (nothing of theirs is missing before it).
    new = later.groupby("customer_id").head(1).sample(100, random_state=1)
    old = ingested.sample(100, random_state=2)
    expected = reference.set_index("transaction_id")
    with running_server(server_env(settings)) as base:
        for rows in (old, new):
            answer = httpx.post(
                f"{base}/v1/score/batch?explain=true",
                json={"transactions": [transaction_body(r) for _, r in rows.iterrows()]},
                timeout=30,
            )
            assert answer.status_code == 200
            for result in answer.json()["results"]:
                want = expected.loc[result["transaction_id"]]
                for name in spec.FEATURE_NAMES:
                    assert abs(result["features"][name] - float(want[name])) <= 1e-6 * max(1.0, abs(want[name])), name
