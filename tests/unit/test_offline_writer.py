"""The offline sink's background writer: in order, acknowledged only once durable, and a
failed write stops the flow instead of losing events."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flows.sinks import OfflineBatch, OfflineEventSink
from vigil.offline.eventlog import COLUMNS


class Recorder:
    """Stands in for the source acknowledger: remembers what was settled, and when."""

    def __init__(self, parts: Path) -> None:
        self.parts, self.settled, self.parts_seen = parts, [], []

    def __call__(self, tokens: list[Any]) -> None:
        self.settled.extend(tokens)
        self.parts_seen.append(len(list(self.parts.rglob("*.parquet"))))

    def close(self) -> None:
        pass


def batch(start: int, n: int) -> OfflineBatch:
    ids = range(start, start + n)
    tx = pd.DataFrame({"transaction_id": list(ids), "ts": [1_700_000_000 + i for i in ids], "customer_id": 1,
                       "terminal_id": 2, "tx_amount": 3.0})  # fmt: skip
    return OfflineBatch(tx, pd.DataFrame(columns=list(COLUMNS["labels"])), tokens=list(ids))


def test_every_event_is_written_once_in_order_and_acknowledged_after_its_part(tmp_path: Path) -> None:
    partition = OfflineEventSink(tmp_path, flush_rows=10, flush_seconds=60).build("offline", 0, 1)
    recorder = partition.acknowledge = Recorder(tmp_path)
    for start in range(0, 100, 5):
        partition.write_batch([batch(start, 5)])
    partition.close()

    written = pd.concat(pd.read_parquet(p) for p in sorted(tmp_path.rglob("*.parquet")))
    assert sorted(written["transaction_id"]) == list(range(100))
    assert recorder.settled == list(range(100))  # each once, in the order they arrived
    assert all(seen > 0 for seen in recorder.parts_seen)  # never before a part was on disk


def test_a_failed_write_fails_the_flow_and_acknowledges_nothing(tmp_path: Path) -> None:
    partition = OfflineEventSink(tmp_path, flush_rows=10, flush_seconds=60).build("offline", 0, 1)
    recorder = partition.acknowledge = Recorder(tmp_path)
    written = threading.Event()

    def broken(kind: str, frame: pd.DataFrame) -> list[str]:
        written.set()
        raise OSError("disk full")

    partition.writer.write = broken  # type: ignore[method-assign]
    partition.write_batch([batch(0, 10)])
    assert written.wait(5)
    with pytest.raises(OSError, match="disk full"):
        for start in range(10, 40, 10):  # raised by the next write (or close) on the worker
            partition.write_batch([batch(start, 10)])
        partition.close()
    assert recorder.settled == []
