"""Sinks of the feature flow: the online store, the offline event log, the dead letters."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.acks import Acknowledger
from flows.metrics import flow_metrics, redis_call
from flows.state import UpdateBatch
from vigil.events import DeadLetter
from vigil.offline.eventlog import EventLogWriter, is_empty, not_in_log
from vigil.online.connection import connect
from vigil.online.marker import mark_new_store, write_markers
from vigil.online.store import OnlineHistoryStore


@dataclass
class FlowStats:
    """Counts of what the sinks wrote, shared by the workers of one process."""

    transactions: int = 0
    labels: int = 0
    dead_letters: int = 0
    entity_writes: int = 0
    dead_reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def add_reasons(self, reasons: list[str]) -> None:
        with self._lock:
            for reason in reasons:
                self.dead_reasons[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "transactions": self.transactions,
            "labels": self.labels,
            "dead_letters": self.dead_letters,
            "entity_writes": self.entity_writes,
            "dead_reasons": dict(self.dead_reasons),
        }


class _OnlinePartition(StatelessSinkPartition[UpdateBatch]):
    def __init__(self, sink: OnlineStoreSink) -> None:
        self.store = OnlineHistoryStore(connect(sink.url), sink.project)
        self.sink = sink
        self.acknowledge = Acknowledger()
        if sink.replay is False:
            new = sink.offline_root is None or is_empty(sink.offline_root)
            redis_call(lambda: mark_new_store(self.store.client, sink.project, new), "marking a new store")

    def write_batch(self, items: list[UpdateBatch]) -> None:
        # Only the newest history of an entity needs writing.
        latest = {}
        tokens: list[Any] = []
        events = {"customer": 0, "terminal": 0}
        for batch in items:
            for update in batch.updates:
                latest[(update.kind, update.entity)] = update.history
            tokens.extend(batch.tokens)
            events[batch.kind] += batch.events

        def write() -> int:
            with self.store.client.pipeline(transaction=False) as pipe:
                count = self.store.queue_writes(pipe, ((k, e, h) for (k, e), h in latest.items()))
                pipe.execute()
            return count

        written = redis_call(write, "writing entity histories")
        metrics = flow_metrics()
        metrics.observe_written(tokens)  # readable now: the freshness of what came from a stream
        # Only once the writes are in (on a cluster, on every node they went to).
        self.acknowledge(tokens)
        for kind, count in events.items():
            if count:
                metrics.events.labels(kind).inc(count)
        self.sink.stats.add(transactions=events["customer"], labels=events["terminal"], entity_writes=written)
        if self.sink.progress is not None:
            self.sink.progress.update(events["customer"] + events["terminal"])

    def close(self) -> None:
        if self.sink.replay:
            # A replay that ran to its end: the store holds the file's history.
            redis_call(lambda: write_markers(self.store.client, self.sink.project, "replay"), "marking the store")
        self.acknowledge.close()
        self.store.client.close()


class OnlineStoreSink(DynamicSink[UpdateBatch]):
    """Writes entity histories into the Feast online store (Feast's Redis layout).

    `replay`: True for a file replay (the store is marked as holding data when it ends),
    False for a live source (a new store is marked at start), None: leave the markers
    alone (see `vigil.online.marker`). `build_flow` sets it from the source.
    """

    def __init__(
        self,
        url: str,
        project: str,
        stats: FlowStats | None = None,
        progress: Any = None,
        offline_root: str | Path | None = None,
    ) -> None:
        self.url, self.project, self.offline_root = url, project, offline_root
        self.stats = stats or FlowStats()
        self.progress = progress
        self.replay: bool | None = None

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OnlinePartition:
        return _OnlinePartition(self)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, url: str | None, stream: str, path: Path | None, stats: FlowStats, max_len: int) -> None:
        self.client = connect(url) if url else None
        self.stream, self.path, self.stats, self.max_len = stream, path, stats, max_len
        self._lock = threading.Lock()
        self.acknowledge = Acknowledger()

    def write_batch(self, items: list[DeadLetter]) -> None:
        client = self.client
        if client is not None:

            def send() -> None:
                with client.pipeline(transaction=False) as pipe:
                    for letter in items:
                        pipe.xadd(self.stream, letter.to_fields(), maxlen=self.max_len, approximate=True)
                    pipe.execute()

            redis_call(send, "writing dead letters")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                for letter in items:
                    out.write(json.dumps(letter.to_fields()) + "\n")
                out.flush()
                os.fsync(out.fileno())
        self.acknowledge([letter.token for letter in items if letter.token is not None])
        self.stats.add(dead_letters=len(items))
        self.stats.add_reasons([letter.reason for letter in items])

    def close(self) -> None:
        self.acknowledge.close()
        if self.client is not None:
            self.client.close()


class DeadLetterSink(DynamicSink[DeadLetter]):
    """Bad events with their reason and raw payload: a Redis stream and/or a JSON-lines file."""

    def __init__(
        self,
        url: str | None,
        stream: str,
        path: Path | None = None,
        stats: FlowStats | None = None,
        max_len: int = 1_000_000,
    ) -> None:
        self.url, self.stream, self.path, self.max_len = url, stream, path, max_len
        self.stats = stats or FlowStats()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.url, self.stream, self.path, self.stats, self.max_len)


@dataclass
class OfflineBatch:
    """Validated events for the offline log, and the source tokens they settle."""

    transactions: pd.DataFrame
    labels: pd.DataFrame
    tokens: list[Any] = field(default_factory=list)
    # Delivered before (a crash left them unacknowledged): their part may already be written.
    redelivered: bool = False

    def __len__(self) -> int:
        return len(self.transactions) + len(self.labels)


class _OfflinePartition(StatelessSinkPartition[OfflineBatch]):
    """Buffers events and writes parts on a writer thread, so a part being encoded and
    written never holds up the worker (the online path shares it: a synchronous write put
    ~100 ms on the freshness tail every flush). One write at a time, in order; a failed
    write fails the next `write_batch`, so the flow stops instead of losing events, and
    nothing is acknowledged before the part holding it is durable."""

    def __init__(self, sink: OfflineEventSink, worker: int) -> None:
        self.writer = EventLogWriter(sink.root, worker)
        self.sink = sink
        self.buffers: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self.redelivered: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self.rows = 0
        self.tokens: list[Any] = []
        self.since: float | None = None
        self.acknowledge = Acknowledger()
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-offline-writer")
        self.pending: Future[None] | None = None

    def write_batch(self, items: list[OfflineBatch]) -> None:
        self._check_pending(wait=False)
        for batch in items:
            buffers = self.redelivered if batch.redelivered else self.buffers
            for kind, frame in (("transactions", batch.transactions), ("labels", batch.labels)):
                if not frame.empty:
                    buffers[kind].append(frame)
                    self.rows += len(frame)
            self.tokens.extend(batch.tokens)
            if (batch.tokens or len(batch)) and self.since is None:
                self.since = time.monotonic()
        due = self.since is not None and time.monotonic() - self.since >= self.sink.flush_seconds
        if self.rows >= self.sink.flush_rows or due:
            if self.pending is not None and self.rows < 2 * self.sink.flush_rows:
                return  # the previous part is still being written: keep buffering a while
            self._check_pending(wait=True)  # bounded memory: at most one part in flight
            self.flush()

    def flush(self) -> None:
        buffers, again, tokens = dict(self.buffers), dict(self.redelivered), self.tokens
        self.buffers, self.redelivered = defaultdict(list), defaultdict(list)
        self.tokens, self.rows, self.since = [], 0, None
        if buffers or again or tokens:
            self.pending = self.background.submit(self._write, buffers, again, tokens)

    def _write(
        self, buffers: dict[str, list[pd.DataFrame]], again: dict[str, list[pd.DataFrame]], tokens: list[Any]
    ) -> None:
        for kind, frames in again.items():
            # Events delivered before a crash may sit in a part written just before it.
            fresh = not_in_log(self.sink.root, kind, pd.concat(frames, ignore_index=True))
            buffers.setdefault(kind, []).append(fresh)
        for kind, frames in buffers.items():
            self.writer.write(kind, pd.concat(frames, ignore_index=True))
        # The events are in the log (on disk, or published): now their sources may forget them.
        self.acknowledge(tokens)

    def _check_pending(self, wait: bool) -> None:
        if self.pending is not None and (wait or self.pending.done()):
            pending, self.pending = self.pending, None
            pending.result()  # re-raises a failed write here, on the worker

    def close(self) -> None:
        self._check_pending(wait=True)
        self.flush()
        self._check_pending(wait=True)
        self.background.shutdown()
        self.acknowledge.close()


class OfflineEventSink(DynamicSink[OfflineBatch]):
    """Appends validated events to the day-partitioned event log (`vigil.offline.eventlog`)
    for training, and acknowledges their source entries once a part holding them is durable.

    A part is written every `flush_rows` events, or `flush_seconds` after the first event
    it holds (live sources send a tick when idle, so a quiet stream is flushed too).
    """

    def __init__(self, root: str | Path, flush_rows: int = 250_000, flush_seconds: float = 5.0) -> None:
        self.root, self.flush_rows, self.flush_seconds = root, flush_rows, flush_seconds

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OfflinePartition:
        return _OfflinePartition(self, worker_index)
