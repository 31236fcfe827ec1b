"""Live sources: Redis Streams (consumer group, ack after write) and Kafka (librdkafka's mock cluster)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import redis
from bytewax.testing import run_main

from flows.features import build_flow, default_sinks
from flows.kafka import KafkaEventSource
from flows.metrics import flow_metrics
from flows.sinks import FlowStats
from flows.sources import RedisStreamSource
from tests.integration.serving_helpers import server_env
from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.online import seen
from vigil.online.connection import connect
from vigil.online.store import OnlineHistoryStore
from vigil.service_process import free_port
from vigil.settings import Settings
from vigil.stream_out import write_stream

pytestmark = pytest.mark.integration


def two_weeks(world: pd.DataFrame) -> pd.DataFrame:
    return world[world["tx_datetime"] < world["tx_datetime"].min() + pd.Timedelta(days=14)].iloc[:6000]


def assert_exact(settings: Settings, frame: pd.DataFrame) -> None:
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    diffs = max_differences(online_features(frame, store), compute_features(frame))
    assert max(diffs.values()) <= 1e-9, diffs


def test_redis_stream_is_consumed_acknowledged_and_exact(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    frame = two_weeks(small_world)
    stream = f"{settings.key_prefix}:events"
    uri = f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}"
    sent = write_stream(frame, uri)
    redis_client.xadd(stream, {"transaction_id": "1", "tx_amount": "oops"})
    redis_client.xadd(stream, {"json": "{not json"})
    stats = FlowStats()
    source = RedisStreamSource(settings.redis_url, stream, group="g", idle_timeout=1.0)
    source.trim_seconds = 0.1
    run_main(build_flow(source, default_sinks(settings, stats), settings))
    assert stats.transactions + stats.labels == sent == 2 * len(frame)
    assert stats.dead_letters == 2
    assert redis_client.xpending(stream, "g")["pending"] == 0  # every entry acknowledged after its write
    # Bounded: what both groups are done with is trimmed (the offline log acknowledges when its
    # part is written, at the end of that run), never an entry a group still holds.
    assert redis_client.xlen(stream) == sent + 2
    again = RedisStreamSource(settings.redis_url, stream, group="g", idle_timeout=1.0)
    again.trim_seconds = 0.1
    run_main(build_flow(again, default_sinks(settings), settings))
    assert redis_client.xlen(stream) < sent // 2, redis_client.xlen(stream)
    assert_exact(settings, frame)
    lag = {tuple(s.labels.values()): s.value for m in flow_metrics().lag.collect() for s in m.samples}
    assert (stream, "g") in lag  # the consumer-lag gauge is reported (Redis 7 knows the lag)


def test_unacknowledged_entries_are_redelivered_after_a_crash(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    frame = two_weeks(small_world).iloc[:500]
    stream = f"{settings.key_prefix}:events"
    write_stream(frame, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}", with_labels=False)
    source = RedisStreamSource(settings.redis_url, stream, group="g", batch_size=200, idle_timeout=1.0)
    crashed = source.build("events", 0, 1)
    assert sum(len(b) for b in crashed.next_batch()) == 200  # delivered, never written nor acknowledged
    crashed.close()
    assert redis_client.xpending(stream, "g")["pending"] == 200
    run_main(build_flow(source, default_sinks(settings), settings))  # the same consumer name restarts
    assert redis_client.xpending(stream, "g")["pending"] == 0
    assert_exact(settings, frame)


def test_kafka_topic_through_the_mock_cluster(settings: Settings, small_world: pd.DataFrame) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    frame = two_weeks(small_world).iloc[:3000]
    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1})
    try:
        brokers = [f"{b.host}:{b.port}" for b in producer.list_topics(timeout=10).brokers.values()]
        topic = f"{settings.key_prefix}-tx"
        for row in frame.itertuples():
            producer.produce(
                topic,
                json.dumps(
                    {
                        "transaction_id": row.transaction_id,
                        "tx_datetime": row.tx_datetime.isoformat(),
                        "customer_id": row.customer_id,
                        "terminal_id": row.terminal_id,
                        "tx_amount": row.tx_amount,
                    }
                ).encode(),
            )
        producer.produce(topic, b"not json")
        assert producer.flush(10) == 0
        stats = FlowStats()
        source = KafkaEventSource(brokers, topic, settings.redis_url, tail=False)
        run_main(build_flow(source, default_sinks(settings, stats), settings))
    finally:
        del producer
    assert stats.transactions == len(frame) and stats.dead_letters == 1
    # No labels were sent: customer features exact, terminal features empty.
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    ours = online_features(frame, store)
    expected = compute_features(frame.assign(tx_fraud=None))
    assert max(max_differences(ours, expected).values()) <= 1e-9


def kafka_events(frame: pd.DataFrame) -> list[tuple[bytes, bytes]]:
    """(key, value) of each transaction and of its label, keyed by the entity it updates."""
    out = []
    for row in frame.itertuples():
        when = row.tx_datetime.isoformat()
        tx = {"transaction_id": row.transaction_id, "tx_datetime": when, "customer_id": row.customer_id,
              "terminal_id": row.terminal_id, "tx_amount": row.tx_amount}  # fmt: skip
        label = {"kind": "label", "transaction_id": row.transaction_id, "tx_datetime": when,
                 "terminal_id": row.terminal_id, "tx_fraud": row.tx_fraud}  # fmt: skip
        out.append((str(row.customer_id).encode(), json.dumps(tx).encode()))
        out.append((str(row.terminal_id).encode(), json.dumps(label).encode()))
    return out


def test_kafka_four_partitions_two_processes_resume_where_they_stopped(
    settings: Settings, small_world: pd.DataFrame
) -> None:
    """A topic of 4 partitions on 3 mock brokers, read by two cooperating flow processes (the
    README's command), stopped after half the events and started again: every event reaches
    the online store and the offline log once, and the features equal the definitions."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from flows.acks import done_key
    from vigil.ingest import run_ingest
    from vigil.offline.eventlog import list_parts, read_log

    frame = two_weeks(small_world).iloc[:4000]
    mock = confluent_kafka.Producer({"test.mock.num.brokers": 3})  # the cluster lives as long as it does
    brokers = [f"{b.host}:{b.port}" for b in mock.list_topics(timeout=10).brokers.values()]
    topic = f"{settings.key_prefix}-events"
    events = kafka_events(frame)
    half = len(events) // 2

    def produce(part: list[tuple[bytes, bytes]]) -> None:
        for key, value in part:
            mock.produce(topic, value, key)
        assert mock.flush(10) == 0

    def ingest() -> int:
        result = run_ingest(
            settings, lambda n: KafkaEventSource(brokers, topic, settings.redis_url, tail=False), 2,
            show_progress=False,
        )  # fmt: skip
        return result.transactions + result.labels

    def ingest_as_the_readme_says() -> None:
        """Two cooperating `python -m bytewax.run` processes, the command README.md gives."""
        ports = [free_port(), free_port()]
        addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
        env = {**server_env(settings), "VIGIL_SOURCE": f"kafka://{','.join(brokers)}/{topic}", "VIGIL_STOP_AT_END": "1"}
        command = [sys.executable, "-m", "bytewax.run", "flows.features:build_flow()", "-a", addresses]
        processes = [subprocess.Popen([*command, "-i", str(i)], env=env, stderr=subprocess.PIPE) for i in range(2)]
        for process in processes:
            _, errors = process.communicate(timeout=120)
            assert process.returncode == 0, errors.decode()[-2000:]

    produce(events[:half])
    assert len(mock.list_topics(topic, timeout=10).topics[topic].partitions) == 4
    first = ingest()
    produce(events[half:])
    ingest_as_the_readme_says()  # from the committed offsets: only what came since
    second = ingest()  # nothing left
    assert first == half and second == 0
    assert_exact(settings, frame)
    transactions = read_log(settings.offline_dir, "transactions")
    labels = read_log(settings.offline_dir, "labels")
    assert len(transactions) == len(labels) == len(frame)
    written = sum(len(pd.read_parquet(p.path)) for p in list_parts(settings.offline_dir, "transactions"))
    assert written == len(frame)  # not doubled on disk either
    client = connect(settings.redis_url)
    for group in ("vigil-features", "vigil-features-offline"):
        client.delete(*(done_key(group, topic, p) for p in range(4)))
    client.close()


def test_a_stream_consumer_killed_mid_stream_loses_nothing(settings: Settings, small_world: pd.DataFrame) -> None:
    """`kill -9` while the flow consumes a Redis stream, then a restart: the online store and
    the offline event log each hold every event once (the log's readers keep one row per
    transaction id; a part written just before the kill may be written again)."""
    import os
    import signal
    import time

    from vigil.offline.eventlog import list_parts, read_log

    frame = two_weeks(small_world)
    stream = f"{settings.key_prefix}:events"
    sent = write_stream(frame, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}")
    source = f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}"
    command = [sys.executable, "-m", "vigil.cli", "ingest", "--source", source]
    env = {**server_env(settings), "VIGIL_STOP_AT_END": "1"}
    client = connect(settings.redis_url)

    def acknowledged(group: str) -> int:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        info = groups.get(group)
        return 0 if info is None else int(info["entries-read"] or 0) - int(info["pending"])

    victim = subprocess.Popen(command, env={**env, "VIGIL_STOP_AT_END": "0"}, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while acknowledged("vigil-features") < sent // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)  # mid-stream: whatever was buffered or half-written
    victim.wait(timeout=10)
    assert 0 < acknowledged("vigil-features") < sent
    restarted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert client.xpending(stream, "vigil-features")["pending"] == 0
    assert client.xpending(stream, "vigil-features-offline")["pending"] == 0
    client.close()
    assert_exact(settings, frame)
    transactions = read_log(settings.offline_dir, "transactions")
    labels = read_log(settings.offline_dir, "labels")
    assert sorted(transactions["transaction_id"]) == sorted(frame["transaction_id"])
    assert sorted(labels["transaction_id"]) == sorted(frame["transaction_id"])
    for kind in ("transactions", "labels"):  # and once on disk: no part repeats re-delivered events
        assert sum(len(pd.read_parquet(p.path)) for p in list_parts(settings.offline_dir, kind)) == len(frame)


def test_a_source_at_its_end_waits_only_for_entries_it_can_claim(settings: Settings, redis_client: redis.Redis) -> None:
    """Entries held by another worker of the flow are that worker's to acknowledge (its sinks
    may do so only when the flow ends): waiting for them would never end. Entries held by a
    consumer the flow does not run are claimed, so they are waited for."""
    stream = f"{settings.key_prefix}:events"
    for i in range(3):
        redis_client.xadd(stream, {"json": json.dumps({"n": i})})
    source = RedisStreamSource(settings.redis_url, stream, idle_timeout=0.1)
    partition = source.build("events", 0, 2)  # worker 0 of 2
    try:
        redis_client.xreadgroup(source.group, f"{source.group}-1", {stream: ">"}, count=1)  # worker 1 of this flow
        assert not partition._others_pending()
        redis_client.xreadgroup(source.group, f"{source.group}-5", {stream: ">"}, count=1)  # a run with 6 workers
        assert partition._others_pending()
    finally:
        partition.close()


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_restart_with_other_workers_leaves_nothing_pending(
    settings: Settings, small_world: pd.DataFrame, before: int, after: int
) -> None:
    """`kill -9` of a flow with `before` workers, restarted with `after`: every event reaches
    the online store and the offline log (the entries held by consumers nobody runs any more
    are claimed), and nothing is left pending."""
    import os
    import signal
    import time

    from vigil.offline.eventlog import list_parts, read_log

    frame = two_weeks(small_world)
    stream = f"{settings.key_prefix}:events"
    source = f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}"
    sent = write_stream(frame, source)
    env = {**server_env(settings), "VIGIL_STOP_AT_END": "1", "VIGIL_STREAM_CLAIM_IDLE_SECONDS": "8"}
    command = [sys.executable, "-m", "vigil.cli", "ingest", "--source", source, "--no-progress"]
    client = connect(settings.redis_url)

    def acknowledged(group: str) -> int:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        info = groups.get(group)
        return 0 if info is None else int(info["entries-read"] or 0) - int(info["pending"])

    victim = subprocess.Popen(
        [*command, "--workers", str(before)], env={**env, "VIGIL_STOP_AT_END": "0"}, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while acknowledged("vigil-features") < sent // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)  # every process of the flow, mid-stream
    victim.wait(timeout=10)
    held = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, "vigil-features")}
    assert 0 < acknowledged("vigil-features") < sent, held
    restarted = subprocess.run(
        [*command, "--workers", str(after)], env=env, capture_output=True, text=True, timeout=180
    )
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "dead letters: 0" in restarted.stdout, restarted.stdout
    for group in ("vigil-features", "vigil-features-offline"):
        assert client.xpending(stream, group)["pending"] == 0, (group, held)
    client.close()
    assert_exact(settings, frame)
    transactions = read_log(settings.offline_dir, "transactions")
    assert sorted(transactions["transaction_id"]) == sorted(frame["transaction_id"])
    rows = sum(len(pd.read_parquet(p.path)) for p in list_parts(settings.offline_dir, "transactions"))
    assert rows == len(frame)  # each event once on disk too: re-delivered events are not written twice


