"""Live sources under the default repo's flow: Redis Streams (consumer group, acknowledged
after the write) and Kafka (librdkafka's mock cluster), across crashes and restarts."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import redis
from bytewax.testing import run_main

from flows.acks import done_key
from flows.declared import build_flow, declared_flow, default_sinks, stream_source
from flows.sources import RedisStreamSource
from tests.integration.serving_helpers import server_env, worst_from_backfill
from vigil.declared import load_declared
from vigil.declared.training import logged_events
from vigil.ingest import run_ingest
from vigil.online.connection import connect
from vigil.service_process import free_port
from vigil.settings import Settings
from vigil.stream_out import write_stream

pytestmark = pytest.mark.integration


def two_weeks(world: pd.DataFrame) -> pd.DataFrame:
    return world[world["tx_datetime"] < world["tx_datetime"].min() + pd.Timedelta(days=14)].iloc[:6000]


def test_unacknowledged_entries_are_redelivered_after_a_crash(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    frame = two_weeks(small_world).iloc[:500]
    declared = load_declared(settings.feature_repo)
    uri = f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"
    write_stream(frame, uri, with_labels=False)
    source = stream_source(uri, declared, settings.model_copy(update={"stop_at_end": True}))
    source.batch_size = 200
    crashed = source.build("events", 0, 1)
    assert sum(len(b.frame) for b in crashed.next_batch()) == 200  # delivered, never written nor acknowledged
    crashed.close()
    assert redis_client.xpending(settings.events_stream, source.group)["pending"] == 200
    run_main(build_flow(source, default_sinks(settings, declared), settings, declared))  # the same consumer restarts
    assert redis_client.xpending(settings.events_stream, source.group)["pending"] == 0
    assert worst_from_backfill(settings, frame.assign(tx_fraud=None)) <= 1e-9


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
    """A topic of 4 partitions on 3 mock brokers, read by two cooperating flow processes
    (`vigil ingest --workers 2`, then the `python -m bytewax.run` command of flows/declared.py),
    stopped after half the events and started again: every event reaches the online store and
    the offline log once, and the features equal the backfill's."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    frame = two_weeks(small_world).iloc[:4000]
    mock = confluent_kafka.Producer({"test.mock.num.brokers": 3})  # the cluster lives as long as it does
    brokers = ",".join(f"{b.host}:{b.port}" for b in mock.list_topics(timeout=10).brokers.values())
    topic = f"{settings.key_prefix}-events"
    events = kafka_events(frame)
    half = len(events) // 2
    declared = load_declared(settings.feature_repo)
    at_end = settings.model_copy(update={"stop_at_end": True})

    def produce(part: list[tuple[bytes, bytes]]) -> None:
        for key, value in part:
            mock.produce(topic, value, key)
        assert mock.flush(10) == 0

    def ingest() -> int:
        result = run_ingest(
            at_end, lambda n: stream_source(f"kafka://{brokers}/{topic}", declared, at_end), 2,
            show_progress=False, make_flow=declared_flow(at_end, declared),
        )  # fmt: skip
        return result.transactions + result.labels

    def ingest_with_bytewax_run() -> None:
        """Two cooperating `python -m bytewax.run` processes."""
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
        env = {**server_env(settings), "VIGIL_SOURCE": f"kafka://{brokers}/{topic}", "VIGIL_STOP_AT_END": "1"}
        command = [sys.executable, "-m", "bytewax.run", "flows.declared:build_flow()", "-a", addresses]
        processes = [subprocess.Popen([*command, "-i", str(i)], env=env, stderr=subprocess.PIPE) for i in range(2)]
        for process in processes:
            _, errors = process.communicate(timeout=120)
            assert process.returncode == 0, errors.decode()[-2000:]

    produce(events[:half])
    assert len(mock.list_topics(topic, timeout=10).topics[topic].partitions) == 4
    first = ingest()
    produce(events[half:])
    ingest_with_bytewax_run()  # from the committed offsets: only what came since
    second = ingest()  # nothing left
    assert first == half and second == 0
    assert worst_from_backfill(settings, frame) <= 1e-9
    logged = logged_events(declared, settings.event_log)
    assert sorted(logged["transaction_id"]) == sorted(frame["transaction_id"])
    assert int(logged["tx_fraud"].notna().sum()) == len(frame)
    client = connect(settings.redis_url)
    client.delete(*(done_key("vigil-declared", topic, p) for p in range(4)))
    client.close()


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
