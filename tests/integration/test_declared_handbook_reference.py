"""The declared handbook (feature_repo, fraud_v1 with Feast's objects alone) against the
handbook's `features_reference.parquet`, on its first three weeks, within 1e-9 on every path
besides the backfill (checked on the whole file in test_declared_examples): the repo's flow
into Redis, the scoring service's `explain` (payments ingested and new ones), stock Feast's
`get_online_features`, and the Spark backfill."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from flows.declared import DeclaredReplaySource, build_flow, default_sinks, run_to_end
from tests.integration.readme_blocks import run
from tests.integration.serving_helpers import server_env
from vigil.declared import load_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import default_split, logged_events, training_set, version_params
from vigil.lifecycle.training import train_and_register
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo
from vigil.service_process import events_body, serve_process
from vigil.settings import PROJECT_ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.handbook]
REPO = PROJECT_ROOT / "feature_repo"


def test_fraud_v1_online_served_by_feast_and_on_spark_equals_the_reference(
    settings: Settings, handbook: Path, tmp_path: Path
) -> None:
    declared = load_declared(REPO)
    fields = list(declared.events.fields)
    inputs = list(declared.service("fraud_v1").features)
    # The 15 model inputs: the payment's own amount, then the handbook's 14 features.
    assert inputs[0] == "tx_amount" and len(inputs) == 15
    v1 = inputs[1:]
    reference = pd.read_parquet(handbook / "features_reference.parquet").set_index("transaction_id")
    transactions = pd.read_parquet(handbook / "transactions.parquet")
    amounts = transactions.set_index("transaction_id")["tx_amount"]
    weeks = transactions[transactions["tx_datetime"] < pd.Timestamp("2018-04-22")]
    ingested, later = weeks[weeks["tx_datetime"] < "2018-04-21"], weeks[weeks["tx_datetime"] >= "2018-04-21"]

    def worst(values: pd.DataFrame) -> float:
        """The largest difference from the reference (values indexed by transaction id); the
        amount exactly as the payment gave it."""
        assert len(values) > 0 and list(values.columns[-len(inputs) :]) == inputs
        assert values["tx_amount"].to_numpy().tolist() == amounts.loc[values.index].to_numpy().tolist()
        return float((values[v1] - reference.loc[values.index, v1]).abs().max().max())

    # The repo's flow: every ingested payment's features from Redis, as of its own time.
    path = tmp_path / "ingested.parquet"
    ingested.to_parquet(path)
    settings = settings.model_copy(update={"feature_repo": REPO})
    sinks = default_sinks(settings, declared)
    run_to_end(build_flow(DeclaredReplaySource(path, declared, label_delay_days=7.0), sinks, settings, declared))
    assert sinks.stats.transactions == len(ingested) and sinks.stats.dead_letters == 0
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    assert worst(store.features(ingested[fields], "fraud_v1").set_index("transaction_id")) <= 1e-9

    # Stock Feast's client on the repo and the same store.
    feast_store = apply_repo(settings)
    sample = ingested.sample(300, random_state=3)
    answer = feast_store.get_online_features(
        features=feast_store.get_feature_service("fraud_v1"), entity_rows=sample[fields].to_dict("records")
    ).to_df()
    assert worst(answer.set_index(sample["transaction_id"].to_numpy())) <= 1e-9

    # The scoring service's explain: payments already ingested, and new ones (each customer's
    # first of the next day: nothing of theirs is missing before it; the terminal's windows end
    # a week before the payment).
    data = training_set(declared, logged_events(declared, settings.event_log), "fraud_v1")
    params = version_params(data.service, "baseline")
    train_and_register(settings, data.frame, "baseline", params=params, split=default_split(data), show_progress=False)
    new = later.groupby("customer_id").head(1).sample(100, random_state=1)
    old = ingested.sample(100, random_state=2)
    with serve_process(server_env(settings)) as base:
        for rows in (old, new):
            body = events_body(fields, rows, batch=declared.events.batch)
            results = httpx.post(f"{base}/v1/score/batch?explain=true", json=body, timeout=30).json()["results"]
            assert not any(r["fallback"] for r in results), results[0]
            explained = pd.DataFrame([r["features"] for r in results], index=[r["transaction_id"] for r in results])
            assert worst(explained) <= 1e-9

    # The Spark backfill of the three weeks (`vigil repo compute --engine spark`).
    weeks.to_parquet(tmp_path / "weeks.parquet")
    done = run(
        sys.executable, "-m", "vigil.cli", "repo", "compute", "--repo", "feature_repo", "--service", "fraud_v1",
        "--events", str(tmp_path / "weeks.parquet"), "--reference", str(handbook / "features_reference.parquet"),
        "--engine", "spark", "--spark-master", "local[2]",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"MATCH: {len(weeks):,} events compared" in done.stdout, done.stdout
