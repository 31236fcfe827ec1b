"""Acknowledgements: a source hands out a token per event, a sink settles it once what the
event feeds is durable, and the source's own server records it.

A Redis Streams token is acknowledged (XACK) on the server and database the entry was
read from, whatever REDIS_URL says. A Kafka token is recorded as settled, and the worker
reading its partition commits the consumer group's offset (see `flows.kafka`). Each
output of the flow reads through a consumer group of its own, so each one's position is
kept by the server and a crash re-delivers exactly what that output had not made durable.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

from vigil.online.connection import connect


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
    tracker_url: str  # the Redis where sinks record settled offsets (see flows.kafka)
    arrived_ms: int = 0  # the message's timestamp (freshness metric)


def done_key(group: str, topic: str, partition: int) -> str:
    """The Redis sorted set of settled offsets of one (group, topic, partition)."""
    return f"vigil:kafka-done:{group}:{topic}:{partition}"


class Acknowledger:
    """Settles tokens on their sources' servers (one client per server, opened on first use)."""

    def __init__(self) -> None:
        self._redis: dict[str, Any] = {}

    def __call__(self, tokens: Iterable[Any]) -> None:
        streams: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        settled: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for token in tokens:
            if isinstance(token, RedisToken):
                streams[(token.url, token.stream, token.group)].append(token.entry_id)
            elif isinstance(token, KafkaToken):
                key = done_key(token.group, token.topic, token.partition)
                settled[(token.tracker_url, key)][str(token.offset)] = token.offset
        from flows.metrics import redis_call  # (flows.metrics imports the token types above)

        for (url, stream, group), ids in streams.items():
            redis_call(lambda: self._client(url).xack(stream, group, *ids), "acknowledging stream entries")  # noqa: B023
        for (url, key), offsets in settled.items():
            # The reading worker commits the group's offset once a run of them is settled.
            redis_call(lambda: self._client(url).zadd(key, offsets), "recording settled offsets")  # noqa: B023

    def _client(self, url: str) -> Any:
        client = self._redis.get(url)
        if client is None:
            client = self._redis[url] = connect(url)
        return client

    def close(self) -> None:
        for client in self._redis.values():
            client.close()
        self._redis.clear()
