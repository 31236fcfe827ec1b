"""Acknowledgements: a source hands out a token per event, a sink settles it once what the
event feeds is durable, and the source's own server records it.

A Redis Streams token is acknowledged (XACK) on the server and database the entry was
read from, whatever REDIS_URL says; a Kafka token commits the offset after it for its
consumer group. Each output of the flow reads through a consumer group of its own, so
each one's position is kept by the server and a crash re-delivers exactly what that
output had not made durable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from vigil.online.connection import SyncClient, connect


class RedisToken(NamedTuple):
    url: str
    stream: str
    group: str
    entry_id: str


class KafkaToken(NamedTuple):
    brokers: str
    group: str
    topic: str
    partition: int
    offset: int


class Acknowledger:
    """Settles tokens on their sources' servers (one client per server, opened on first use)."""

    def __init__(self) -> None:
        self._redis: dict[str, SyncClient] = {}
        self._kafka: dict[tuple[str, str], Any] = {}

    def __call__(self, tokens: Iterable[Any]) -> None:
        streams: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        offsets: dict[tuple[str, str], dict[tuple[str, int], int]] = defaultdict(dict)
        for token in tokens:
            if isinstance(token, RedisToken):
                streams[(token.url, token.stream, token.group)].append(token.entry_id)
            elif isinstance(token, KafkaToken):
                position = offsets[(token.brokers, token.group)]
                key = (token.topic, token.partition)
                position[key] = max(position.get(key, -1), token.offset)
        for (url, stream, group), ids in streams.items():
            client = self._redis.get(url)
            if client is None:
                client = self._redis[url] = connect(url)
            client.xack(stream, group, *ids)
        for (brokers, group), position in offsets.items():
            self._commit(brokers, group, position)

    def _commit(self, brokers: str, group: str, position: dict[tuple[str, int], int]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = self._kafka.get((brokers, group))
        if consumer is None:
            consumer = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
            self._kafka[(brokers, group)] = consumer
        # The committed offset is the next one to read.
        consumer.commit(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in position.items()], asynchronous=False)

    def close(self) -> None:
        for client in self._redis.values():
            client.close()
        for consumer in self._kafka.values():
            consumer.close()
        self._redis.clear()
        self._kafka.clear()
