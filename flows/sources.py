"""Event sources for the feature flow: file replay, Redis Streams (Kafka: flows.kafka).

Every source emits `RawBatch`es; validation happens in the flow, so all sources share
one set of rules and one dead-letter path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
from bytewax.inputs import DynamicSource, FixedPartitionedSource, StatefulSourcePartition, StatelessSourcePartition

from flows import stopping
from flows.acks import RedisToken
from flows.metrics import flow_metrics, redis_call
from vigil.events import ALL_FIELDS, LABEL, TRANSACTION, DeadLetter, RawBatch, records_to_batch, validate
from vigil.features.spec import DAY_SECONDS
from vigil.files import read_records
from vigil.online.connection import connect

# ---------------------------------------------------------------- file replay


def replay_order(frame: pd.DataFrame, label_delay_days: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Transactions plus one label event per known `tx_fraud`, in delivery order.

    A label is delivered `label_delay_days` after its transaction; at equal times labels
    come first. Only valid rows are split into a transaction and a label: a bad row
    travels whole, so the flow's validation dead-letters it once and nothing of it is
    ingested. Returns the events and their delivery times (unix seconds).
    """
    rows = frame.copy()
    rows["kind"] = rows["kind"].fillna(TRANSACTION) if "kind" in rows else TRANSACTION
    checked = validate(RawBatch(rows, "replay"))
    good_tx = checked.transactions
    seconds = np.full(len(rows), np.iinfo(np.int64).min, dtype=np.int64)  # bad rows: at the front
    position = pd.Series(np.arange(len(rows)), index=rows.index)
    seconds[position[good_tx.index].to_numpy()] = good_tx["ts"].to_numpy()
    seconds[position[checked.labels.index].to_numpy()] = checked.labels["ts"].to_numpy()

    with_label = good_tx.index[rows.loc[good_tx.index, "tx_fraud"].notna().to_numpy()]
    labels = rows.loc[with_label, ["transaction_id", "tx_datetime", "terminal_id", "tx_fraud"]].copy()
    labels["kind"] = LABEL
    rows.loc[good_tx.index, "tx_fraud"] = None  # the label travels separately
    delay = round(label_delay_days * DAY_SECONDS)
    events = pd.concat(
        [labels.reindex(columns=list(ALL_FIELDS)), rows.reindex(columns=list(ALL_FIELDS))], ignore_index=True
    )
    delivery = np.concatenate([seconds[position[with_label].to_numpy()] + delay, seconds])
    label_first = np.concatenate([np.zeros(len(labels), np.int8), np.ones(len(rows), np.int8)])
    order = np.lexsort((np.arange(len(events)), label_first, delivery))
    return events.iloc[order].reset_index(drop=True), delivery[order]


def shard_of(events: pd.DataFrame, shards: int) -> np.ndarray:
    """Shard by the entity the event updates (customer or terminal); unparseable ids -> 0."""
    if shards == 1:
        return np.zeros(len(events), dtype=np.int64)
    entity = np.where(events["kind"] == LABEL, events["terminal_id"], events["customer_id"])
    numeric = pd.to_numeric(pd.Series(entity), errors="coerce").fillna(0).to_numpy()
    return (np.abs(numeric).astype(np.int64)) % shards


@dataclass
class _ReplayPartition(StatefulSourcePartition[RawBatch, int]):
    events: pd.DataFrame
    delivery: np.ndarray
    offset: int
    batch_size: int
    speed: float | None
    source: str
    unparsed: list[DeadLetter]

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        valid = self.delivery[self.delivery > np.iinfo(np.int64).min]
        self._first_event = int(valid[0]) if valid.size else 0

    def next_batch(self) -> list[RawBatch]:
        if stopping.requested():
            raise StopIteration
        if self.unparsed:
            batch = RawBatch(self.events.iloc[0:0], self.source, unparsed=self.unparsed)
            self.unparsed = []
            return [batch]
        if self.offset >= len(self.events):
            raise StopIteration
        end = min(self.offset + self.batch_size, len(self.events))
        if self.speed:
            # Release only what event time allows at N x speed.
            due = self._first_event + (time.monotonic() - self._started) * self.speed
            end = self.offset + int(np.searchsorted(self.delivery[self.offset : end], due, "right"))
            if end == self.offset:
                return []
        batch = RawBatch(self.events.iloc[self.offset : end], self.source)
        self.offset = end
        return [batch]

    def next_awake(self) -> datetime | None:
        if not self.speed or self.offset >= len(self.events):
            return None
        wait = (self.delivery[self.offset] - self._first_event) / self.speed - (time.monotonic() - self._started)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, min(wait, 0.05)))

    def snapshot(self) -> int:
        return self.offset


