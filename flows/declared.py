"""The feature flow of a declared repo (VIGIL_FEATURE_REPO): raw records checked against
the repo's schema (dead letters name the field), then each valid event's facts appended to
the online store (`vigil.declared.online`), each label checked against the recorded events
(held a while for an event still in flight); events and labels are stored online and in the
offline event log (what `vigil train`, `vigil promote` and `vigil monitor` read), and only
then acknowledged.

    python -m bytewax.run "flows.declared:build_flow()"

reads the stream VIGIL_SOURCE (default `<REDIS_URL>/<VIGIL_KEY_PREFIX>:<repo>:events`, the
repo being its folder's name; `<VIGIL_KEY_PREFIX>:events` for the checkout's feature_repo/).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from flows.acks import Acknowledger
from flows.features import arrival_seconds
from flows.metrics import flow_metrics, redis_call
from flows.sinks import DeadLetterSink, FlowStats
from flows.sources import RedisStreamSource, _ReplayPartition
from vigil.declared import DeclaredFeatures, load_declared
from vigil.declared.compute import nanoseconds
from vigil.declared.events import KIND, LABEL, Checked, check_batch, label_fields, record_fields
from vigil.declared.online import DeclaredOnlineStore
from vigil.events import DeadLetter, RawBatch
from vigil.files import file_format, read_table
from vigil.offline.eventlog import LOG_TS, EventLogWriter, record_filled, was_filled
from vigil.online.connection import connect
from vigil.online.marker import mark_new_store
from vigil.settings import Settings


def replay_frame(
    declared: DeclaredFeatures, rows: pd.DataFrame, label_delay_days: float
) -> tuple[pd.DataFrame, np.ndarray]:
    """A file's rows as the records a stream would deliver, in delivery order: each row an
    event at its own time, and its label (when the row has one) `label_delay_days` later."""
    fields = record_fields(declared)
    events = rows.reindex(columns=[f for f in fields if f in declared.events.fields]).assign(**{KIND: "event"})
    at = nanoseconds(rows[declared.events.time])
    parts, delivery = [events], [at]
    if declared.labels is not None and declared.labels.label in rows.columns:
        labelled = rows[declared.labels.label].notna().to_numpy(bool)
        schema = declared.labels
        labels = rows.loc[labelled].rename(
            columns={declared.events.event_id: schema.event_id, declared.events.time: schema.time}
        )
        parts.append(labels.reindex(columns=list(label_fields(declared))).assign(**{KIND: LABEL}))
        delivery.append(at[labelled] + int(label_delay_days * 86_400 * 1_000_000_000))
    frame = pd.concat(parts, ignore_index=True).reindex(columns=list(fields)).astype(object)
    when = np.concatenate(delivery)
    frame = frame.where(frame.notna(), None)
    order = np.argsort(when, kind="stable")
    return frame.iloc[order].reset_index(drop=True), when[order]


class DeclaredReplaySource(FixedPartitionedSource[RawBatch, int]):
    """Replays a file of a declared repo's events (with its label column), then stops.

    `speed=None` replays as fast as possible, `speed=N` at N x event time. `shards` splits
    the file by event id, so that several workers read and check it in parallel: an event
    and its label stay in one shard, in their order (facts of one entity from several
    shards commute in the store)."""

    def __init__(
        self,
        path: Path,
        declared: DeclaredFeatures,
        label_delay_days: float = 7.0,
        batch_size: int = 5_000,
        speed: float | None = None,
        shards: int = 1,
    ) -> None:
        self.path, self.declared = path, declared
        self.label_delay_days, self.batch_size = label_delay_days, batch_size
        self.speed, self.shards = speed, max(1, shards)

    def list_parts(self) -> list[str]:
        return [f"shard-{i}" for i in range(self.shards)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ReplayPartition:
        rows = read_table(self.path, [self.declared.events.time])
        if self.shards > 1:
            shard = int(for_part.rsplit("-", 1)[1])
            ids = pd.util.hash_pandas_object(rows[self.declared.events.event_id], index=False).to_numpy()
            rows = rows[ids % np.uint64(self.shards) == shard]
        frame, delivery = replay_frame(self.declared, rows, self.label_delay_days)
        seconds = delivery // 1_000_000_000  # the partition paces in seconds of event time
        return _ReplayPartition(
            frame, seconds, resume_state or 0, self.batch_size, self.speed, f"file:{self.path.name}", []
        )  # fmt: skip

    def expected(self) -> int:
        """How many records the replay delivers: each row's event, and its label when it has one."""
        labels = self.declared.labels
        if file_format(self.path) == "parquet":  # the row count and the label column, not the whole file
            parquet = pq.ParquetFile(self.path)
            count = int(parquet.metadata.num_rows)
            if labels is None or labels.label not in parquet.schema_arrow.names:
                return count
            return count + int(parquet.read(columns=[labels.label]).column(0).to_pandas().notna().sum())
        rows = read_table(self.path, [self.declared.events.time])
        labelled = int(rows[labels.label].notna().sum()) if labels is not None and labels.label in rows else 0
        return len(rows) + labelled


