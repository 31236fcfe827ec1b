"""Live sources: Redis Streams (consumer group, ack after write) and Kafka (librdkafka's mock cluster)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import redis
from bytewax.testing import run_main

from flows.features import build_flow, default_sinks
from flows.sinks import FlowStats
from flows.sources import KafkaEventSource, RedisStreamSource
from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.online.connection import connect
from vigil.online.store import OnlineHistoryStore
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
    run_main(build_flow(source, default_sinks(settings, stats), settings))
    assert stats.transactions + stats.labels == sent == 2 * len(frame)
    assert stats.dead_letters == 2
    assert redis_client.xpending(stream, "g")["pending"] == 0  # every entry acknowledged after its write
    assert_exact(settings, frame)


def test_unacknowledged_entries_are_redelivered_after_a_crash(
    settings: Settings, small_world: pd.DataFrame, redis_client: redis.Redis
) -> None:
    frame = two_weeks(small_world).iloc[:500]
    stream = f"{settings.key_prefix}:events"
    write_stream(frame, f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}", with_labels=False)
    source = RedisStreamSource(settings.redis_url, stream, group="g", batch_size=200, idle_timeout=1.0)
    crashed = source.build("events", 0, 1)
    crashed.next_batch()  # pending read (nothing yet)
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
        run_main(build_flow(KafkaEventSource(brokers, topic, tail=False), default_sinks(settings, stats), settings))
    finally:
        del producer
    assert stats.transactions == len(frame) and stats.dead_letters == 1
    # No labels were sent: customer features exact, terminal features empty.
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    ours = online_features(frame, store)
    expected = compute_features(frame.assign(tx_fraud=None))
    assert max(max_differences(ours, expected).values()) <= 1e-9
