"""The streaming feature flow.

    events -> validate -> dead letters ............................> dead-letter sink
                      \\-> partition by entity -> merge histories -> online store (Feast layout)
                      \\-> typed events ............................> offline event log

A live source is read twice, through a consumer group per output (`vigil-features` for
the online store and the dead letters, `vigil-features-offline` for the event log): each
output acknowledges what it has made durable, and a crash re-delivers to each exactly
what it had not.

Run it with `vigil ingest`, or `python -m bytewax.run "flows.features:build_flow()"`
(source from VIGIL_SOURCE, default the Redis stream `<prefix>:events`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import numpy as np
import pandas as pd
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import Sink

from flows.acks import KafkaToken, RedisToken
from flows.metrics import redis_call
from flows.sinks import DeadLetterSink, FlowStats, OfflineBatch, OfflineEventSink, OnlineStoreSink
from flows.sources import FileReplaySource, RedisStreamSource
from flows.state import (
    CUSTOMER,
    PARTITIONS_PER_KIND,
    TERMINAL,
    EntityEvents,
    PartitionState,
    UpdateBatch,
    apply_events,
)
from vigil.event_clock import EventClock
from vigil.events import DeadLetter, RawBatch, ValidatedBatch, label_event, validate
from vigil.features.history import EntityHistory
from vigil.online import seen
from vigil.online.connection import connect
from vigil.online.store import OnlineHistoryStore
from vigil.settings import Settings
from vigil.uris import parse_source_uri


@dataclass
class FlowSinks:
    """Where the flow's three outputs go (tests swap in TestingSink)."""

    online: Sink[UpdateBatch]
    dead_letters: Sink[DeadLetter]
    offline: Sink[OfflineBatch] | None = None


def default_sinks(settings: Settings, stats: FlowStats | None = None, progress: Any = None) -> FlowSinks:
    stats = stats or FlowStats()
    return FlowSinks(
        online=OnlineStoreSink(settings.redis_url, settings.feast_project, stats, progress, settings.event_log),
        dead_letters=DeadLetterSink(
            settings.redis_url, settings.deadletter_stream, settings.data_dir / "deadletter.jsonl", stats
        ),
        offline=OfflineEventSink(settings.event_log),
    )


def source_from_uri(uri: str, settings: Settings, label_delay_days: float = 7.0) -> Source[RawBatch]:
    """`redis://HOST:PORT/STREAM`, `kafka://BROKER[,BROKER]/TOPIC`, or a file path."""
    stream = parse_source_uri(uri)
    if stream is None:
        return FileReplaySource(uri.removeprefix("file://"), label_delay_days)
    if stream.kind == "redis":
        return RedisStreamSource(
            stream.address,
            stream.name,
            idle_timeout=1.0 if settings.stop_at_end else None,
            tick_seconds=1.0,  # held labels are decided on a quiet stream too
            claim_idle=settings.stream_claim_idle_seconds,
        )
    from flows.kafka import KafkaEventSource

    return KafkaEventSource(
        stream.address.split(","), stream.name, settings.redis_url, tail=not settings.stop_at_end, tick_seconds=1.0
    )


def arrival_seconds(token: Any, default: float) -> float:
    """When an event reached its stream (unix seconds), from its acknowledgement token."""
    if isinstance(token, RedisToken):
        return int(token.entry_id.split("-", 1)[0]) / 1000
    if isinstance(token, KafkaToken) and token.arrived_ms > 0:
        return token.arrived_ms / 1000
    return default