@dataclass
class DeclaredSinks:
    facts: DynamicSink[Checked]
    dead_letters: DynamicSink[DeadLetter]
    stats: FlowStats = field(default_factory=FlowStats)


@dataclass
class _Labels:
    """Labels to decide, as columns: a frame of rows and, per row, when it reached the stream
    (epoch seconds: a held label's wait counts from there), its token and its source. One frame
    for a batch's labels, not one per label: a replay of a fully labelled file slicing a
    one-row frame per label spent two thirds of its time there."""

    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    since: np.ndarray = field(default_factory=lambda: np.empty(0))
    tokens: list[Any] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def keep(self, rows: list[int]) -> _Labels:
        return _Labels(
            self.rows.iloc[rows].reset_index(drop=True),
            self.since[rows],
            [self.tokens[i] for i in rows],
            [self.sources[i] for i in rows],
        )


class _FactsPartition(StatelessSinkPartition[Checked]):
    """Events recorded, then labels checked against the recorded events: a label whose event
    is unknown waits (unacknowledged) for `hold_seconds` from its arrival, rechecked on every
    batch (ticks included), for an event still in flight; then, or at once for any other
    mistake, it is a dead letter. A stop leaves held labels unacknowledged (delivered again);
    held labels without a token (a file replay) are decided when the flow ends."""

    def __init__(
        self,
        url: str,
        prefix: str,
        declared: DeclaredFeatures,
        stats: FlowStats,
        hold_seconds: float,
        dead: Any,
        offline_log: EventLogWriter | None = None,
        replay: bool = False,
        offline_root: str | Path | None = None,
        progress: Any = None,
    ) -> None:
        self.client = connect(url)
        self.progress = progress
        self.store = DeclaredOnlineStore(self.client, prefix, declared)
        self.declared, self.offline_log = declared, offline_log
        self.replay, self.offline_root = replay, offline_root
        self.stats, self.hold_seconds, self.dead = stats, hold_seconds, dead
        self.acknowledge = Acknowledger()
        self.unknown = f"{declared.labels.event_id}: " if declared.labels is not None else ""
        self._held = _Labels()
        if not replay and offline_root is not None:
            redis_call(self._mark_new_store, "marking a new store")

    def _mark_new_store(self) -> None:
        """A live flow's start: a store without markers is marked only when it was never
        filled (a new deployment); one that was has lost its data, and stays unmarked (the
        service answers from its fallback, saying so) until a replay rebuilds it."""
        assert self.offline_root is not None
        store = self.store.marker_project
        filled = was_filled(self.offline_root, store)
        if mark_new_store(self.client, store, not filled, rebuild="vigil repo ingest --events FILE"):
            record_filled(self.offline_root, store)

    def write_batch(self, items: list[Checked]) -> None:
        metrics = flow_metrics()
        for checked in items:
            redis_call(lambda: self.store.record_events(checked.events), "recording events")  # noqa: B023
            metrics.observe_written(checked.tokens)  # readable now: the freshness of what came from a stream
            self._log_events(checked.events)
            self.acknowledge(checked.tokens)  # durable now: the source may forget them
            self.stats.add(transactions=len(checked.events))
            if len(checked.events):
                metrics.events.labels("event").inc(len(checked.events))
            self._advance(len(checked.events) + len(checked.dead))
        now = time.time()
        fresh = [checked for checked in items if checked.label_tokens]
        waiting = self._held
        if fresh:
            frames = (
                [waiting.rows, *(checked.labels for checked in fresh)] if len(waiting) else [c.labels for c in fresh]
            )
            waiting = _Labels(
                pd.concat(frames, ignore_index=True),
                np.concatenate(
                    [waiting.since, *(np.array([arrival_seconds(t, now) for t in c.label_tokens]) for c in fresh)]
                ),
                [*waiting.tokens, *(t for c in fresh for t in c.label_tokens)],
                [*waiting.sources, *(c.source for c in fresh for _ in c.label_tokens)],
            )
        self._held = _Labels()
        if len(waiting):
            self._decide(waiting, now, final=False)

    def _decide(self, waiting: _Labels, now: float, final: bool) -> None:
        labels = waiting.rows
        reasons = redis_call(lambda: self.store.label_mistakes(labels), "checking labels")
        good = np.array([r is None for r in reasons], bool)
        if good.any():
            redis_call(lambda: self.store.record_labels(labels[good]), "recording labels")
            self._log_labels(labels[good])
            self.acknowledge([t for t, ok in zip(waiting.tokens, good, strict=True) if ok and t is not None])
            self.stats.add(labels=int(good.sum()))
            flow_metrics().events.labels("label").inc(int(good.sum()))
        letters, held = [], []
        for i in np.flatnonzero(~good).tolist():
            reason, token = reasons[i], waiting.tokens[i]
            assert reason is not None
            waited = now - float(waiting.since[i])
            if reason.startswith(self.unknown) and waited < self.hold_seconds and not final:
                held.append(i)
                continue
            if final and token is not None and reason.startswith(self.unknown):
                continue  # unacknowledged: the stream delivers it again to the next run
            raw = json.dumps(labels.iloc[i].to_dict(), default=str)
            reason = f"{reason} (held {waited:.0f} s)" if reason.startswith(self.unknown) else reason
            letters.append(DeadLetter(reason, raw, waiting.sources[i], token=token))
        self._held = waiting.keep(held)
        if letters:
            self.dead.write_batch(letters)
        self._advance(len(waiting) - len(held))

    def _advance(self, records: int) -> None:
        """Moves the progress bar of `vigil ingest` by the records decided."""
        if self.progress is not None and records:
            self.progress.update(records)

    def _log_events(self, events: pd.DataFrame) -> None:
        """The batch's valid events to the offline event log (`events`: the repo's own fields,
        by day), before they are acknowledged: what `vigil train` and `vigil promote` read when
        no file is given."""
        if self.offline_log is None or events.empty:
            return
        seconds = nanoseconds(events[self.declared.events.time]) // 1_000_000_000
        self.offline_log.write("events", events.assign(**{LOG_TS: seconds}), ts=LOG_TS)

    def _log_labels(self, labels: pd.DataFrame) -> None:
        """Accepted labels to the offline event log (what `vigil monitor` joins to the logged
        scores), written before they are acknowledged."""
        schema = self.declared.labels
        if self.offline_log is None or schema is None:
            return
        rows = pd.DataFrame(
            {
                "transaction_id": labels[schema.event_id].to_numpy(np.int64),
                "ts": nanoseconds(labels[schema.time]) // 1_000_000_000,
                "terminal_id": np.full(len(labels), -1, np.int64),
                "tx_fraud": pd.to_numeric(labels[schema.label]).to_numpy(np.int64),
            }
        )
        self.offline_log.write("labels", rows)

    def close(self) -> None:
        if len(self._held):
            held, self._held = self._held, _Labels()
            self._decide(held, time.time(), final=True)
        if self.replay:  # the file's history is in the store now
            redis_call(lambda: self.store.mark("replay"), "marking the store")
            if self.offline_root is not None:
                record_filled(self.offline_root, self.store.marker_project)
        self.dead.close()
        self.acknowledge.close()
        self.client.close()


