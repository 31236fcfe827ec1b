"""Kafka as a source of the feature flow: one Bytewax partition per Kafka partition, and
a position per output kept as committed offsets of a consumer group.

Bytewax's Kafka connector keeps its position in Bytewax recovery snapshots; Vigil keeps
it where Kafka users look for it, the consumer group's committed offsets (`vigil-features`
for the online store, `vigil-features-offline` for the event log), so a restarted flow
(one process or several, any assignment of partitions to them) resumes where each output
had made its events durable, without a recovery store.

An offset may be committed only when every event before it is durable, and the online
output's events of one Kafka partition are written by whichever workers own their
entities, in any process. So the sinks record the offsets they made durable in Redis (a
sorted set per group and partition); the worker reading the partition advances the
committed offset over the longest run of delivered offsets all recorded, commits it,
and forgets them. After a stop or a crash the group re-reads from its committed offset,
and skips what its sinks had already recorded as durable: each event reaches each output
once (a crash between a sink's write and its record re-sends that batch; the online
updates are idempotent, and the offline log's readers keep one row per transaction id).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows import stopping
from flows.acks import KafkaToken, done_key
from flows.metrics import redis_call
from flows.sources import LINGER_SECONDS
from vigil.events import ALL_FIELDS, DeadLetter, RawBatch, records_to_batch
from vigil.online.connection import connect

COMMIT_SECONDS = 0.5


class _KafkaPartition(StatefulSourcePartition[RawBatch, Any]):
    """One Kafka partition: RawBatches with a token per message, offsets committed as they settle."""

    def __init__(self, source: KafkaEventSource, inner: Any, topic: str, partition: int) -> None:
        self.source, self.inner, self.topic, self.partition = source, inner, topic, partition
        self.delivered: collections.deque[int] = collections.deque()
        self.tracker = connect(source.tracker_url)
        self.key = done_key(source.group, topic, partition)
        self._last_commit = self._last_data = time.monotonic()
        self._ended: float | None = None

    def next_batch(self) -> list[RawBatch]:
        from bytewax.connectors.kafka import KafkaError

        if stopping.requested():
            raise StopIteration
        now = time.monotonic()
        if now - self._last_commit >= COMMIT_SECONDS:
            self._commit()
            self._last_commit = now
        try:
            messages = list(self.inner.next_batch())
        except StopIteration:
            # The end of the topic (tail=False): linger while the flow holds labels.
            self._ended = self._ended or now
            if not self.source.holding() or now - self._ended > LINGER_SECONDS:
                raise
            messages = []
        if not messages:
            every = 0.5 if self._ended else self.source.tick_seconds
            if every is not None and now - self._last_data >= every:
                self._last_data = now
                import pandas as pd

                return [RawBatch(pd.DataFrame(columns=list(ALL_FIELDS)), f"kafka:{self.topic}", tokens=[])]
            return []
        self._last_data = now
        records: list[Any] = []
        tokens: list[Any] = []
        errors: list[DeadLetter] = []
        brokers = ",".join(self.source.brokers)
        offsets = [int((m.msg.offset if isinstance(m, KafkaError) else m.offset) or 0) for m in messages]
        # Settled before a stop that came before their commit: already durable, not again.
        low, high = min(offsets), max(offsets)
        settled = {
            int(v) for v in redis_call(lambda: self.tracker.zrangebyscore(self.key, low, high), "reading offsets")
        }
        for message, offset in zip(messages, offsets, strict=True):
            self.delivered.append(offset)
            if offset in settled:
                continue
            stamp = (message.msg if isinstance(message, KafkaError) else message).timestamp
            arrived = int(stamp[1]) if stamp and stamp[0] else 0
            token = KafkaToken(
                brokers, self.source.group, self.topic, self.partition, offset, self.source.tracker_url, arrived
            )
            if isinstance(message, KafkaError):
                why = f"kafka error: {message.err}"
                errors.append(DeadLetter(why, repr(message.msg.value), f"kafka:{self.topic}", token=token))
            else:
                records.append(message.value or b"")
                tokens.append(token)
        batch = records_to_batch(records, f"kafka:{self.topic}", tokens, self.source.fields)
        batch.unparsed.extend(errors)
        return [batch]

    def _commit(self) -> None:
        """Commits past the longest run of delivered offsets that every sink has settled."""
        if not self.delivered:
            return
        last = self.delivered[-1]
        first = self.delivered[0]
        settled = {
            int(v) for v in redis_call(lambda: self.tracker.zrangebyscore(self.key, first, last), "reading offsets")
        }
        upto = None
        while self.delivered and self.delivered[0] in settled:
            upto = self.delivered.popleft()
        if upto is None:
            return
        from confluent_kafka import TopicPartition

        self.inner._consumer.commit(offsets=[TopicPartition(self.topic, self.partition, upto + 1)], asynchronous=False)
        redis_call(lambda: self.tracker.zremrangebyscore(self.key, "-inf", upto), "forgetting offsets")

    def next_awake(self) -> datetime | None:
        awake: datetime | None = self.inner.next_awake()
        return awake

    def snapshot(self) -> Any:
        return None  # the position lives in Kafka (committed offsets), not in Bytewax recovery

    def close(self) -> None:
        self._commit()
        self.inner.close()
        self.tracker.close()


class KafkaEventSource(FixedPartitionedSource[RawBatch, Any]):
    """A Kafka topic read through consumer group `group` (from its committed offsets; the
    earliest message when it has none). `tail=False` stops at the end of the topic."""

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        tracker_url: str,
        group: str = "vigil-features",
        tail: bool = True,
        batch_size: int = 2_000,
        add_config: dict[str, str] | None = None,
        tick_seconds: float | None = None,
    ) -> None:
        self.brokers, self.topic, self.tracker_url, self.group = brokers, topic, tracker_url, group
        self.tail, self.batch_size, self.add_config, self.tick_seconds = (
            tail,
            batch_size,
            add_config or {},
            tick_seconds,
        )
        # Set by the flow: whether it holds labels that wait for their payments.
        self.holding: Callable[[], bool] = lambda: False
        # The fields of a message the flow reads (a declared repo's own).
        self.fields: tuple[str, ...] = ALL_FIELDS

    def with_group(self, group: str, tick_seconds: float | None = 1.0) -> KafkaEventSource:
        """The same topic through another consumer group (another output's own position)."""
        other = KafkaEventSource(
            self.brokers, self.topic, self.tracker_url, group, self.tail, self.batch_size, self.add_config, tick_seconds
        )
        other.fields = self.fields
        return other

    def _inner(self) -> Any:
        from bytewax.connectors.kafka import KafkaSource
        from confluent_kafka import OFFSET_STORED

        config = {"group.id": self.group, "auto.offset.reset": "earliest", **self.add_config}
        return KafkaSource(
            self.brokers,
            [self.topic],
            tail=self.tail,
            starting_offset=OFFSET_STORED,
            add_config=config,
            batch_size=self.batch_size,
            raise_on_errors=False,
        )

    def list_parts(self) -> list[str]:
        parts: list[str] = self._inner().list_parts()
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _KafkaPartition:
        index, topic = for_part.split("-", 1)
        # The group's committed offset, not a Bytewax snapshot, says where to start.
        inner = self._inner().build_part(step_id, for_part, None)
        return _KafkaPartition(self, inner, topic, int(index))
