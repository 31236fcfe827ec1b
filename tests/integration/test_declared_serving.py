"""The scoring service of a declared repo (examples/payments), for real: versions trained
on two feature services, a real `vigil serve`, the online store in Redis. Each version gets
exactly its own service's inputs, equal to the backfill's; bodies follow the repo's schema."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from feast import FeatureStore

from flows.declared import default_sinks
from tests.integration.serving_helpers import server_env, vigil
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import default_split, training_set, version_params
from vigil.lifecycle.training import train_and_register
from vigil.models.loading import load_native
from vigil.monitoring.predictions import answers_key, decode_entries
from vigil.offline.eventlog import was_filled
from vigil.online.connection import connect
from vigil.service_process import serve_process
from vigil.settings import PROJECT_ROOT, Settings

PAYMENTS = PROJECT_ROOT / "examples" / "payments"


def simulated(cards: int, days: int) -> pd.DataFrame:
    spec = importlib.util.spec_from_file_location("payments_simulate", PAYMENTS / "simulate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frame: pd.DataFrame = module.simulate(cards=cards, days=days, seed=3)
    return frame


def train(settings: Settings, events: pd.DataFrame, service: str, kind: str) -> str:
    declared = load_declared(PAYMENTS)
    data = training_set(declared, events, service)
    params = version_params(data.service, kind)
    if kind == "xgboost":
        params.update(n_estimators=40)
    report = train_and_register(
        settings, data.frame, kind, params=params, show_progress=False, split=default_split(data)
    )
    return report.version


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> tuple[Settings, pd.DataFrame]:
    """A payments world in the online store (what `vigil repo ingest` leaves) and two versions:
    payments_v1 (13 inputs) the champion, payments_velocity (10) the challenger."""
    declared = load_declared(PAYMENTS)
    events = simulated(cards=400, days=21)
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    store.record_events(events.drop(columns=["is_fraud"]))
    store.record_labels(events[["payment_id", "paid_at", "merchant_id", "is_fraud"]])
    store.mark("replay")
    settings = settings.model_copy(update={"feature_repo": PAYMENTS})
    assert train(settings, events, "payments_v1", "xgboost") == "1"
    assert train(settings, events, "payments_velocity", "baseline") == "2"
    return settings, events


def body(row: pd.Series) -> dict[str, object]:
    record = row.drop(labels=["is_fraud"]).to_dict()
    record["paid_at"] = pd.Timestamp(record["paid_at"]).isoformat()
    return record


def test_each_version_gets_its_own_services_inputs_equal_to_the_backfill(
    served: tuple[Settings, pd.DataFrame], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, events = served
    declared = load_declared(PAYMENTS)
    last = events.sort_values("paid_at").tail(40)
    expected = compute_declared(declared, events, features=declared.feature_names).set_index("payment_id")
    env = server_env(settings, VIGIL_FEATURE_REPO=str(PAYMENTS))
    with serve_process(env) as base:
        answer = httpx.post(
            f"{base}/v1/score/batch?explain=true", json={"payments": [body(r) for _, r in last.iterrows()]}, timeout=30
        ).json()
        results = answer["results"]
        assert [r["payment_id"] for r in results] == last["payment_id"].tolist()
        assert not any(r["fallback"] for r in results), results[0]
        v1 = list(declared.service("payments_v1").features)
        got = pd.DataFrame([r["features"] for r in results], index=last["payment_id"])
        assert list(got.columns) == v1
        assert np.abs(got.to_numpy() - expected.loc[last["payment_id"], v1].to_numpy()).max() <= 1e-9

        # Stock Feast on the repo: get_online_features with the join keys and the request
        # fields (times as datetimes, as a notebook passes them) gives what explain gave.
        repo = tmp_path / "payments"
        shutil.copytree(PAYMENTS, repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
        monkeypatch.setenv("REDIS_URL", settings.redis_url)
        monkeypatch.setenv("VIGIL_KEY_PREFIX", settings.key_prefix)
        feast = str(Path(sys.executable).parent / "feast")
        applied = subprocess.run([feast, "apply"], cwd=repo, capture_output=True, text=True, timeout=120)
        assert applied.returncode == 0, applied.stderr[-2000:]
        store = FeatureStore(repo_path=str(repo))
        rows = [{**body(r), "paid_at": r["paid_at"].to_pydatetime()} for _, r in last.iterrows()]
        online = store.get_online_features(features=store.get_feature_service("payments_v1"), entity_rows=rows)
        answered = online.to_dict()
        assert answered["card_id"] == last["card_id"].tolist()
        assert pd.DataFrame(answered)[v1].to_numpy().tolist() == got.to_numpy().tolist()

        # The challenger, in shadow, on its own 10 inputs.
        client = connect(settings.redis_url)
        deadline = time.monotonic() + 15
        while client.xlen(settings.shadow_stream) < len(last) and time.monotonic() < deadline:
            time.sleep(0.1)
        shadow = client.xrange(settings.shadow_stream)
        assert len(shadow) == len(last)
        scored = {int(f[b"payment_id"]): float(f[b"challenger_score"]) for _, f in shadow}
        assert {f[b"challenger_version"] for _, f in shadow} == {b"2"}
        velocity = list(declared.service("payments_velocity").features)
        challenger = load_native("models:/fraud-detector/2")
        assert list(challenger.inputs) == velocity
        want = challenger.predict_proba(expected.loc[last["payment_id"], velocity].to_numpy(np.float32))
        assert np.allclose([scored[i] for i in last["payment_id"]], want, atol=1e-6)

        models = httpx.get(f"{base}/v1/models", timeout=10).json()
        assert models["serving"]["inputs"] == v1 and models["shadow"]["inputs"] == velocity

        # Every answer in the prediction log, with the champion's inputs by name.
        deadline = time.monotonic() + 15
        while int(client.get(answers_key(settings.prediction_stream)) or 0) < len(last) and time.monotonic() < deadline:
            time.sleep(0.1)
        logged = decode_entries(client.xrange(settings.prediction_stream)).set_index("transaction_id")
        assert sorted(logged.index) == sorted(last["payment_id"]) and set(logged["version"]) == {"1"}
        want_logged = expected.loc[last["payment_id"], v1].to_numpy()
        assert np.allclose(logged.loc[last["payment_id"], v1].to_numpy(), want_logged, rtol=1e-6, atol=1e-6)


def test_in_stream_scoring_answers_each_event_as_the_service_would(served: tuple[Settings, pd.DataFrame]) -> None:
    """flows.declared_scoring on the repo's events stream: one decision per event, from the
    champion on its own inputs; labels on the stream are acknowledged, bad entries are dead
    letters; nothing stays pending."""
    from bytewax.testing import run_main

    from flows.declared_scoring import GROUP, build_flow
    from tests.integration.test_declared_flow import as_entry

    settings, events = served
    declared = load_declared(PAYMENTS)
    last = events.sort_values("paid_at").tail(40)
    client = connect(settings.redis_url)
    stream = settings.stream("events")
    first = last.iloc[0]
    with client.pipeline(transaction=False) as pipe:
        for _, row in last.iterrows():
            pipe.xadd(stream, as_entry({"kind": "event", **body(row)}))
        label = {"payment_id": int(first["payment_id"]), "paid_at": body(first)["paid_at"], "is_fraud": 0}
        pipe.xadd(stream, as_entry({"kind": "label", **label, "merchant_id": first["merchant_id"]}))
        pipe.xadd(stream, as_entry({"kind": "event", **body(first), "amount": "a lot"}))
        pipe.execute()
    run_main(build_flow(settings=settings.model_copy(update={"stop_at_end": True}), declared=declared))

    decisions = [json.loads(fields[b"json"]) for _, fields in client.xrange(settings.stream("decisions"))]
    assert [d["payment_id"] for d in decisions] == last["payment_id"].tolist()
    assert not any(d["fallback"] for d in decisions), decisions[0]
    assert {d["decision"] for d in decisions} <= {"allow", "review", "block"}
    v1 = list(declared.service("payments_v1").features)
    expected = compute_declared(declared, events, service="payments_v1").set_index("payment_id")
    want = load_native("models:/fraud-detector/1").predict_proba(expected.loc[last["payment_id"], v1].to_numpy())
    assert np.allclose([d["score"] for d in decisions], want, atol=1e-6)
    dead = [fields[b"reason"].decode() for _, fields in client.xrange(settings.deadletter_stream)]
    assert dead == ["amount: not a finite number ('a lot')"], dead
    assert client.xpending(stream, GROUP)["pending"] == 0
    # The challenger's scores in shadow, every one written by the time the flow ends.
    shadow = client.xrange(settings.shadow_stream)
    assert sorted(int(f[b"payment_id"]) for _, f in shadow) == sorted(last["payment_id"].tolist())


def test_bodies_follow_the_repos_schema(served: tuple[Settings, pd.DataFrame]) -> None:
    settings, events = served
    env = server_env(settings, VIGIL_FEATURE_REPO=str(PAYMENTS))
    row = events.iloc[-1]
    with serve_process(env) as base:
        schema = httpx.get(f"{base}/openapi.json", timeout=10).json()
        event = schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert set(event["properties"]) == set(load_declared(PAYMENTS).events.fields)
        assert event["properties"]["card_id"]["type"] == "string"

        wrong = httpx.post(f"{base}/v1/score", json={**body(row), "payment_id": "x"}, timeout=10)
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["payment_id"]
        missing = {k: v for k, v in body(row).items() if k != "amount"}
        gone = httpx.post(f"{base}/v1/score", json=missing, timeout=10)
        assert gone.status_code == 422 and gone.json()["detail"][0]["loc"] == ["amount"]
        batch = httpx.post(f"{base}/v1/score/batch", json={"payments": [body(row), {**body(row), "card_id": ""}]})
        assert batch.status_code == 422 and batch.json()["detail"][0]["loc"] == ["payments", 1, "card_id"]
        # The batch list is named by the repo (its events' RequestSource's tag vigil.batch).
        listed = schema["paths"]["/v1/score/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert listed["required"] == ["payments"] and listed["properties"]["payments"]["type"] == "array"
        unnamed = httpx.post(f"{base}/v1/score/batch", json={"events": [body(row)]}, timeout=10)
        assert unnamed.status_code == 422 and unnamed.json()["detail"][0]["loc"] == ["payments"]

        label = {
            "payment_id": int(row["payment_id"]),
            "paid_at": body(row)["paid_at"],
            "merchant_id": row["merchant_id"],
        }
        unknown = httpx.post(f"{base}/v1/labels", json={"labels": [{**label, "payment_id": 10**12, "is_fraud": 1}]})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["labels", 0, "payment_id"]
        nan = httpx.post(f"{base}/v1/labels", json={"labels": [{**label, "is_fraud": 2}]})
        assert nan.status_code == 422 and nan.json()["detail"][0]["loc"] == ["labels", 0, "is_fraud"]
        accepted = httpx.post(f"{base}/v1/labels", json={"labels": [{**label, "is_fraud": 1}]})
        assert accepted.status_code == 202 and accepted.json() == {"accepted": 1}
        assert connect(settings.redis_url).xlen(settings.events_stream) == 1


def test_an_emptied_store_gives_no_confident_answer(served: tuple[Settings, pd.DataFrame]) -> None:
    """Redis restarted empty: the next request's own read finds no markers, so no answer
    claims to be the model's, and readiness says why."""
    settings, events = served
    env = server_env(settings, VIGIL_FEATURE_REPO=str(PAYMENTS))
    rows = [body(r) for _, r in events.tail(30).iterrows()]
    with serve_process(env) as base:
        first = httpx.post(f"{base}/v1/score", json=rows[0], timeout=10).json()
        assert first["fallback"] is False, first
        client = connect(settings.redis_url)
        for key in list(client.scan_iter(match=f"{settings.key_prefix}:facts:*", count=5_000)):
            client.delete(key)
        answers = [httpx.post(f"{base}/v1/score", json=row, timeout=10).json() for row in rows]
        assert {(a["fallback"], a["fallback_reason"]) for a in answers} == {(True, "store_empty")}
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["reason"] == "store_empty"