class EventCheck:
    """The flow's first step: `validate` (with the event-time bound), then the payments
    recorded and the labels checked against them (`vigil.online.seen`).

    A label whose time differs from its recorded payment's is a dead letter at once. One
    whose payment is not recorded (yet) is held, unacknowledged, and checked again on every
    later batch (after that batch's payments are recorded), for `hold_seconds`: a payment
    may still be in flight on another partition or worker. Then it is a dead letter with the
    reason. A stop leaves held labels unacknowledged, so they are delivered again.

    Each output of a live source has its own (its own acknowledgements); both record the
    payments, so both agree on every label. A replay's labels come from its own rows: its
    payments are recorded, its labels not checked.
    """

    def __init__(
        self, settings: Settings, clock: EventClock, check_labels: bool, hold_seconds: float, max_held: int = 100_000
    ) -> None:
        self.url, self.prefix = settings.redis_url, settings.key_prefix
        self.clock, self.check_labels = clock, check_labels
        self.hold_seconds, self.max_held = hold_seconds, max_held
        self._client: Any = None
        self._lock = threading.Lock()
        self._held: list[tuple[float, pd.DataFrame, str]] = []  # (since, one label row with its token, source)

    def __call__(self, raw: RawBatch) -> ValidatedBatch:
        batch = validate(raw, self.clock)
        with self._lock:
            if batch.transactions.empty and batch.labels.empty and not self._held:
                return batch
            client = self._connect()
            redis_call(lambda: seen.record(client, self.prefix, batch.transactions), "recording payments")
            if self.check_labels:
                self._check(client, batch, raw.source)
        return batch

    def holding(self) -> bool:
        """Whether labels wait for their payments (a source that reached its end lingers)."""
        return bool(self._held)

    def _check(self, client: Any, batch: ValidatedBatch, source: str) -> None:
        now = time.time()
        held, self._held = self._held, []
        sources = [src for _, _, src in held] + [source] * len(batch.labels)
        # A label's wait counts from its arrival in the stream: across restarts too.
        arrived = [arrival_seconds(token, now) for token in batch.labels["token"].tolist()]
        since = np.array([t for t, _, _ in held] + arrived)
        labels = pd.concat([row for _, row, _ in held] + [batch.labels]) if held else batch.labels
        if labels.empty:
            return
        reasons = redis_call(lambda: seen.check(client, self.prefix, labels), "checking labels")
        keep = np.array([reason is None for reason in reasons], bool)
        for i in np.flatnonzero(~keep).tolist():
            reason = reasons[i]
            waited = now - since[i]
            if reason == seen.UNKNOWN and waited < self.hold_seconds and len(self._held) < self.max_held:
                self._held.append((since[i], labels.iloc[i : i + 1], sources[i]))
                continue
            row = labels.iloc[i]
            when = datetime.fromtimestamp(int(row["ts"]), UTC)
            payload = label_event(row["transaction_id"], row["terminal_id"], when, row["tx_fraud"])
            if reason == seen.UNKNOWN:
                reason = f"{reason} (held {waited:.0f} s)"
            batch.dead.append(DeadLetter(str(reason), json.dumps(payload), sources[i], token=row["token"]))
        batch.labels = labels[keep]

    def _connect(self) -> Any:
        if self._client is None:
            self._client = connect(self.url)
        return self._client


class HistoryLoader:
    """Loads histories the flow has not seen in this run from the online store."""

    def __init__(self, url: str, project: str) -> None:
        self.url, self.project = url, project
        self._store: OnlineHistoryStore | None = None
        self._lock = threading.Lock()

    def __call__(self, kind: str, entities: Sequence[int]) -> list[EntityHistory]:
        with self._lock:
            if self._store is None:
                self._store = OnlineHistoryStore(connect(self.url), self.project)
            store = self._store
            return redis_call(lambda: store.read(kind, entities), "reading entity histories")


class HistoryCache(StatefulLogic[EntityEvents, UpdateBatch, None]):
    """One partition's histories, merged with its events (`apply_events`).

    The online store holds the state: the cache is rebuilt from it after a restart, so the
    snapshot Bytewax takes at every epoch is empty. (stateful_map deep-copies the whole
    cache there: tens of milliseconds every 10 s, on the freshness tail.)
    """

    def __init__(self, load: HistoryLoader, max_entities: int | None) -> None:
        self.state = PartitionState(max_entities=max_entities)
        self.load = load

    def on_item(self, value: EntityEvents) -> tuple[list[UpdateBatch], bool]:
        return [apply_events(self.state, value, self.load)], StatefulLogic.RETAIN

    def snapshot(self) -> None:
        return None


