"""The online store of a declared repo: each entity's recent facts, in Redis, and the
features of any event computed from them as of the event's own time.

Per kind of facts (the events or the labels, per entity join key) and entity value, one
Redis string, `<prefix>:facts:<project>:<on>:<key>:<value>`, that writers APPEND packed
records to: the time (ns), the event id and the columns the views aggregate (8 bytes
each: numbers as float64, strings as a 64-bit hash, enough to count them distinct). An
append is one command for a whole batch's facts of an entity and commutes with any
other, so two workers, or a redelivered batch, need no coordination: a fact delivered
twice is read once (facts are unique by event id). A string grown past `COMPACT_BYTES`
is rewritten without duplicates and without the facts older than every window needs
(its newest fact minus the views' reach and `SLACK_SECONDS`), in a WATCH transaction.

`features(events)` reads the facts of the events' entities (one pipelined GET per kind),
adds the events themselves (an event already recorded counts once), and runs the same
computation as the backfill (`vigil.declared.compute.features_of`). The scoring service's
read of one event (`checked_features`) runs the same compiled window code on the facts where
they lie in the reply (`vigil.declared.windows.packed_query`), to the same values.

The store carries the data markers of `vigil.online.marker` under `<prefix>:facts:<project>`:
a replay writes them when it completes, a live flow only into a new deployment (no markers,
and nothing ever filled, as the event log's folder records). The scoring service reads them
in the same round trip as the facts (`checked_features`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import redis

from vigil.declared.batch import column
from vigil.declared.compute import (
    ID,
    KEY,
    TS,
    Events,
    FactLoader,
    FactTable,
    FeaturePlan,
    derived_values,
    feature_names,
    feature_plan,
    feature_values,
    features_of,
    nanoseconds,
)
from vigil.declared.model import DeclaredFeatures
from vigil.declared.windows import packed_query
from vigil.online.marker import MARKERS, count_markers, marker_keys, write_markers
from vigil.online.resp import ClusterReader, FieldReplies, NodeReader, command

COMPACT_BYTES = 64 * 1024
_NONE = np.zeros(0, np.int64)  # no own record (facts of labels)
_BYTE = np.zeros(1, np.uint8)  # a reply holding no facts (`warm`)
DAY_NS = 86_400 * 1_000_000_000
SWEEP_DAYS = 7  # each write drops the seen-log keys of this many days just past the reach
# How far back of an entity's newest fact the store keeps more than the windows need: an
# event may arrive this late and still find every fact its windows hold.
SLACK_SECONDS = 7 * 86_400


def hashed(values: pd.Series | np.ndarray) -> np.ndarray:
    """Values as stable 64-bit hashes of their text (the same in every process and every run)."""
    if isinstance(values, np.ndarray) and values.dtype == object and all(type(v) is str for v in values):
        text = values  # typed strings already (`EventColumns`)
    else:
        text = pd.Series(values, copy=False).astype(str).to_numpy(dtype=object)
    return pd.util.hash_array(text).view(np.int64)


class DeclaredOnlineStore:
    """Facts kept per entity for a compiled repo, and its features read from them."""

    def __init__(self, client: Any, prefix: str, declared: DeclaredFeatures) -> None:
        self.client, self.prefix, self.declared = client, prefix, declared
        groups: dict[tuple[str, str], set[str]] = {}
        reach: dict[tuple[str, str], int] = {}
        for a in declared.aggregations:
            groups.setdefault((a.on, a.key), set()).add(a.column)
            reach[(a.on, a.key)] = max(reach.get((a.on, a.key), 0), a.window_seconds + a.delay_seconds)
        self.columns = {group: sorted(columns) for group, columns in groups.items()}
        self.keep_ns = {group: (seconds + SLACK_SECONDS) * 1_000_000_000 for group, seconds in reach.items()}
        self.dtypes = {group: self._dtype(group, columns) for group, columns in self.columns.items()}
        labels_reach = max(
            (a.window_seconds + a.delay_seconds for a in declared.aggregations if a.on == "labels"), default=0
        )
        self.seen_days = (labels_reach + SLACK_SECONDS) // 86_400 + 1
        # The keys a label carries (its views' join keys), kept with each seen event as
        # 64-bit hashes: a label is counted only under its own event's entities.
        self.label_keys = sorted({a.key for a in declared.aggregations if a.on == "labels"})
        self.seen_dtype = np.dtype([("id", "<i8"), ("ts", "<i8"), *((k, "<i8") for k in self.label_keys)])
        self.markers = marker_keys(self.marker_project)  # one per sixteenth of a cluster's slots
        self._layouts: dict[tuple[tuple[str, str], tuple[str, ...]], tuple[np.ndarray, np.ndarray]] = {}

    def _dtype(self, group: tuple[str, str], columns: list[str]) -> np.dtype[Any]:
        kinds = self.declared.events.fields
        return np.dtype(
            [("ts", "<i8"), ("id", "<i8"), *((c, "<i8" if kinds.get(c) == "string" else "<f8") for c in columns)]
        )

    def key(self, on: str, join_key: str, value: Any) -> str:
        return f"{self.prefix}:facts:{self.declared.project}:{on}:{join_key}:{value}"

    # ------------------------------------------------------------------ writing

    def _packed(self, group: tuple[str, str], frame: Events, event_id: str, time: str) -> np.ndarray:
        packed = np.empty(len(frame), self.dtypes[group])
        packed["ts"] = nanoseconds(frame[time])
        packed["id"] = column(frame, event_id)
        for name in self.columns[group]:
            values = column(frame, name)
            packed[name] = hashed(values) if packed.dtype[name] == np.int64 else values.astype(np.float64, copy=False)
        return packed

    def _append(self, on: str, frame: pd.DataFrame, event_id: str, time: str) -> None:
        if frame.empty:
            return
        grown: list[tuple[tuple[str, str], str]] = []
        for group in self.columns:
            if group[0] != on:
                continue
            packed = self._packed(group, frame, event_id, time)
            entity = frame[group[1]].to_numpy()
            codes, values = pd.factorize(entity)
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(values) + 1))
            keys = [self.key(on, group[1], v) for v in values]
            with self.client.pipeline(transaction=False) as pipe:
                for i, key in enumerate(keys):
                    pipe.append(key, packed[order[bounds[i] : bounds[i + 1]]].tobytes())
                lengths = pipe.execute()
            grown += [(group, key) for key, length in zip(keys, lengths, strict=True) if length > COMPACT_BYTES]
        for group, key in grown:
            self._compact(group, key)

    def record_events(self, events: pd.DataFrame) -> None:
        """Appends the facts of a batch of valid events (any order, any repetition), and
        the events themselves to the log that labels are checked against."""
        schema = self.declared.events
        self._append("events", events, schema.event_id, schema.time)
        self._record_seen(events)

    # ------------------------------------------------------------------ labels' events

    def seen_key(self, day: int) -> str:
        """The day's log of seen events; its name says which keys its records hold, so that
        records of another layout are never read as this one's."""
        keys = "".join(f":{k}" for k in self.label_keys)
        return f"{self.prefix}:facts:{self.declared.project}:seen{keys}:{day}"

    def _record_seen(self, events: pd.DataFrame) -> None:
        """(id, time, label keys) of each event, packed per day of its time: one APPEND per day."""
        if events.empty or self.declared.labels is None:
            return
        schema = self.declared.events
        ts = nanoseconds(events[schema.time])
        packed = np.empty(len(events), self.seen_dtype)
        packed["id"], packed["ts"] = events[schema.event_id].to_numpy(np.int64), ts
        for key in self.label_keys:
            packed[key] = hashed(events[key])
        day = ts // DAY_NS
        order = np.argsort(day, kind="stable")
        packed, day = packed[order], day[order]
        bounds = np.flatnonzero(np.r_[True, day[1:] != day[:-1], True]).tolist()
        with self.client.pipeline(transaction=False) as pipe:
            for lo, hi in itertools.pairwise(bounds):
                pipe.append(self.seen_key(int(day[lo])), packed[lo:hi].tobytes())
            # Days past every label's reach (the views' delay and window, and the slack) go.
            for old in range(int(day[-1]) - self.seen_days - SWEEP_DAYS, int(day[-1]) - self.seen_days):
                pipe.delete(self.seen_key(old))
            pipe.execute()

    def label_mistakes(self, labels: pd.DataFrame) -> list[str | None]:
        """For each label, None when its event was recorded with its time and keys, else why not."""
        schema = self.declared.labels
        if schema is None or labels.empty:
            return []
        ids = labels[schema.event_id].to_numpy(np.int64)
        ts = nanoseconds(labels[schema.time])
        days = ts // DAY_NS
        wanted = sorted(set(days.tolist()))
        with self.client.pipeline(transaction=False) as pipe:
            for day in wanted:
                pipe.get(self.seen_key(day))
            blobs = dict(zip(wanted, pipe.execute(), strict=True))
        unknown = f"{schema.event_id}: no event with this id at this time was seen"
        moved = f"{schema.time}: not the time of the event it labels"
        told = {key: hashed(labels[key]) for key in self.label_keys}
        reasons: list[str | None] = [None] * len(ids)
        for day in wanted:
            # The day's ids sorted and each label looked up in them: for a day of a million
            # events, 0.11 s against 0.18 s for a dict of Python ints (and far less memory).
            seen = np.frombuffer(blobs[day] or b"", self.seen_dtype)
            seen = seen[np.argsort(seen["id"], kind="stable")]
            rows = np.flatnonzero(days == day)
            lo = np.searchsorted(seen["id"], ids[rows], "left")
            hi = np.searchsorted(seen["id"], ids[rows], "right")
            if not len(seen):
                for row in rows.tolist():
                    reasons[row] = unknown
                continue
            # The record at lo, checked at array speed; an event delivered more than once
            # (several records) is checked record by record.
            first = seen[np.minimum(lo, len(seen) - 1)]
            verdicts = np.where(hi == lo, unknown, np.where(first["ts"] != ts[rows], moved, "")).astype(object)
            for key in self.label_keys:
                wrong = (verdicts == "") & (first[key] != told[key][rows]) & (hi > lo)
                verdicts = np.where(wrong, f"{key}: not the {key} of the event it labels", verdicts)
            for k in np.flatnonzero(hi - lo > 1).tolist():
                records = seen[lo[k] : hi[k]]
                records = records[records["ts"] == ts[rows[k]]]
                verdicts[k] = moved if not len(records) else ""
                for key in self.label_keys if len(records) else ():
                    if not (records[key] == told[key][rows[k]]).any():
                        verdicts[k] = f"{key}: not the {key} of the event it labels"
                        break
            for row, verdict in zip(rows.tolist(), verdicts.tolist(), strict=True):
                reasons[row] = verdict or None
        return reasons

    def record_labels(self, labels: pd.DataFrame) -> None:
        """Appends the facts of a batch of labels (event id, event time, keys, label)."""
        if self.declared.labels is not None:
            self._append("labels", labels, self.declared.labels.event_id, self.declared.labels.time)

    def _compact(self, group: tuple[str, str], key: str) -> None:
        """Rewrites one entity's facts without duplicates or facts no window will read."""
        dtype = self.dtypes[group]
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(5):
                try:
                    pipe.watch(key)
                    facts = np.frombuffer(pipe.get(key) or b"", dtype)
                    _, first = np.unique(facts["id"], return_index=True)
                    facts = facts[np.sort(first)]
                    facts = facts[facts["ts"] >= facts["ts"].max() - self.keep_ns[group]]
                    pipe.multi()
                    pipe.set(key, facts.tobytes())
                    pipe.execute()
                    return
                except redis.WatchError:  # another writer appended meanwhile: read again
                    continue

    # ------------------------------------------------------------------ reading

    def _facts(self, group: tuple[str, str], queries: Events, values: np.ndarray, blobs: list[Any]) -> FactTable:
        """One kind of facts of the queries' entities (`values`, read as `blobs`)."""
        dtype = self.dtypes[group]
        parts = [b"" if blob is None else blob for blob in blobs]
        # One buffer, read once: a structured view per string costs ~3 us each, and a batch
        # reads thousands.
        facts = np.frombuffer(b"".join(parts), dtype)
        entity = np.repeat(values, [len(p) // dtype.itemsize for p in parts])
        if group[0] == "events":  # the queries are events too: counted once, recorded or not
            schema = self.declared.events
            own = self._packed(group, queries, schema.event_id, schema.time)
            # (one query: a comparison, where np.isin's fixed cost is tens of us)
            stored = facts["id"] != own["id"][0] if len(own) == 1 else ~np.isin(facts["id"], own["id"])
            facts = np.concatenate([facts[stored], own])
            entity = np.concatenate([entity[stored], column(queries, group[1])])
        # A fact delivered twice is read once: the windows' sorts drop an entity's repeats.
        return {KEY: entity, TS: facts["ts"], ID: facts["id"], **{c: facts[c] for c in self.columns[group]}}

    @property
    def marker_project(self) -> str:
        """The name the store's data markers (`vigil.online.marker`) are kept under."""
        return f"{self.prefix}:facts:{self.declared.project}"

    def holds_data(self) -> bool:
        """Whether the store holds the flow's data: every marker present (a readiness check)."""
        return count_markers(self.client, self.marker_project) == MARKERS

    def mark(self, by: str) -> None:
        """Marks the store as holding the flow's data (a replay has filled it, or a new deployment)."""
        write_markers(self.client, self.marker_project, by)

    async def checked_features(
        self, reader: NodeReader | ClusterReader, events: Events, features: Sequence[str]
    ) -> tuple[dict[str, np.ndarray] | None, bool]:
        """`features` of each event (by name), and whether the store holds the flow's data, asked in the
        same round trip (its markers: one on one server, all of them on a cluster, where each
        primary holds some). A store restarted empty answers every read with "no facts": the
        features it gives are then None, never zeros that look like a quiet history.

        Read with the scoring service's pipelined reader (`vigil.online.resp`, one node or a
        cluster), on its event loop, with no hop to a thread. Each key is asked with a one-key
        MGET, whose reply (an array of one string) the reader locates where it lies in the bytes
        received (`read_fields`): a batch's thousands of facts strings are read in place, not
        copied into Python objects."""
        asked, keys, markers = self._checked_read(events, isinstance(reader, ClusterReader))
        every = [key.encode() for key in keys] + markers
        replies = await reader.read_fields(every, [command("MGET", key) for key in every], 1)
        starts, sizes = replies.starts[:, 0].tolist(), replies.sizes[:, 0].tolist()
        if not all(sizes[len(keys) :]):  # a marker missing: the store does not hold the flow's data
            return None, False
        data = replies.data
        plan = feature_plan(self.declared, features)
        if len(events) == 1 and all(group.query is not None for group in plan.groups):
            return self._one_event(events, plan, features, list(asked), replies), True
        blobs = [data[a : a + n] if n else None for a, n in zip(starts[: len(keys)], sizes[: len(keys)], strict=True)]
        return feature_values(self.declared, events, self._loader(events, asked, blobs), list(features)), True

    def warm(self, events: Events) -> None:
        """Compiles (or loads from numba's cache) the kernel of a request's windows
        (`_one_event`), on `events` with no stored facts: the first request must not wait for it."""
        built_in = [a.name for a in self.declared.aggregations if a.custom is None]
        if len(events) != 1 or not built_in:
            return
        groups = list(self._entities(events))
        nothing = np.zeros((len(groups), 1), np.int64)
        self._one_event(
            events, feature_plan(self.declared, built_in), built_in, groups, FieldReplies(_BYTE, nothing, nothing)
        )

    def _one_event(
        self, events: Events, plan: FeaturePlan, features: Sequence[str], groups: list[tuple[str, str]], replies: Any
    ) -> dict[str, np.ndarray]:
        """A request's one event's features, every window computed where its facts lie in the
        reply (`windows.packed_query`): no table of facts per request. `groups[i]`'s facts
        are reply i. The same values as `feature_values` gives, to the last bit."""
        schema = self.declared.events
        query_ts = int(nanoseconds(events[schema.time])[0])
        query_id = int(column(events, schema.event_id)[0])
        values: dict[str, np.ndarray] = {}
        # One compiled signature, whichever reader filled the buffer (a read-only one, or not).
        data = np.require(replies.data, np.uint8, ["C", "W"])
        for group in plan.groups:
            assert group.query is not None
            kind = (group.on, group.key)
            reply = groups.index(kind)
            offsets, floats = self._layout(kind, group.query.names)
            own = (
                self._packed(kind, events, schema.event_id, schema.time).view(np.int64)
                if group.on == "events"
                else _NONE
            )
            out = packed_query(
                data, int(replies.starts[reply, 0]), int(replies.sizes[reply, 0]), self.dtypes[kind].itemsize // 8,
                own, offsets, floats, query_ts, query_id, group.query, group.on == "events",
            )  # fmt: skip
            values.update({a.name: out[i : i + 1] for i, a in enumerate(group.aggregations)})
        return derived_values(self.declared, events, plan, values, features)

    def _layout(self, kind: tuple[str, str], names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Where the columns `names` lie in a record of `kind`'s facts (their 8-byte word) and
        which are float64 (the others: strings' int64 hashes)."""
        if (kind, names) not in self._layouts:
            dtype = self.dtypes[kind]
            offsets = np.array([dtype.names.index(name) for name in names], np.int64)  # type: ignore[union-attr]
            floats = np.array([dtype[name] == np.float64 for name in names], np.bool_)
            self._layouts[(kind, names)] = (offsets, floats)
        return self._layouts[(kind, names)]

    def _entities(self, events: Events) -> dict[tuple[str, str], np.ndarray]:
        """Each kind of facts' entities among the events, each once, in order of appearance."""
        columns = {key: column(events, key) for key in {group[1] for group in self.columns}}
        # One event (a request's) has one entity per key: pd.unique's fixed cost is not needed.
        return {
            group: columns[group[1]] if len(events) == 1 else pd.unique(columns[group[1]]) for group in self.columns
        }

    def _checked_read(
        self, events: Events, cluster: bool
    ) -> tuple[dict[tuple[str, str], np.ndarray], list[str], list[Any]]:
        """The entities asked, the keys of their facts, the markers to check (see `checked_features`)."""
        asked = self._entities(events)
        keys = [self.key(on, join_key, value) for (on, join_key), values in asked.items() for value in values]
        return asked, keys, self.markers if cluster else self.markers[:1]

    def features(
        self, events: Events, service: str | None = None, features: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The features of `service` (or `features`) for each event, as of its own time:
        every kind of facts of their entities read in one round trip."""
        asked = self._entities(events)
        with self.client.pipeline(transaction=False) as pipe:
            for (on, join_key), values in asked.items():
                for value in values:
                    pipe.get(self.key(on, join_key, value))
            blobs = pipe.execute()
        names = feature_names(self.declared, service, features)
        return features_of(self.declared, events, self._loader(events, asked, blobs), names)

    def request_features(self, events: Events, features: Sequence[str]) -> dict[str, np.ndarray]:
        """The features (by name) as the events alone make them, no stored fact read: what a
        scorer answers with (and says so) when the store cannot be read in time."""
        asked = self._entities(events)
        empty = [None] * sum(len(values) for values in asked.values())
        return feature_values(self.declared, events, self._loader(events, asked, empty), list(features))

    def _loader(self, events: Events, asked: dict[tuple[str, str], np.ndarray], blobs: list[Any]) -> FactLoader:
        """The fact tables of the entities `asked`, read as `blobs` (in `asked`'s order)."""
        tables: dict[tuple[str, str], FactTable] = {}
        start = 0
        for group, values in asked.items():
            tables[group] = self._facts(group, events, values, blobs[start : start + len(values)])
            start += len(values)

        def load(on: str, key: str, columns: list[str]) -> FactTable:
            return tables[(on, key)]

        return load
