"""Sinks of the feature flow: the online store, the offline event log, the dead letters."""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.state import UpdateBatch
from vigil.events import DeadLetter
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


def acknowledge(pipe: redis.client.Pipeline, tokens: list[Any]) -> None:
    """XACKs Redis Stream entries (tokens are (stream, group, id)); other tokens need nothing."""
    by_stream: dict[tuple[str, str], list[str]] = defaultdict(list)
    for token in tokens:
        if isinstance(token, tuple) and len(token) == 3:
            by_stream[(token[0], token[1])].append(token[2])
    for (stream, group), ids in by_stream.items():
        pipe.xack(stream, group, *ids)


class _OnlinePartition(StatelessSinkPartition[UpdateBatch]):
    def __init__(self, url: str, project: str, stats: FlowStats, progress: Any) -> None:
        self.store = OnlineHistoryStore(redis.Redis.from_url(url), project)
        self.stats, self.progress = stats, progress

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
        with self.store.client.pipeline(transaction=False) as pipe:
            written = self.store.queue_writes(pipe, ((k, e, h) for (k, e), h in latest.items()))
            acknowledge(pipe, tokens)  # after the writes, in the same round trip
            pipe.execute()
        self.stats.add(transactions=events["customer"], labels=events["terminal"], entity_writes=written)
        if self.progress is not None:
            self.progress.update(events["customer"] + events["terminal"])

    def close(self) -> None:
        self.store.client.close()


class OnlineStoreSink(DynamicSink[UpdateBatch]):
    """Writes entity histories into the Feast online store (Feast's Redis layout)."""

    def __init__(self, url: str, project: str, stats: FlowStats | None = None, progress: Any = None) -> None:
        self.url, self.project = url, project
        self.stats = stats or FlowStats()
        self.progress = progress

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OnlinePartition:
        return _OnlinePartition(self.url, self.project, self.stats, self.progress)


class _DeadLetterPartition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, url: str | None, stream: str, path: Path | None, stats: FlowStats, max_len: int) -> None:
        self.client = redis.Redis.from_url(url) if url else None
        self.stream, self.path, self.stats, self.max_len = stream, path, stats, max_len
        self._lock = threading.Lock()

    def write_batch(self, items: list[DeadLetter]) -> None:
        if self.client is not None:
            with self.client.pipeline(transaction=False) as pipe:
                for letter in items:
                    pipe.xadd(self.stream, letter.to_fields(), maxlen=self.max_len, approximate=True)  # type: ignore[arg-type]
                acknowledge(pipe, [letter.token for letter in items])
                pipe.execute()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                for letter in items:
                    out.write(json.dumps(letter.to_fields()) + "\n")
        self.stats.add(dead_letters=len(items))
        self.stats.add_reasons([letter.reason for letter in items])

    def close(self) -> None:
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


class _OfflinePartition(StatelessSinkPartition[tuple[str, pd.DataFrame]]):
    def __init__(self, root: Path, worker: int, flush_rows: int) -> None:
        self.root, self.worker, self.flush_rows = root, worker, flush_rows
        self.buffers: dict[str, list[pd.DataFrame]] = defaultdict(list)
        self.sizes: dict[str, int] = defaultdict(int)

    def write_batch(self, items: list[tuple[str, pd.DataFrame]]) -> None:
        for kind, frame in items:
            self.buffers[kind].append(frame)
            self.sizes[kind] += len(frame)
            if self.sizes[kind] >= self.flush_rows:
                self._flush(kind)

    def _flush(self, kind: str) -> None:
        frames = self.buffers.pop(kind, [])
        self.sizes.pop(kind, None)
        if not frames:
            return
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        data = pd.concat(frames, ignore_index=True)
        name = f"part-{self.worker}-{uuid.uuid4().hex[:12]}.parquet"
        data.to_parquet(folder / f".{name}.tmp", index=False)
        (folder / f".{name}.tmp").rename(folder / name)  # readers never see half a file

    def close(self) -> None:
        for kind in list(self.buffers):
            self._flush(kind)


class OfflineEventSink(DynamicSink[tuple[str, pd.DataFrame]]):
    """Appends validated events to Parquet datasets (`transactions/`, `labels/`) for training.

    Replays append duplicates; readers deduplicate by transaction_id (see vigil.offline).
    """

    def __init__(self, root: Path, flush_rows: int = 250_000) -> None:
        self.root, self.flush_rows = root, flush_rows

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OfflinePartition:
        return _OfflinePartition(self.root, worker_index, self.flush_rows)