class DeclaredFactsSink(DynamicSink[Checked]):
    """Appends each batch's facts to the declared online store, then acknowledges them."""

    def __init__(
        self,
        settings: Settings,
        declared: DeclaredFeatures,
        stats: FlowStats,
        dead: DeadLetterSink,
        progress: Any = None,
    ) -> None:
        self.url, self.prefix, self.declared, self.stats = settings.redis_url, settings.key_prefix, declared, stats
        self.hold_seconds, self.dead, self.event_log = settings.label_hold_seconds, dead, settings.event_log
        self.replay = False  # a file replay: the store is marked as filled when it completes
        self.progress = progress  # a counter with update(n), shared by the processes of `vigil ingest`

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FactsPartition:
        dead = self.dead.build(step_id, worker_index, worker_count)
        offline_log = EventLogWriter(self.event_log, worker_index)
        return _FactsPartition(
            self.url, self.prefix, self.declared, self.stats, self.hold_seconds, dead, offline_log,
            replay=self.replay, offline_root=self.event_log, progress=self.progress,
        )  # fmt: skip


def default_sinks(
    settings: Settings, declared: DeclaredFeatures, stats: FlowStats | None = None, progress: Any = None
) -> DeclaredSinks:
    stats = stats or FlowStats()
    dead = DeadLetterSink(settings.redis_url, settings.deadletter_stream, stats=stats)
    return DeclaredSinks(DeclaredFactsSink(settings, declared, stats, dead, progress), dead, stats)


