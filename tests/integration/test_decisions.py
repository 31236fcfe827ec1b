"""Decisions on a real server: every answer decides, rules reload without a restart (and a
broken file keeps the old ones), lists, the review queue and its verdicts, and labels
posted through the API reaching the running feature flow exactly as stream labels would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest_and_train, running_server, server_env, vigil
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.online.store import delete_namespace
from vigil.service_process import transaction_body
from vigil.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

RULES = """rules:
  - name: huge_amount
    when: tx_amount > 10000.0
    action: block
"""


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


class World:
    def __init__(self, base: str, settings: Settings, history: pd.DataFrame, rules: Path, env: dict[str, str]) -> None:
        self.base, self.settings, self.history, self.rules, self.env = base, settings, history, rules, env

    def score(self, body: dict[str, Any], explain: bool = False) -> dict[str, Any]:
        answer = httpx.post(f"{self.base}/v1/score{'?explain=true' if explain else ''}", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_url: str, small_world: pd.DataFrame) -> Iterator[World]:
    import uuid

    tmp = tmp_path_factory.mktemp("decisions")
    name = f"d{uuid.uuid4().hex[:10]}"
    settings = Settings(
        redis_url=redis_url,
        feast_project=name,
        key_prefix=name,
        data_dir=tmp / "data",
        reports_dir=tmp / "reports",
        mlflow_tracking_uri=f"sqlite:///{tmp}/mlflow.db",
        mlflow_artifacts_dir=tmp / "artifacts",
        feature_repo=HANDBOOK_REPO,
    )
    history = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=35)]
    # 300 cards: a budget of 5 reviews a day (the default 100 is for the handbook's 5,000).
    ingest_and_train(settings, history, "xgboost", review_budget=5, n_estimators=30)
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    env = server_env(settings, VIGIL_RULES_FILE=str(rules))
    with running_server(env) as base:
        yield World(base, settings, history, rules, env)
    delete_namespace(redis_url, name, name)


def test_every_answer_decides(world: World) -> None:
    rows = [transaction_body(r) for r in world.history.tail(300).itertuples()]
    results = httpx.post(f"{world.base}/v1/score/batch", json={"transactions": rows}, timeout=30).json()["results"]
    single = world.score(rows[0])
    for answer in [*results, single]:
        assert answer["decision"] in ("allow", "review", "block") and answer["reasons"]
    decisions = {a["decision"] for a in results}
    assert "allow" in decisions
    models = httpx.get(f"{world.base}/v1/models").json()
    policy = models["serving"]["policy"]
    assert policy["source"] == "version 1" and 0 <= policy["review_threshold"] <= 1
    # The version's thresholds decide: a score at or above the review line is reviewed.
    for answer in results:
        if answer["score"] >= policy["review_threshold"] and not answer["fallback"]:
            assert answer["decision"] in ("review", "block")


def test_rules_reload_without_a_restart_and_a_broken_file_keeps_the_old_ones(world: World) -> None:
    body = {**transaction_body(world.history.iloc[-1]), "tx_amount": 20_000.0}
    answer = world.score(body)
    assert answer["decision"] == "block" and "rule:huge_amount" in answer["reasons"]
    world.rules.write_text(
        RULES.replace("10000.0", "50000.0")
        + "  - name: mid_amount\n    when: tx_amount > 15000.0 && customer_id >= 0\n    action: review\n"
    )
    assert wait_for(lambda: "rule:mid_amount" in world.score(body)["reasons"])
    answer = world.score(body)
    # A review rule; the model's block threshold may still make it a block (precedence).
    assert answer["decision"] in ("review", "block") and "rule:huge_amount" not in answer["reasons"]
    world.rules.write_text("rules:\n  - name: broken\n    when: tx_amount >\n    action: block\n")
    time.sleep(2.5)  # the service checks the file every second
    assert world.score(body)["reasons"] == answer["reasons"]  # the old rules still serve
    metrics = httpx.get(f"{world.base}/metrics").text
    assert (
        "vigil_rules_file_error 1.0" in metrics
        and 'vigil_rule_hits_total{action="review",rule="mid_amount"}' in metrics
    )
    served = httpx.get(f"{world.base}/v1/models").json()["rules"]["rules"]
    assert [r["name"] for r in served] == ["huge_amount", "mid_amount"]
    world.rules.write_text(RULES)
    assert wait_for(lambda: world.score(body)["reasons"][0] == "rule:huge_amount")


def test_lists_block_and_allow(world: World) -> None:
    row = transaction_body(world.history.iloc[-2])
    customer = row["customer_id"]
    assert httpx.put(f"{world.base}/v1/lists/block/customer_id/{customer}").status_code == 204
    answer = world.score(row)
    assert answer["decision"] == "block" and "list:block_customer_id" in answer["reasons"]
    assert customer in httpx.get(f"{world.base}/v1/lists/block/customer_id").json()["members"]
    assert httpx.delete(f"{world.base}/v1/lists/block/customer_id/{customer}").status_code == 204
    assert httpx.put(f"{world.base}/v1/lists/allow/customer_id/{customer}").status_code == 204
    answer = world.score({**row, "tx_amount": 20_000.0})  # block rules come before allow lists
    assert answer["decision"] == "block" and "list:allow_customer_id" in answer["reasons"]
    answer = world.score(row)
    assert answer["decision"] == "allow" and answer["reasons"][0] == "list:allow_customer_id"
    httpx.delete(f"{world.base}/v1/lists/allow/customer_id/{customer}")


def test_reviews_go_to_the_queue_and_a_verdict_becomes_a_label(world: World) -> None:
    body = {**transaction_body(world.history.iloc[-3]), "transaction_id": 77_000_001, "tx_amount": 20_000.0}
    assert world.score(body)["decision"] == "block"
    listed = lambda: vigil("review", "list", "--count", "500", env=world.env)  # noqa: E731
    assert wait_for(lambda: "77000001" in listed().stdout)
    entry = listed().stdout
    assert "rule:huge_amount" in entry
    # Explained on read, by the version that scored it (not computed in the service).
    assert "top contributions: " in entry.split("77000001", 1)[1]
    verdict = vigil("review", "verdict", "--event-id", "77000001", "--fraud", env=world.env)
    assert verdict.returncode == 0, verdict.stderr
    assert "77000001" not in listed().stdout  # judged: off the list
    from vigil.online.connection import connect

    client = connect(world.settings.redis_url)
    events = client.xrange(world.settings.events_stream)
    client.close()
    entries = [json.loads(f[b"json"]) for _, f in events]  # the repo's flow reads one JSON field an entry
    assert any(e["transaction_id"] == 77_000_001 and e["kind"] == "label" and e["tx_fraud"] == 1 for e in entries)
    unknown = vigil("review", "verdict", "--transaction-id", "1", "--genuine", env=world.env)
    assert unknown.returncode == 2 and "not in the review queue" in unknown.stderr


def test_bad_label_bodies_are_a_422_naming_the_field(world: World) -> None:
    good = {"transaction_id": 1, "terminal_id": 2, "tx_datetime": "2018-04-20T10:00:00", "tx_fraud": 1}
    for change, field in (
        ({"tx_fraud": 2}, "tx_fraud"),
        ({"tx_fraud": True}, "tx_fraud"),
        ({"terminal_id": "2"}, "terminal_id"),
        ({"tx_datetime": "2018-04-20"}, "tx_datetime"),
        ({"transaction_id": None}, "transaction_id"),
    ):
        answer = httpx.post(f"{world.base}/v1/labels", json={"labels": [{**good, **change}]})
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == field, answer.text


def test_a_label_for_a_payment_vigil_has_not_seen_is_refused_and_changes_nothing(world: World) -> None:
    """Made-up transaction ids on a busy terminal, a real payment at another terminal or time:
    422 naming the field at fault, nothing on the event stream, the terminal's features as they were."""
    from vigil.online.connection import connect

    history = world.history
    terminal = int(history["terminal_id"].value_counts().index[0])
    probe_row = history[history["terminal_id"] == terminal].iloc[-1]
    probe = {**transaction_body(probe_row), "transaction_id": 88_000_002}
    before = world.score(probe, explain=True)["features"]
    client = connect(world.settings.redis_url)
    stream_length = client.xlen(world.settings.events_stream)
    when = pd.Timestamp(probe_row["tx_datetime"]) - pd.Timedelta(days=10)
    made_up = [
        {"transaction_id": 95_000_000 + i, "terminal_id": terminal, "tx_datetime": when.isoformat(), "tx_fraud": 1}
        for i in range(30)
    ]
    real = history[history["terminal_id"] != terminal].iloc[-1]
    elsewhere = {"transaction_id": int(real["transaction_id"]), "terminal_id": terminal,
                 "tx_datetime": pd.Timestamp(real["tx_datetime"]).isoformat(), "tx_fraud": 1}  # fmt: skip
    other_time = {**elsewhere, "terminal_id": int(real["terminal_id"]),
                  "tx_datetime": (pd.Timestamp(real["tx_datetime"]) + pd.Timedelta(hours=1)).isoformat()}  # fmt: skip
    for labels, field in ((made_up, "transaction_id"), ([elsewhere], "terminal_id"), ([other_time], "tx_datetime")):
        answer = httpx.post(f"{world.base}/v1/labels", json={"labels": labels})
        assert answer.status_code == 422, answer.text
        assert {d["loc"][-1] for d in answer.json()["detail"]} == {field}, answer.text
    assert client.xlen(world.settings.events_stream) == stream_length
    client.close()
    assert world.score(probe, explain=True)["features"] == before


