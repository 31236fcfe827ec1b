"""The scoring service against a real server, the real Redis and a real MLflow registry."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest_and_train, running_server, server_env
from vigil.declared import load_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.monitoring.predictions import decode_entries, logged_answers
from vigil.online.connection import connect
from vigil.online.store import delete_namespace
from vigil.service_process import transaction_body
from vigil.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served_world(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, small_world: pd.DataFrame
) -> Iterator[tuple[Settings, pd.DataFrame]]:
    """A four-week world ingested, one model registered (version 1 = champion)."""
    import uuid

    tmp = tmp_path_factory.mktemp("serving")
    name = f"s{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=redis_url,
        feast_project=name,
        key_prefix=name,
        data_dir=tmp / "data",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        mlflow_artifacts_dir=tmp / "artifacts",
        feature_repo=HANDBOOK_REPO,
    )
    world = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=28)]
    ingest_and_train(settings, world, "xgboost", n_estimators=40)
    yield settings, world
    delete_namespace(redis_url, name, name)


@pytest.fixture(scope="module")
def server(served_world: tuple[Settings, pd.DataFrame]) -> Iterator[str]:
    with running_server(server_env(served_world[0])) as base:
        yield base


def test_scores_a_transaction(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    row = served_world[1].iloc[-1]
    answer = httpx.post(f"{server}/v1/score", json=transaction_body(row))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["transaction_id"] == int(row["transaction_id"])
    assert 0 <= body["score"] <= 1 and body["fallback"] is False and body["fallback_reason"] is None
    assert body["model"] == {"name": "fraud-detector", "version": "1", "alias": "champion"}
    assert body["latency_ms"] > 0 and "features" not in body


def test_explain_returns_the_exact_features(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    settings, world = served_world
    declared = load_declared(HANDBOOK_REPO)
    inputs = list(declared.service("fraud_v1").features)
    fields = list(declared.events.fields)
    rows = world.tail(50)
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    expected = store.features(rows[fields], "fraud_v1").set_index("transaction_id")
    new = rows.iloc[:5].assign(transaction_id=rows["transaction_id"].iloc[:5] + 50_000_000)  # never ingested
    expected_new = store.features(new[fields], "fraud_v1").set_index("transaction_id")
    for frame, reference in ((rows, expected), (new, expected_new)):
        answer = httpx.post(
            f"{server}/v1/score/batch?explain=true",
            json={"transactions": [transaction_body(r) for _, r in frame.iterrows()]},
        )
        assert answer.status_code == 200, answer.text
        for result, (_, row) in zip(answer.json()["results"], frame.iterrows(), strict=True):
            assert list(result["features"]) == inputs and len(inputs) == 15  # the contract's 15, in order
            assert result["features"]["tx_amount"] == row["tx_amount"]  # as given
            for name in inputs:
                assert result["features"][name] == reference.loc[result["transaction_id"], name], name
            assert result["contributions"] and set(result["contributions"]) <= set(inputs)


def test_batch_keeps_order_and_matches_single_scores(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    rows = served_world[1].sample(40, random_state=4)
    batch = httpx.post(
        f"{server}/v1/score/batch", json={"transactions": [transaction_body(r) for _, r in rows.iterrows()]}
    )
    results = batch.json()["results"]
    assert [r["transaction_id"] for r in results] == rows["transaction_id"].tolist()
    single = httpx.post(f"{server}/v1/score", json=transaction_body(rows.iloc[3])).json()
    assert single["score"] == pytest.approx(results[3]["score"], abs=1e-6)


def test_a_large_batch_is_answered_by_the_model(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    """Thousands of rows (two chunks) within the batch's deadline, not from the fallback."""
    rows = served_world[1].tail(3_000)
    answer = httpx.post(
        f"{server}/v1/score/batch",
        json={"transactions": [transaction_body(r) for r in rows.itertuples()]},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["transaction_id"] for r in results] == rows["transaction_id"].tolist()
    assert not [r for r in results if r["fallback"]]
    small = httpx.post(
        f"{server}/v1/score/batch", json={"transactions": [transaction_body(r) for r in rows.tail(3).itertuples()]}
    ).json()["results"]
    assert [r["score"] for r in small] == pytest.approx([r["score"] for r in results[-3:]], abs=1e-6)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tx_amount": None}, "tx_amount"),
        ({"tx_amount": -1}, "tx_amount"),
        ({"tx_amount": "lots"}, "tx_amount"),
        ({"customer_id": "alice"}, "customer_id"),
        ({"tx_datetime": "yesterday"}, "tx_datetime"),
        ({"transaction_id": None}, "transaction_id"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    server: str, served_world: tuple[Settings, pd.DataFrame], change: dict[str, object], field: str
) -> None:
    body = {**transaction_body(served_world[1].iloc[0]), **change}
    body = {k: v for k, v in body.items() if v is not None}
    answer = httpx.post(f"{server}/v1/score", json=body)
    assert answer.status_code == 422
    assert any(field in error["loc"] for error in answer.json()["detail"])


