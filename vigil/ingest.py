"""Runs the feature flow from the command line: one process, or several cooperating ones.

Bytewax workers in one process share the GIL, so parallel ingest uses one process per
worker, wired together on loopback (`-i/-a` in bytewax.run terms).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.run import cli_main
from tqdm import tqdm

from flows import stopping
from flows.sinks import FlowStats
from vigil.events import RawBatch
from vigil.settings import Settings

SourceFactory = Callable[[int], Source[RawBatch]]  # argument: number of processes
# The flow of one process from its source, its stats and the shared progress counter.
FlowFactory = Callable[[Source[RawBatch], FlowStats, Any], Dataflow]


def handwritten_flow(settings: Settings) -> FlowFactory:
    """The hand-written handbook's flow (`flows.features`)."""
    from flows.features import build_flow, default_sinks
    from vigil.online.layout import value_codec

    def make(source: Source[RawBatch], stats: FlowStats, progress: Any) -> Dataflow:
        value_codec()  # the writer's encoder: Feast's value classes, imported on first use
        return build_flow(source, default_sinks(settings, stats, progress), settings)

    return make


@dataclass
class IngestResult:
    transactions: int = 0
    labels: int = 0
    dead_letters: int = 0
    entity_writes: int = 0
    dead_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    processes: int = 1
    interrupted: bool = False  # stopped with Ctrl-C (or SIGTERM): the counts are what was done

    @property
    def transactions_per_second(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0

    def add(self, stats: dict[str, Any]) -> None:
        self.transactions += stats["transactions"]
        self.labels += stats["labels"]
        self.dead_letters += stats["dead_letters"]
        self.entity_writes += stats["entity_writes"]
        for reason, count in stats["dead_reasons"].items():
            self.dead_reasons[reason] = self.dead_reasons.get(reason, 0) + count


class _SharedCounter:
    """A progress counter that sinks in any process can bump."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def update(self, n: int) -> None:
        with self.value.get_lock():
            self.value.value += n


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class IngestFailedError(RuntimeError):
    """A flow process failed; the message is its own error."""


def _worker(
    make_flow: FlowFactory,
    make_source: SourceFactory,
    processes: int,
    index: int,
    addresses: list[str] | None,
    counter: Any,
    results: Any,
) -> None:
    """Runs one flow process; puts (stats, interrupted, error) on `results` however it ends."""
    stats = FlowStats()
    interrupted, error = False, None
    stopping.install()  # Ctrl-C / SIGTERM: the sources end, the sinks write what they hold
    try:
        flow = make_flow(make_source(processes), stats, _SharedCounter(counter))
        # What is loaded now (Feast, pandas, Bytewax: ~330k objects) lives as long as the
        # process; frozen, a full collection does not walk it (a pause in freshness's tail:
        # with Feast's ~210k objects left unfrozen, one full collection took 114 ms).
        gc.collect()
        gc.freeze()
        cli_main(flow, process_id=index if addresses else None, addresses=addresses)
    except KeyboardInterrupt:
        interrupted = True
    except Exception as failure:  # reported by the parent, with the process that failed
        error = f"{type(failure).__name__}: {failure}"
    results.put((stats.as_dict(), interrupted or stopping.requested(), error))


def run_ingest(
    settings: Settings,
    make_source: SourceFactory,
    processes: int = 1,
    expected_events: int | None = None,
    show_progress: bool = True,
    make_flow: FlowFactory | None = None,
) -> IngestResult:
    """Runs the flow (`make_flow`'s; by default the hand-written handbook's) to completion, or
    until interrupted, in `processes` cooperating processes, and sums what the sinks wrote."""
    make_flow = make_flow or handwritten_flow(settings)
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0)
    results = ctx.Queue()
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(processes)] if processes > 1 else None
    result = IngestResult(processes=processes)
    started = time.perf_counter()
    if processes == 1:
        bar = tqdm(total=expected_events, unit="ev", desc="ingest", disable=not show_progress, smoothing=0.1)
        # In-process: the same path, no fork needed.
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.2):
                bar.n = counter.value
                bar.refresh()

        ticker = threading.Thread(target=refresh, daemon=True)
        ticker.start()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _worker(make_flow, make_source, 1, 0, None, counter, results)
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
            stop.set()
            ticker.join()
        _collect(result, results.get(), 0)
    else:
        children = [
            ctx.Process(
                target=_worker, args=(make_flow, make_source, processes, i, addresses, counter, results), daemon=False
            )
            for i in range(processes)
        ]
        for child in children:
            child.start()
        # Created after the fork, so that no child holds (and prints) a copy of it.
        bar = tqdm(total=expected_events, unit="ev", desc="ingest", disable=not show_progress, smoothing=0.1)
        collected = 0
        try:
            while collected < processes:
                bar.n = counter.value
                bar.refresh()
                try:
                    _collect(result, results.get(timeout=0.2), collected)
                    collected += 1
                except queue.Empty:  # keep waiting, unless a child died without a word
                    dead = [i for i, c in enumerate(children) if c.exitcode not in (None, 0)]
                    if dead:
                        raise IngestFailedError(
                            f"flow process {dead[0]} exited with status {children[dead[0]].exitcode}"
                        ) from None
        except KeyboardInterrupt:
            # Every child got the same Ctrl-C (one process group): each stops its sources,
            # writes what its sinks hold and reports.
            result.interrupted = True
            deadline = time.monotonic() + 10
            while collected < processes and time.monotonic() < deadline:
                try:
                    _collect(result, results.get(timeout=0.5), collected)
                    collected += 1
                except (queue.Empty, KeyboardInterrupt):
                    continue
        finally:
            for child in children:
                child.join(timeout=5)
                if child.is_alive():
                    child.terminate()
    result.seconds = time.perf_counter() - started
    bar.n = counter.value
    bar.close()
    return result


def _collect(result: IngestResult, report: tuple[dict[str, Any], bool, str | None], index: int) -> None:
    stats, interrupted, error = report
    result.add(stats)
    result.interrupted = result.interrupted or interrupted
    if error is not None:
        raise IngestFailedError(f"flow process {index} failed: {error}")