class FileReplaySource(FixedPartitionedSource[RawBatch, int]):
    """Replays a transactions file, then stops.

    Each row becomes a transaction event, and its `tx_fraud` a label event delivered
    `label_delay_days` later (all pending labels are delivered when the file ends).
    `speed=None` replays as fast as possible; `speed=N` paces delivery at N x event time.
    `shards` splits the file by entity so that several workers read and validate in
    parallel; resume state is the offset within a shard.
    """

    def __init__(
        self,
        path: Path | str,
        label_delay_days: float = 7.0,
        speed: float | None = None,
        shards: int = 1,
        batch_size: int = 32_768,
    ) -> None:
        self.path = Path(path)
        self.label_delay_days = label_delay_days
        self.speed = speed
        self.shards = max(1, shards)
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [f"shard-{i}" for i in range(self.shards)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        frame, unparsed = read_records(self.path)
        events, delivery = replay_order(frame, self.label_delay_days)
        shard = int(for_part.rsplit("-", 1)[1])
        mine = shard_of(events, self.shards) == shard
        # Lines that were not even records go out once, as dead letters of shard 0.
        first_time = not resume_state
        return _ReplayPartition(
            events[mine].reset_index(drop=True),
            delivery[mine],
            resume_state or 0,
            self.batch_size,
            self.speed,
            str(self.path),
            unparsed if shard == 0 and first_time else [],
        )


# ---------------------------------------------------------------- Redis Streams

log = logging.getLogger("vigil.flow")

LAG_SECONDS = 5.0
CLAIM_SECONDS = 5.0
TRIM_SECONDS = 10.0
# How long a source that reached its end goes on ticking while the flow holds labels.
LINGER_SECONDS = 10.0


def _holding_nothing() -> bool:
    return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_stream_fields(fields: dict[bytes, bytes]) -> Any:
    """A stream entry is either one `json` field holding the event, or flat fields."""
    if b"json" in fields:
        return fields[b"json"]
    return {k.decode(): v.decode() for k, v in fields.items()}


class _RedisStreamPartition(StatelessSourcePartition[RawBatch]):
    """One worker's consumer of the group.

    It first reads its own backlog (entries delivered to this consumer name before a crash
    and never acknowledged) once, from the oldest to the newest, then new entries. Every
    `CLAIM_SECONDS` it takes over the pending entries of the group's other consumers that
    have not been seen for `claim_idle` seconds, unless they are names of this flow's own
    workers (`<group>-<index>` below the worker count: each reads its own backlog): the
    workers of a run with more workers, a process or host that is gone. So no entry stays
    with a consumer nobody runs, and a slow worker's entries are not read twice.
    """

    def __init__(self, source: RedisStreamSource, consumer: str, workers: int = 1) -> None:
        self.source = source
        self.client = connect(source.url)
        self.consumer, self.workers = consumer, workers
        # Where the next read of this consumer's own backlog starts; None once it is read.
        self._backlog_after: str | None = "0"
        self._last_data = self._last_tick = self._last_read = time.monotonic()
        self._last_lag = 0.0
        self._last_claim = float("-inf")
        self._last_trim = time.monotonic()
        self._trim_refused = False
        self._idle = False
        redis_call(self._create_group, "creating the consumer group")

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(self.source.stream, self.source.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def next_batch(self) -> list[RawBatch]:
        if stopping.requested():
            raise StopIteration
        source = self.source
        if self._idle and source.idle_poll is not None and time.monotonic() - self._last_read < source.idle_poll:
            # Not `next_awake`: Bytewax 0.21 then stalls every epoch close for longer the
            # longer the flow runs (measured: +20 ms per second of a 2,000 events/s stream).
            return []
        self._last_read = time.monotonic()
        entries, redelivered = redis_call(self._read, f"reading {source.stream}")
        now = time.monotonic()
        if now - self._last_lag >= LAG_SECONDS:
            self._last_lag = now
            self._report_lag()
        # Caught up (less than a full batch): a patient group may wait before the next read.
        self._idle = len(entries) < source.batch_size and self._backlog_after is None
        if not entries:
            if source.idle_timeout is not None and now - self._last_data > source.idle_timeout:
                if redis_call(self._others_pending, f"reading {source.stream}'s pending entries"):
                    self._last_data = now  # entries held by consumers that are gone: claim them first
                elif source.holding() and now - self._last_data < source.idle_timeout + LINGER_SECONDS:
                    pass  # labels wait for payments still being recorded: ticks let them be decided
                else:
                    raise StopIteration
            every = 0.5 if now - self._last_data > (source.idle_timeout or float("inf")) else source.tick_seconds
            if every is not None and now - self._last_tick >= every:
                # An empty batch lets time-based sinks (the offline log) flush on a quiet stream.
                self._last_tick = now
                return [RawBatch(pd.DataFrame(columns=list(ALL_FIELDS)), f"redis:{source.stream}", tokens=[])]
            return []
        self._last_data = self._last_tick = now
        live = [(entry_id, fields) for entry_id, fields in entries if fields]
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            # Pending entries whose data was trimmed away: nothing left to deliver.
            redis_call(lambda: self.client.xack(source.stream, source.group, *gone), "acknowledging trimmed entries")
        records = [parse_stream_fields(fields) for _, fields in live]
        tokens = [RedisToken(source.url, source.stream, source.group, _text(entry_id)) for entry_id, _ in live]
        batch = records_to_batch(records, f"redis:{source.stream}", tokens, source.fields)
        batch.redelivered = redelivered
        return [batch]

    def _read(self) -> tuple[list[Any], bool]:
        """Entries to deliver, and whether they were delivered before (a backlog or a claim)."""
        source = self.source
        # Never blocks: a blocked read would hold the whole worker (every operator runs on its
        # thread). An empty read is polled again by Bytewax 1 ms later.
        if self._backlog_after is not None:
            # The backlog once, oldest first: entries with ids after the last one read.
            reply = self.client.xreadgroup(
                source.group, self.consumer, {source.stream: self._backlog_after}, count=source.batch_size
            )
            entries: list[Any] = reply[0][1] if reply else []
            self._backlog_after = _text(entries[-1][0]) if entries else None
            if entries:
                return entries, True
        if source.trim_groups and time.monotonic() - self._last_trim >= source.trim_seconds:
            self._last_trim = time.monotonic()
            self._trim()
        if time.monotonic() - self._last_claim >= CLAIM_SECONDS:
            self._last_claim = time.monotonic()
            claimed = self._claim_departed()
            if claimed:
                return claimed, True
        reply = self.client.xreadgroup(source.group, self.consumer, {source.stream: ">"}, count=source.batch_size)
        return (reply[0][1] if reply else []), False

    def _trim(self) -> None:
        """Drops the entries every consumer group of the stream is done with: older than each
        group's oldest unacknowledged entry (or, with none, its last read). Approximate trimming
        removes only whole internal nodes below that id: never an entry a group still needs.
        Nothing is trimmed until this flow's groups (`trim_groups`) all exist."""
        stream = self.source.stream
        groups = self.client.xinfo_groups(stream)
        if not self.source.trim_groups <= {_text(g["name"]) for g in groups}:
            return
        bounds: list[tuple[int, int]] = []
        for group in groups:
            if int(group["pending"]):
                oldest = _text(self.client.xpending(stream, _text(group["name"]))["min"])
            else:
                oldest = _text(group["last-delivered-id"])
            ms, _, seq = oldest.partition("-")
            bounds.append((int(ms), int(seq or 0)))
        low = min(bounds)
        if low > (0, 0):
            try:
                self.client.xtrim(stream, minid=f"{low[0]}-{low[1]}", approximate=True)
            except redis.ResponseError as error:  # a server before 6.2 has no MINID: the stream stays whole
                if not self._trim_refused:
                    log.warning("not trimming %s: %s", stream, error)
                    self._trim_refused = True

    def _ours(self, name: str) -> bool:
        """A consumer name of one of this flow's workers: it reads its own backlog when it
        starts (a stalled worker's entries are never taken from it)."""
        prefix, _, index = name.rpartition("-")
        return prefix == self.source.group and index.isdigit() and int(index) < self.workers

    def _others_pending(self) -> bool:
        """Whether consumers that are not this flow's workers hold entries nobody has
        acknowledged: a source at its end waits to claim them. Entries a worker of this flow
        holds are its own to finish; its sinks may acknowledge them only when the flow ends,
        so waiting for them would never end."""
        summary = self.client.xpending(self.source.stream, self.source.group)
        return any(not self._ours(_text(c["name"])) and int(c["pending"]) for c in summary.get("consumers") or [])

    def _claim_departed(self) -> list[Any]:
        """Pending entries of consumers idle for `claim_idle` seconds, now this consumer's.

        A running consumer reads at least every `idle_poll` and so is never that idle; XCLAIM's
        own idle test makes sure that of two workers claiming at once, each entry goes to one.
        """
        idle_ms = int(self.source.claim_idle * 1000)
        try:
            consumers = self.client.xinfo_consumers(self.source.stream, self.source.group)
        except redis.ResponseError:
            return []
        claimed: list[Any] = []
        for info in consumers:
            name = _text(info["name"])
            if self._ours(name) or int(info["pending"]) == 0 or int(info["idle"]) < idle_ms:
                continue
            pending = self.client.xpending_range(
                self.source.stream, self.source.group, "-", "+", self.source.batch_size - len(claimed), name
            )
            ids = [row["message_id"] for row in pending]
            if ids:
                claimed += self.client.xclaim(self.source.stream, self.source.group, self.consumer, idle_ms, ids)
            if len(claimed) >= self.source.batch_size:
                self._last_claim = float("-inf")  # more to take: again on the next read
                break
        if claimed:
            flow_metrics().claimed.labels(self.source.stream, self.source.group).inc(len(claimed))
        return claimed

    def _report_lag(self) -> None:
        """The group's lag (Redis 7 reports it; older servers leave the gauge unset)."""
        try:
            groups = self.client.xinfo_groups(self.source.stream)
        except redis.RedisError:
            return
        for group in groups:
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == self.source.group and group.get("lag") is not None:
                flow_metrics().lag.labels(self.source.stream, name).set(int(group["lag"]))

    def close(self) -> None:
        self.client.close()


class RedisStreamSource(DynamicSource[RawBatch]):
    """Reads a Redis stream through a consumer group, one consumer per worker.

    Entries are acknowledged (on the server they were read from) by the sinks, only after
    their effect is durable, so a crash re-delivers them (at-least-once; the updates are
    idempotent). `idle_timeout` (seconds) ends the source after that long without data
    (tests, bench); `tick_seconds` sends an empty batch that often while idle; `idle_poll`
    (seconds) waits that long after a read that caught up with the stream (less than a full
    batch), so a patient group reads fewer, larger batches; None: read again at once (or
    Bytewax's 1 ms after an empty read), for freshness. `claim_idle` (seconds): a consumer
    of the group not seen for that long is gone, and its pending entries are taken over
    (`VIGIL_STREAM_CLAIM_IDLE_SECONDS`, default 30: well above the longest a running
    consumer holds an entry, the offline log's 5 s flush).
    """

    def __init__(
        self,
        url: str,
        stream: str,
        group: str = "vigil-features",
        batch_size: int = 2_000,
        idle_timeout: float | None = None,
        tick_seconds: float | None = None,
        idle_poll: float | None = None,
        claim_idle: float = 30.0,
    ) -> None:
        self.url, self.stream, self.group = url, stream, group
        self.batch_size, self.idle_timeout = batch_size, idle_timeout
        self.tick_seconds, self.idle_poll = tick_seconds, idle_poll
        self.claim_idle = claim_idle
        # Set by the flow: whether it holds labels that wait for their payments.
        self.holding: Callable[[], bool] = _holding_nothing
        # Set by the flow: its consumer groups; once they all exist, what every group of the
        # stream is done with is trimmed (a bounded stream, never an entry still needed).
        self.trim_groups: frozenset[str] = frozenset()
        self.trim_seconds = TRIM_SECONDS
        # The fields of an entry the flow reads (a declared repo's own).
        self.fields: tuple[str, ...] = ALL_FIELDS

    def with_group(self, group: str, tick_seconds: float | None = 1.0) -> RedisStreamSource:
        """The same stream through another consumer group (another output's own position):
        the offline log's, which is not in a hurry: once caught up it reads every 50 ms, in
        larger batches, leaving the worker to the online path (validation costs per batch)."""
        other = RedisStreamSource(
            self.url, self.stream, group, self.batch_size, self.idle_timeout, tick_seconds, 0.05, self.claim_idle
        )
        other.fields = self.fields
        return other

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RedisStreamPartition:
        return _RedisStreamPartition(self, f"{self.group}-{worker_index}", worker_count)


def __getattr__(name: str) -> Any:
    # KafkaEventSource lives in flows.kafka (it imports confluent_kafka); kept reachable here.
    if name == "KafkaEventSource":
        from flows.kafka import KafkaEventSource

        return KafkaEventSource
    raise AttributeError(name)