def split_by_partition(batch: ValidatedBatch) -> Iterator[tuple[str, EntityEvents]]:
    """Customer updates from transactions, terminal updates from labels, keyed by partition."""
    tx, labels = batch.transactions, batch.labels
    for kind, frame, entity_col, value_col in (
        (CUSTOMER, tx, "customer_id", "tx_amount"),
        (TERMINAL, labels, "terminal_id", "tx_fraud"),
    ):
        if frame.empty:
            continue
        entity = frame[entity_col].to_numpy(np.int64)
        part = entity % PARTITIONS_PER_KIND
        order = np.argsort(part, kind="stable")
        part_sorted = part[order]
        bounds = np.flatnonzero(np.r_[True, part_sorted[1:] != part_sorted[:-1], True])
        ts = frame["ts"].to_numpy(np.int64)
        tx_id = frame["transaction_id"].to_numpy(np.int64)
        value = frame[value_col].to_numpy(np.float64)
        tokens = frame["token"].to_numpy(object)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            rows = order[lo:hi]
            mine = [t for t in tokens[rows].tolist() if t is not None]
            yield (
                f"{kind}:{int(part_sorted[lo])}",  # one partition key per (kind, entity % PARTITIONS_PER_KIND)
                EntityEvents(kind, entity[rows], ts[rows], tx_id[rows], value[rows], mine),
            )


def offline_events(batch: ValidatedBatch) -> list[OfflineBatch]:
    """The batch's valid events for the offline log, with every token of the batch (dead
    letters' too: the log's consumer group must settle them as well)."""
    tokens = [t for frame in (batch.transactions, batch.labels) for t in frame["token"].tolist() if t is not None]
    tokens += [letter.token for letter in batch.dead if letter.token is not None]
    return [
        OfflineBatch(
            batch.transactions.drop(columns=["token"]), batch.labels.drop(columns=["token"]), tokens, batch.redelivered
        )
    ]


def build_flow(
    source: Source[RawBatch] | None = None,
    sinks: FlowSinks | None = None,
    settings: Settings | None = None,
) -> Dataflow:
    """The feature flow from `source` into `sinks` (defaults from settings and VIGIL_SOURCE)."""
    settings = settings or Settings()
    if source is None:
        source = source_from_uri(
            os.environ.get("VIGIL_SOURCE", f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"),
            settings,
        )
    sinks = sinks or default_sinks(settings)
    # A live source that reaches its end (VIGIL_STOP_AT_END) lingers while labels wait for
    # their payments, which other partitions or processes may still be recording.
    holders: list[EventCheck] = []
    if hasattr(source, "holding"):
        source.holding = lambda: any(c.holding() for c in holders)
    if isinstance(sinks.online, OnlineStoreSink):
        sinks.online.replay = isinstance(source, FileReplaySource)
    load = HistoryLoader(settings.redis_url, settings.feast_project)

    # A replay is measured against its own file's progress; a live stream against the
    # watermark its flow keeps in Redis across restarts.
    replay = isinstance(source, FileReplaySource)
    clock = EventClock(
        None if replay else settings.redis_url, settings.event_time_key, settings.event_time_tolerance_seconds
    )
    check = EventCheck(settings, clock, check_labels=not replay, hold_seconds=settings.label_hold_seconds)
    holders.append(check)

    flow = Dataflow("vigil_features")
    raw = op.input("events", flow, source)
    checked = op.map("validate", raw, check)
    dead = op.flat_map("dead_letters", checked, lambda batch: batch.dead)
    op.output("dead_letter_out", dead, sinks.dead_letters)
    keyed = op.flat_map("partition", checked, split_by_partition)
    cache = settings.flow_cache_entities
    updates = op.stateful("histories", keyed, lambda _resume: HistoryCache(load, cache))
    op.output("online_out", op.key_rm("unkey", updates), sinks.online)
    if sinks.offline is not None:
        from flows.kafka import KafkaEventSource

        if isinstance(source, RedisStreamSource | KafkaEventSource):
            offline_source = source.with_group(f"{source.group}-offline")
            if isinstance(source, RedisStreamSource):
                source.trim_groups = frozenset({source.group, offline_source.group})
            offline_source.holding = source.holding
            own = op.input("offline_events_in", flow, offline_source)
            check_again = EventCheck(settings, clock, check_labels=True, hold_seconds=settings.label_hold_seconds)
            holders.append(check_again)
            checked_again = op.map("validate_offline", own, check_again)
            op.output("offline_out", op.flat_map("offline_events", checked_again, offline_events), sinks.offline)
        else:
            op.output("offline_out", op.flat_map("offline_events", checked, offline_events), sinks.offline)
    return flow