def test_malformed_bodies_and_limits(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    assert (
        httpx.post(f"{server}/v1/score", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert httpx.post(f"{server}/v1/score/batch", json={"rows": []}).status_code == 422
    one = transaction_body(served_world[1].iloc[0])
    too_many = httpx.post(f"{server}/v1/score/batch", json={"transactions": [one] * 10_001})
    assert too_many.status_code == 413
    huge = httpx.post(
        f"{server}/v1/score", content=b" " * (9 * 1024 * 1024), headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413


def test_operational_endpoints(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "alive"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    httpx.post(f"{server}/v1/score/batch", json={"transactions": []})
    metrics = httpx.get(f"{server}/metrics").text
    assert 'vigil_score_stage_seconds_bucket{le="0.001",stage="features"}' in metrics
    assert 'vigil_model_info{alias="champion"' in metrics
    models = httpx.get(f"{server}/v1/models").json()
    assert models["serving"]["version"] == "1" and models["registry"]["champion"]["version"] == "1"
    spec_doc = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/v1/models"} <= set(spec_doc["paths"])


def test_api_keys(served_world: tuple[Settings, pd.DataFrame]) -> None:
    settings, world = served_world
    with running_server(server_env(settings, VIGIL_API_KEYS="k1,k2")) as base:
        body = transaction_body(world.iloc[0])
        assert httpx.post(f"{base}/v1/score", json=body).status_code == 401
        assert httpx.post(f"{base}/v1/score", json=body, headers={"X-API-Key": "nope"}).status_code == 401
        assert httpx.post(f"{base}/v1/score", json=body, headers={"X-API-Key": "k2"}).status_code == 200
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_prediction_log(server: str, served_world: tuple[Settings, pd.DataFrame]) -> None:
    import time

    settings, world = served_world
    client = connect(settings.redis_url)
    before = logged_answers(settings, client)
    httpx.post(f"{server}/v1/score", json=transaction_body(world.iloc[7]))
    deadline = time.monotonic() + 5  # written in the background, off the response path
    while logged_answers(settings, client) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged_answers(settings, client) == before + 1
    logged = decode_entries(client.xrevrange(settings.prediction_stream, count=1)).iloc[-1]  # type: ignore[arg-type]
    row = world.iloc[7]
    assert int(logged["transaction_id"]) == int(row["transaction_id"])
    assert int(logged["customer_id"]) == int(row["customer_id"])  # the review unit of fraud_v1: the card
    assert int(logged["ts"]) == int(pd.Timestamp(row["tx_datetime"]).timestamp())
    assert logged["version"] != "" and not logged["fallback"] and 0 <= logged["score"] <= 1
    inputs = list(load_declared(HANDBOOK_REPO).service("fraud_v1").features)
    assert np.isfinite(logged[inputs].to_numpy(np.float64)).all()
