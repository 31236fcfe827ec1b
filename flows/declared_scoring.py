"""In-stream scoring of a declared repo: events from a stream, scored and decided by the same
scorer as `vigil serve` (each version's own feature service, the rules and lists, the
fallback that says so, the prediction log), answers written to a stream (no HTTP hop).

    events -> check (the repo's schema) -> dead letters ..................> dead-letter sink
                                       \\-> events -> DeclaredScorer -> decisions stream
                                       \\-> labels (nothing to decide: acknowledged) -/

    python -m bytewax.run "flows.declared_scoring:build_flow()"

reads VIGIL_SOURCE (default the repo's events stream, `<prefix>:<repo>:events`) as its own
consumer group, `vigil-declared-scoring`, beside the feature flow's, and writes
`<prefix>:<repo>:decisions`. An entry is acknowledged once its answer is written.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from flows.declared import _checked, _dead, stream_source
from flows.scoring import DecisionSink
from flows.sinks import DeadLetterSink
from scoring.declared_resources import DeclaredResources, open_declared
from scoring.resources import _follow_aliases
from vigil.declared import DeclaredFeatures, load_declared
from vigil.declared.batch import EventColumns
from vigil.declared.events import Checked
from vigil.events import RawBatch
from vigil.settings import Settings

GROUP = "vigil-declared-scoring"
Decision = tuple[dict[str, Any] | None, Any]


class DeclaredStreamScorer:
    """One scorer per process, on its own event loop, opened on the first batch."""

    def __init__(self, settings: Settings, declared: DeclaredFeatures) -> None:
        self.settings, self.declared = settings, declared
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: DeclaredResources | None = None
        self._aliases_read = time.monotonic()

    def _open(self) -> DeclaredResources:
        if self._opened is None:
            self._loop = asyncio.new_event_loop()
            self._opened = self._loop.run_until_complete(open_declared(self.settings, self.declared, threads=1))
        return self._opened

    def __call__(self, checked: Checked) -> list[Decision]:
        """(answer, acknowledgement token) for every valid event; (None, token) for labels."""
        out: list[Decision] = [(None, token) for token in checked.label_tokens if token is not None]
        events = checked.events
        if events.empty:
            return out
        # A replay has no tokens; a stream's valid events each have one.
        tokens = checked.tokens if len(checked.tokens) == len(events) else [None] * len(events)
        with self._lock:
            opened = self._open()
            assert self._loop is not None
            self._loop.run_until_complete(self._refresh(opened))
            if opened.models.current is None:  # the entries stay pending until a champion loads
                raise RuntimeError(
                    "no champion to score with: train one and promote it (vigil train, vigil promote);"
                    " the stream's entries stay pending and are scored once the flow restarts with one"
                )
            answers = self._loop.run_until_complete(opened.scorer.score(EventColumns.of(events)))
            self._loop.run_until_complete(opened.scorer.settle())  # this batch's shadow scores, written
            self._loop.run_until_complete(opened.prediction_log.flush())
            self._loop.run_until_complete(opened.review.flush())
        return out + list(zip(answers, tokens, strict=True))

    async def _refresh(self, opened: DeclaredResources) -> None:
        """Rules and lists before each batch, and the registry's aliases every
        VIGIL_ALIAS_POLL_SECONDS, as the service follows them."""
        await opened.refresh_rules_and_lists(self.settings)
        if time.monotonic() - self._aliases_read >= self.settings.alias_poll_seconds:
            self._aliases_read = time.monotonic()
            await _follow_aliases(opened.models, opened.shadow, opened.metrics)


def build_flow(
    source: Source[RawBatch] | None = None,
    sink: Sink[Decision] | None = None,
    settings: Settings | None = None,
    declared: DeclaredFeatures | None = None,
) -> Dataflow:
    """The declared repo's scoring flow from `source` into `sink` (defaults from settings)."""
    settings = settings or Settings()
    declared = declared or load_declared(settings.feature_repo)
    if source is None:
        default = f"{settings.redis_url.rsplit('/', 1)[0]}/{settings.events_stream}"
        source = stream_source(os.environ.get("VIGIL_SOURCE", default), declared, settings, group=GROUP)
    sink = sink or DecisionSink(settings.redis_url, settings.stream("decisions"))
    score = DeclaredStreamScorer(settings, declared)
    flow = Dataflow("vigil_declared_scoring")
    ahead = settings.event_time_tolerance_seconds
    checked = op.map("check", op.input("events", flow, source), lambda batch: _checked(declared, batch, ahead))
    dead_letters = DeadLetterSink(settings.redis_url, settings.deadletter_stream)
    op.output("dead_letter_out", op.flat_map("dead_letters", checked, _dead), dead_letters)
    op.output("decisions_out", op.flat_map("score", checked, score), sink)
    return flow