def declared_flow(settings: Settings, declared: DeclaredFeatures) -> Any:
    """The flow factory `vigil.ingest.run_ingest` runs in each process of `vigil ingest`."""

    def make(source: Source[RawBatch], stats: FlowStats, progress: Any) -> Dataflow:
        return build_flow(source, default_sinks(settings, declared, stats, progress), settings, declared)

    return make


def stream_source(
    uri: str, declared: DeclaredFeatures, settings: Settings, group: str = "vigil-declared"
) -> RedisStreamSource | Any:
    """`redis://HOST:PORT/STREAM` or `kafka://BROKER[,BROKER]/TOPIC`, read as the consumer
    group `group` (VIGIL_STOP_AT_END=1: stop once it is read to its end)."""
    from vigil.uris import parse_source_uri

    stream = parse_source_uri(uri)
    if stream is None:
        raise ValueError(f"{uri!r} is not redis://HOST:PORT/STREAM or kafka://BROKERS/TOPIC")
    if stream.kind == "kafka":
        from flows.kafka import KafkaEventSource

        kafka = KafkaEventSource(
            stream.address.split(","), stream.name, settings.redis_url, group=group,
            tail=not settings.stop_at_end, tick_seconds=1.0,
        )  # fmt: skip
        kafka.fields = record_fields(declared)
        return kafka
    idle = 1.0 if settings.stop_at_end else None
    source = RedisStreamSource(
        stream.address, stream.name, group=group, idle_timeout=idle, tick_seconds=1.0,
        claim_idle=settings.stream_claim_idle_seconds,
    )  # fmt: skip
    source.fields = record_fields(declared)
    return source


def _checked(declared: DeclaredFeatures, batch: RawBatch, ahead_seconds: float) -> Checked:
    checked = check_batch(declared, batch.frame, batch.source, batch.tokens, ahead_seconds)
    checked.dead = [*batch.unparsed, *checked.dead]
    return checked


def _dead(checked: Checked) -> Iterable[DeadLetter]:
    return checked.dead


def build_flow(
    source: Source[RawBatch] | None = None,
    sinks: DeclaredSinks | None = None,
    settings: Settings | None = None,
    declared: DeclaredFeatures | None = None,
) -> Dataflow:
    """The declared repo's feature flow from `source` into `sinks` (defaults from settings)."""
    settings = settings or Settings()
    declared = declared or load_declared(settings.feature_repo)
    if source is None:
        default = f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"
        source = stream_source(os.environ.get("VIGIL_SOURCE", default), declared, settings)
    sinks = sinks or default_sinks(settings, declared)
    if isinstance(sinks.facts, DeclaredFactsSink):
        sinks.facts.replay = isinstance(source, DeclaredReplaySource)
    flow = Dataflow("vigil_declared")
    ahead = settings.event_time_tolerance_seconds
    checked = op.map("check", op.input("events", flow, source), lambda batch: _checked(declared, batch, ahead))
    op.output("dead_letter_out", op.flat_map("dead_letters", checked, _dead), sinks.dead_letters)
    op.output("facts_out", checked, sinks.facts)
    return flow


def run_to_end(flow: Dataflow) -> None:
    """Runs a flow in this process until its sources end (a replay, a stream read to its end)."""
    from bytewax.run import cli_main

    cli_main(flow)