def test_an_event_far_ahead_of_the_stream_changes_no_feature(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    """A label dated 2200 for a busy terminal, and a payment dated 2200 for a busy customer,
    each in a run of its own after a restart: dead letters with the reason, and every
    feature as it was (histories keep facts within a horizon of their newest one)."""
    frame = two_weeks(small_world)
    stream = f"{settings.key_prefix}:events"
    write_stream(frame, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}")
    source = RedisStreamSource(settings.redis_url, stream, idle_timeout=1.0)
    run_main(build_flow(source, default_sinks(settings), settings))
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    probe = frame.tail(200)
    before = online_features(probe, store)
    terminal = int(frame["terminal_id"].value_counts().index[0])
    customer = int(frame["customer_id"].value_counts().index[0])
    redis_client.xadd(stream, {"kind": "label", "transaction_id": "990000001", "terminal_id": str(terminal),
                               "tx_datetime": "2200-12-31T00:00:00", "tx_fraud": "1"})  # fmt: skip
    redis_client.xadd(stream, {"transaction_id": "990000002", "customer_id": str(customer), "terminal_id": "1",
                               "tx_amount": "5.0", "tx_datetime": "2200-12-31T00:00:00"})  # fmt: skip
    stats = FlowStats()
    run_main(build_flow(source, default_sinks(settings, stats), settings))  # the watermark came from Redis
    assert stats.dead_letters == 2 and stats.transactions == stats.labels == 0
    assert set(stats.dead_reasons) == {"tx_datetime is more than 1 day ahead of the stream's event time"}
    after = online_features(probe, store)
    assert max(max_differences(after, before).values()) == 0.0
    assert redis_client.xpending(stream, "vigil-features")["pending"] == 0


def test_labels_on_the_stream_for_payments_never_seen_are_held_then_dead_letters(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    """Thirty labels for made-up ids on a busy terminal, one for a real payment at another
    time: the terminal's features do not move, each label becomes a dead letter saying why
    (the unknown ones after being held for their payment), and nothing stays pending."""
    settings = settings.model_copy(update={"label_hold_seconds": 2.0})
    frame = two_weeks(small_world)
    stream = f"{settings.key_prefix}:events"
    write_stream(frame, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}")
    source = RedisStreamSource(settings.redis_url, stream, idle_timeout=1.0)
    run_main(build_flow(source, default_sinks(settings), settings))
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    terminal = int(frame["terminal_id"].value_counts().index[0])
    probe = frame[frame["terminal_id"] == terminal].tail(5)
    before = online_features(probe, store)
    when = (probe["tx_datetime"].iloc[-1] - pd.Timedelta(days=10)).isoformat()
    for i in range(30):
        redis_client.xadd(stream, {"kind": "label", "transaction_id": str(96_000_000 + i),
                                   "terminal_id": str(terminal), "tx_datetime": when, "tx_fraud": "1"})  # fmt: skip
    real = frame.iloc[100]
    redis_client.xadd(stream, {"kind": "label", "transaction_id": str(real["transaction_id"]),
                               "terminal_id": str(real["terminal_id"]), "tx_fraud": "1",
                               "tx_datetime": (real["tx_datetime"] + pd.Timedelta(hours=1)).isoformat()})  # fmt: skip
    stats = FlowStats()
    run_main(build_flow(RedisStreamSource(settings.redis_url, stream, idle_timeout=1.0, tick_seconds=0.5),
                        default_sinks(settings, stats), settings))  # fmt: skip
    assert stats.labels == 0 and stats.dead_letters == 31, stats.as_dict()
    reasons = {reason.split(" (held")[0]: n for reason, n in stats.dead_reasons.items()}
    assert reasons == {seen.UNKNOWN: 30, seen.OTHER_TIME: 1}
    assert max(max_differences(online_features(probe, store), before).values()) == 0.0
    for group in ("vigil-features", "vigil-features-offline"):
        assert redis_client.xpending(stream, group)["pending"] == 0
