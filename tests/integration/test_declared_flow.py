"""A declared repo's feature flow (Bytewax) on a file replay and on a Redis stream: what
it writes online gives every event the features the backfill gives it; bad records are
dead letters naming the field; every entry is acknowledged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import redis
from bytewax.testing import run_main

from flows.declared import build_flow, default_sinks, stream_source
from tests.declared_cards import card_events, write_repo
from tests.integration.serving_helpers import server_env, worst_from_backfill
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import logged_events
from vigil.settings import PROJECT_ROOT, Settings


def vigil(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env=server_env(settings, **env), timeout=600,
    )  # fmt: skip


def test_a_replay_through_the_cli_equals_the_backfill(settings: Settings, tmp_path: Path) -> None:
    """`vigil ingest --transactions FILE --workers 2` on the repo VIGIL_FEATURE_REPO names (the
    contract's form; `vigil repo ingest --repo R --events FILE` is the same): the file split by
    event id over two processes, then its features online equal the backfill's."""
    repo = str(write_repo(tmp_path / "cards"))
    events = tmp_path / "cards.parquet"
    card_events(4_000, seed=11).to_parquet(events)
    replay = ("ingest", "--transactions", str(events), "--label-delay-days", "2")
    ingested = vigil(settings, *replay, "--workers", "2", VIGIL_FEATURE_REPO=repo)
    assert ingested.returncode == 0, ingested.stderr
    assert "Ingested 4,000 events and" in ingested.stdout and "with 2 worker(s); dead letters: 0" in ingested.stdout
    backfill = tmp_path / "backfill.parquet"
    done = vigil(settings, "repo", "compute", "--repo", repo, "--events", str(events), "--out", str(backfill))
    assert done.returncode == 0, done.stderr
    online = vigil(
        settings, "repo", "compute", "--repo", repo, "--events", str(events), "--online", "--reference", str(backfill)
    )
    assert online.returncode == 0, online.stdout + online.stderr
    assert "MATCH: 4,000 events compared" in online.stdout


def as_entry(row: dict[str, object]) -> dict[str, str]:
    return {"json": json.dumps({k: v for k, v in row.items() if v is not None and v == v}, default=str)}


def test_a_stream_with_bad_entries_loses_nothing(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    declared = load_declared(write_repo(tmp_path / "cards"))
    events = card_events(2_000, seed=12)
    stream = f"{settings.key_prefix}:events"
    rows = events.drop(columns="fraud").assign(at=events["at"].map(pd.Timestamp.isoformat))
    labels = events[events["fraud"].notna()]
    with redis_client.pipeline(transaction=False) as pipe:
        for row in rows.to_dict("records"):
            pipe.xadd(stream, as_entry({"kind": "event", **row}))
        for row in labels.to_dict("records"):
            label = {"kind": "label", "id": row["id"], "at": row["at"].isoformat(), "merchant": row["merchant"]}
            pipe.xadd(stream, as_entry({**label, "fraud": int(row["fraud"])}))
        pipe.xadd(stream, as_entry({"kind": "event", **rows.iloc[0].to_dict(), "amount": "a lot"}))
        wrong_label = {"kind": "label", "id": 1, "at": "2026-03-02T00:00:00", "merchant": "m001", "fraud": 2}
        pipe.xadd(stream, as_entry(wrong_label))
        pipe.xadd(stream, as_entry({"kind": "event", "id": 99_999, "card": "card-1"}))
        pipe.xadd(stream, as_entry({"kind": "event", **rows.iloc[1].to_dict(), "at": "2200-12-31T00:00:00"}))
        pipe.xadd(stream, {"json": "{not json"})
        # A label for an event never seen, one for a seen event at another time.
        never = {"kind": "label", "id": 999_999, "at": "2026-03-02T00:00:00", "merchant": "m001", "fraud": 1}
        pipe.xadd(stream, as_entry(never))
        first = events.iloc[0]
        moved = (first["at"] + pd.Timedelta(minutes=1)).isoformat()
        elsewhen = {"kind": "label", "id": int(first["id"]), "at": moved, "merchant": first["merchant"], "fraud": 1}
        pipe.xadd(stream, as_entry(elsewhen))
        # Its id and time, but another merchant's: counted there, it would blame that merchant.
        elsewhere = {**elsewhen, "at": first["at"].isoformat(), "merchant": "m-elsewhere"}
        pipe.xadd(stream, as_entry(elsewhere))
        pipe.execute()
    source = stream_source(f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}", declared, settings)
    source.idle_timeout = 1.0
    impatient = settings.model_copy(update={"label_hold_seconds": 0.0})  # unknown events: dead letters at once
    sinks = default_sinks(impatient, declared)
    run_main(build_flow(source, sinks, impatient, declared))
    assert (sinks.stats.transactions, sinks.stats.labels) == (len(events), len(labels))
    reasons = sorted(sinks.stats.dead_reasons)
    unknown = [r for r in reasons if r.startswith("id: no event with this id at this time was seen (held ")]
    assert len(unknown) == 1, reasons
    reasons.remove(unknown[0])
    assert reasons == [
        "amount: not a finite number ('a lot')",
        "at: missing",
        "at: more than 86400 s ahead of the wall clock (2200-12-31T00:00:00+00:00)",
        "at: not the time of the event it labels",
        "fraud: not 0 or 1 (2)",
        "merchant: not the merchant of the event it labels",
        "payload is not valid JSON",
    ], reasons
    assert redis_client.xpending(stream, source.group)["pending"] == 0
    # The offline event log holds every valid event once, with its accepted label.
    logged = logged_events(declared, impatient.event_log)
    assert sorted(logged["id"]) == sorted(events["id"])
    assert int(logged["fraud"].notna().sum()) == len(labels)
    store = DeclaredOnlineStore(redis_client, settings.key_prefix, declared)
    ours = store.features(events)
    expected = compute_declared(declared, events)
    joined = ours.merge(expected, on="id", suffixes=("", "_expected"))
    assert len(joined) == len(events)
    for name in declared.default_service.features:
        assert (joined[name] - joined[f"{name}_expected"]).abs().max() <= 1e-9, name


def test_a_kafka_topic_through_the_mock_cluster(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """The same flow on a Kafka topic (librdkafka's mock cluster): events keyed by card,
    labels after them; read to its end, every event's features equal the backfill's."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    declared = load_declared(write_repo(tmp_path / "cards"))
    events = card_events(1_500, seed=13)
    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1})
    try:
        brokers = ",".join(f"{b.host}:{b.port}" for b in producer.list_topics(timeout=10).brokers.values())
        topic = f"{settings.key_prefix}-payments"
        for row in events.drop(columns="fraud").to_dict("records"):
            producer.produce(topic, as_entry({"kind": "event", **row})["json"].encode(), key=row["card"].encode())
        for row in events[events["fraud"].notna()].to_dict("records"):
            label = {
                "kind": "label",
                "id": row["id"],
                "at": row["at"],
                "merchant": row["merchant"],
                "fraud": int(row["fraud"]),
            }
            producer.produce(topic, as_entry(label)["json"].encode(), key=row["merchant"].encode())
        assert producer.flush(10) == 0
        at_end = settings.model_copy(update={"stop_at_end": True})
        source = stream_source(f"kafka://{brokers}/{topic}", declared, at_end)
        sinks = default_sinks(at_end, declared)
        run_main(build_flow(source, sinks, at_end, declared))
    finally:
        del producer
    assert (sinks.stats.transactions, sinks.stats.dead_letters) == (len(events), 0)
    ours = DeclaredOnlineStore(redis_client, settings.key_prefix, declared).features(events)
    joined = ours.merge(compute_declared(declared, events), on="id", suffixes=("", "_expected"))
    assert len(joined) == len(events)
    for name in declared.default_service.features:
        assert (joined[name] - joined[f"{name}_expected"]).abs().max() <= 1e-9, name


def test_a_stream_flow_killed_then_restarted_with_other_workers_loses_nothing(
    settings: Settings, small_world: pd.DataFrame
) -> None:
    """`kill -9` of `vigil ingest --source` with two workers mid-stream, restarted with one:
    every event and label counts once online and in the offline event log (entries held by
    the consumer nobody runs any more are claimed), and nothing is left pending."""
    import os
    import signal
    import time

    from vigil.online.connection import connect
    from vigil.stream_out import write_stream

    frame = small_world[small_world["tx_datetime"] < small_world["tx_datetime"].min() + pd.Timedelta(days=14)]
    frame = frame.iloc[:6000]
    source = f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"
    sent = write_stream(frame, source)
    env = server_env(settings, VIGIL_STOP_AT_END="1", VIGIL_STREAM_CLAIM_IDLE_SECONDS="8")
    command = [sys.executable, "-m", "vigil.cli", "ingest", "--source", source, "--no-progress"]
    client = connect(settings.redis_url)
    group = "vigil-declared"

    def acknowledged() -> int:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(settings.events_stream)}
        info = groups.get(group)
        return 0 if info is None else int(info["entries-read"] or 0) - int(info["pending"])

    victim = subprocess.Popen(
        [*command, "--workers", "2"], env={**env, "VIGIL_STOP_AT_END": "0"}, stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while acknowledged() < sent // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)  # every process of the flow, mid-stream
    victim.wait(timeout=10)
    assert 0 < acknowledged() < sent
    restarted = subprocess.run([*command, "--workers", "1"], env=env, capture_output=True, text=True, timeout=180)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "dead letters: 0" in restarted.stdout, restarted.stdout
    assert client.xpending(settings.events_stream, group)["pending"] == 0
    client.close()
    assert worst_from_backfill(settings, frame) <= 1e-9
    logged = logged_events(load_declared(settings.feature_repo), settings.event_log)
    assert sorted(logged["transaction_id"]) == sorted(frame["transaction_id"])
    assert int(logged["tx_fraud"].notna().sum()) == len(frame)