def test_a_live_flow_marks_a_new_store_and_never_an_emptied_one(settings: Settings) -> None:
    settings = settings.model_copy(update={"feature_repo": PAYMENTS})
    declared = load_declared(PAYMENTS)
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    sinks = default_sinks(settings, declared)
    sinks.facts.build("facts", 0, 1).close()  # a live flow's start on a new deployment
    assert store.holds_data() and was_filled(settings.event_log, store.marker_project)
    for key in list(store.client.scan_iter(match=f"{settings.key_prefix}:facts:*", count=5_000)):
        store.client.delete(key)  # restarted empty
    sinks.facts.build("facts", 0, 1).close()
    assert not store.holds_data()  # lost data is not a new deployment
    sinks.facts.replay = True  # a replay rebuilds it
    sinks.facts.build("facts", 0, 1).close()
    assert store.holds_data()


def test_rules_and_lists_read_the_repos_fields_and_features(
    served: tuple[Settings, pd.DataFrame], tmp_path: Path
) -> None:
    """VIGIL_RULES_FILE on a declared repo: CEL over the event's fields and the declared
    features; lists of the events' entity keys; a rule naming a variable the repo does not
    declare is refused at start, exit 2."""
    settings, events = served
    declared = load_declared(PAYMENTS)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        'rules:\n  - name: web_and_busy\n    when: channel == "web" && card_payments_24h >= 2.0\n    action: block\n'
    )
    last = events.sort_values("paid_at").tail(60)
    expected = compute_declared(declared, events, features=["card_payments_24h"]).set_index("payment_id")
    busy = expected.loc[last["payment_id"], "card_payments_24h"].to_numpy() >= 2.0
    hit = (last["channel"].to_numpy() == "web") & busy
    assert hit.any() and not hit.all()
    env = server_env(settings, VIGIL_FEATURE_REPO=str(PAYMENTS), VIGIL_RULES_FILE=str(rules))
    with serve_process(env) as base:
        for _ in range(3):  # a batch that missed its deadline on a busy machine scores from the event alone
            results = httpx.post(
                f"{base}/v1/score/batch", json={"payments": [body(r) for _, r in last.iterrows()]}, timeout=30
            ).json()["results"]
            if not results[0]["fallback"]:
                break
        assert not results[0]["fallback"], results[0]
        ruled = np.array(["rule:web_and_busy" in r["reasons"] for r in results])
        assert (ruled == hit).all()
        assert all(r["decision"] == "block" for r, h in zip(results, hit, strict=True) if h)
        assert httpx.get(f"{base}/v1/models", timeout=10).json()["rules"]["rules"][0]["name"] == "web_and_busy"
        assert 'vigil_score_stage_seconds_count{stage="decide"}' in httpx.get(f"{base}/metrics", timeout=10).text

        # Lists of the events' entity keys: a merchant on the block list blocks its payments.
        calm = body(last.iloc[int(np.flatnonzero(~hit)[0])])
        merchant = calm["merchant_id"]
        assert httpx.put(f"{base}/v1/lists/block/merchant_id/{merchant}", timeout=10).status_code == 204
        listed = httpx.get(f"{base}/v1/lists/block/merchant_id", timeout=10).json()
        assert listed["members"] == [merchant]
        blocked = httpx.post(f"{base}/v1/score", json=calm, timeout=10).json()
        assert blocked["decision"] == "block" and "list:block_merchant_id" in blocked["reasons"], blocked
        wrong = httpx.put(f"{base}/v1/lists/block/customer_id/1", timeout=10)
        assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["path", "key"]
        assert httpx.delete(f"{base}/v1/lists/block/merchant_id/{merchant}", timeout=10).status_code == 204
        again = httpx.post(f"{base}/v1/score", json=calm, timeout=10).json()
        assert "list:block_merchant_id" not in again["reasons"], again

        # Blocks wait in the repo's review queue with the event's own fields, explained on read
        # by the version that scored them; a verdict becomes a label of the repo's schema.
        judged = last.iloc[int(np.flatnonzero(hit)[0])]
        event_id = int(judged["payment_id"])
        deadline = time.monotonic() + 20
        while str(event_id) not in (listed_now := vigil("review", "list", "--count", "500", env=env).stdout):
            assert time.monotonic() < deadline, listed_now
            time.sleep(0.2)
        entry = listed_now.split(str(event_id), 1)[1].split("\n")
        assert "rule:web_and_busy" in entry[0] and f"merchant_id {judged['merchant_id']}" in entry[0], entry
        assert entry[1].strip().startswith("top contributions: "), entry
        verdict = vigil("review", "verdict", "--event-id", str(event_id), "--fraud", env=env)
        assert verdict.returncode == 0, verdict.stderr
        label = json.loads(verdict.stdout.splitlines()[-1])
        assert set(label) == {"kind", "payment_id", "paid_at", "merchant_id", "is_fraud"}, label
        assert (label["payment_id"], label["merchant_id"], label["is_fraud"]) == (event_id, judged["merchant_id"], 1)
        assert pd.to_datetime(label["paid_at"], utc=True) == pd.to_datetime(judged["paid_at"], utc=True)
        client = connect(settings.redis_url)
        sent = [json.loads(f[b"json"]) for _, f in client.xrange(settings.events_stream) if b"json" in f]
        client.close()
        assert label in sent
        assert str(event_id) not in vigil("review", "list", "--count", "500", env=env).stdout  # judged

    rules.write_text("rules:\n  - name: handbook\n    when: tx_amount > 10.0\n    action: review\n")
    refused = vigil("serve", "--port", "0", env=env, timeout=120)
    assert refused.returncode == 2 and "unknown variable(s) tx_amount" in refused.stderr, refused.stderr