def test_labels_through_the_api_reach_the_running_flow_like_stream_labels(world: World) -> None:
    """A label posted to the API is read by the live feature flow and changes the terminal
    risk a later transaction sees, to the values the feature definitions give; twice, no change."""
    history = world.history
    probe_row = history.iloc[-1]
    terminal = int(probe_row["terminal_id"])
    when = pd.Timestamp(probe_row["tx_datetime"])
    # A genuine transaction of this terminal in its label window (t - 37 d, t - 7 d], judged fraud now.
    earlier = history[
        (history["terminal_id"] == terminal)
        & (history["tx_datetime"] <= when - pd.Timedelta(days=8))
        & (history["tx_datetime"] > when - pd.Timedelta(days=30))
        & (history["tx_fraud"] == 0)
    ]
    assert not earlier.empty
    judged = earlier.iloc[-1]
    probe = {**transaction_body(probe_row), "transaction_id": 88_000_001}
    before = world.score(probe, explain=True)["features"]
    flow = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "ingest", "--source", f"{world.settings.redis_url.rsplit('/', 1)[0]}/"
         f"{world.settings.events_stream}"],
        env=world.env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        label = {
            "transaction_id": int(judged["transaction_id"]),
            "terminal_id": terminal,
            "tx_datetime": pd.Timestamp(judged["tx_datetime"]).isoformat(),
            "tx_fraud": 1,
        }
        answer = httpx.post(f"{world.base}/v1/labels", json={"labels": [label]})
        assert answer.status_code == 202 and answer.json() == {"accepted": 1}
        risk = "terminal_id_risk_30day_window"
        assert wait_for(lambda: world.score(probe, explain=True)["features"][risk] != before[risk], timeout=60)
        after = world.score(probe, explain=True)["features"]
        relabelled = history.copy()
        relabelled.loc[relabelled["transaction_id"] == judged["transaction_id"], "tx_fraud"] = 1
        probe_frame = pd.DataFrame([{**probe_row.to_dict(), "transaction_id": 88_000_001, "tx_fraud": 0}])
        declared = load_declared(HANDBOOK_REPO)
        expected = compute_declared(declared, pd.concat([relabelled, probe_frame], ignore_index=True)).iloc[-1]
        terminal_features = [a.name for a in declared.aggregations if a.view == "terminal_risk"]
        assert len(terminal_features) == 6
        for name in terminal_features:
            assert after[name] == pytest.approx(float(expected[name]), abs=1e-9), name
        # The same label again: nothing changes.
        assert httpx.post(f"{world.base}/v1/labels", json={"labels": [label]}).status_code == 202
        time.sleep(2)
        assert world.score(probe, explain=True)["features"] == after
    finally:
        flow.send_signal(signal.SIGINT)
        out, err = flow.communicate(timeout=60)
    assert "Ingested" in out.decode(), err.decode()[-2000:]  # Ctrl-C ends with the summary
