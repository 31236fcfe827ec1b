"""The offline event log: every validated event, as Parquet partitioned by day.

    <root>/transactions/date=2018-04-01/part-<writer>-<id>.parquet
    <root>/labels/date=2018-04-01/part-<writer>-<id>.parquet   (the day of the labelled transaction)
    <root>/events/date=2018-04-01/part-<writer>-<id>.parquet   (a declared repo's events, its own fields)

`root` is a local folder (the default, `data/offline`) or any URL pyarrow's filesystems
write (`s3://bucket/prefix`; an S3-compatible endpoint comes from `AWS_ENDPOINT_URL`).
Any number of flow processes on any number of machines write side by side: each part is
named by its writer (host, process, worker) and a random id, and appears whole (local
files are written aside, flushed to disk and renamed; object stores publish a part when
it is complete). A part is acknowledged to the stream only after that, so a crash
re-delivers what it held and the log misses nothing; a re-delivered event can then sit
in two parts, and readers keep one row per transaction id (the last written).

Stores written before the day partitions (`transactions/part-*.parquet`) are still read;
`vigil offline migrate` rewrites them into day partitions.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vigil.features.spec import DAY_SECONDS

KINDS = ("transactions", "labels")
COLUMNS = {
    "transactions": ("transaction_id", "ts", "customer_id", "terminal_id", "tx_amount"),
    "labels": ("transaction_id", "ts", "terminal_id", "tx_fraud"),
}
PARTITION = "date="
LOG_TS = "__vigil_ts"  # the day column of a declared repo's `events`, beside the repo's own fields


def filesystem(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of `root` (a local path or a URL such as s3://bucket/prefix)."""
    text = str(root)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).resolve())
    fs, path = pafs.FileSystem.from_uri(text)
    if isinstance(fs, pafs.S3FileSystem) and os.environ.get("AWS_ENDPOINT_URL"):
        fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    return fs, path.rstrip("/")


def day_of(ts: np.ndarray) -> np.ndarray:
    """Calendar day numbers (days since 1970-01-01) of unix seconds."""
    return np.floor_divide(ts, DAY_SECONDS)


def day_name(day: int) -> str:
    return str(date.fromordinal(date(1970, 1, 1).toordinal() + int(day)))


def writer_id(worker: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-w{worker}"


class EventLogWriter:
    """Appends frames of one kind to the log, one part per day they cover."""

    def __init__(self, root: str | Path, worker: int = 0) -> None:
        self.fs, self.root = filesystem(root)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.writer = writer_id(worker)

    def write(self, kind: str, frame: pd.DataFrame, ts: str = "ts") -> list[str]:
        """Writes `frame` (the kind's COLUMNS; any columns, with `ts` a column of unix seconds
        to partition by, for a kind of its own such as a declared repo's `events`) durably;
        returns the new parts."""
        if frame.empty:
            return []
        if kind in COLUMNS:
            frame = frame[list(COLUMNS[kind])]
        days = day_of(frame[ts].to_numpy(np.int64))
        written = []
        for day in np.unique(days):
            part = frame[days == day]
            folder = f"{self.root}/{kind}/{PARTITION}{day_name(int(day))}"
            path = f"{folder}/part-{self.writer}-{uuid.uuid4().hex[:12]}.parquet"
            self._write(pa.Table.from_pandas(part, preserve_index=False), folder, path)
            written.append(path)
        return written

    def _write(self, table: pa.Table, folder: str, path: str) -> None:
        self.fs.create_dir(folder, recursive=True)
        if not self.local:
            pq.write_table(table, path, filesystem=self.fs)  # an object appears when complete
            return
        tmp = f"{folder}/.{Path(path).name}.tmp"
        with open(tmp, "wb") as out:
            pq.write_table(table, out)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, path)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the rename itself survives a power loss
        finally:
            os.close(descriptor)


@dataclass(frozen=True)
class Part:
    path: str
    day: str | None  # None for a part written before the day partitions
    size: int
    mtime_ns: int


def list_parts(root: str | Path, kind: str) -> list[Part]:
    """Every complete part of `kind` (temporary files are skipped)."""
    fs, base = filesystem(root)
    folder = f"{base}/{kind}"
    if fs.get_file_info(folder).type == pafs.FileType.NotFound:
        return []
    parts = []
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
        name = info.base_name
        if info.type != pafs.FileType.File or not name.startswith("part-") or not name.endswith(".parquet"):
            continue
        parent = info.path.rsplit("/", 2)[-2]
        day = parent[len(PARTITION) :] if parent.startswith(PARTITION) else None
        parts.append(Part(info.path, day, int(info.size or 0), int(info.mtime_ns or 0)))
    return sorted(parts, key=lambda p: (p.day or "", p.mtime_ns, p.path))


def days(root: str | Path, kind: str) -> list[str]:
    return sorted({p.day for p in list_parts(root, kind) if p.day is not None})


def _in_range(part: Part, first: str | None, last: str | None) -> bool:
    if part.day is None:
        return True  # an unpartitioned part may hold any day: read it, filter its rows
    return (first is None or part.day >= first) and (last is None or part.day <= last)


def iter_parts(
    root: str | Path, kind: str, first: str | None = None, last: str | None = None
) -> Iterator[tuple[Part, pd.DataFrame]]:
    """(part, rows) for parts holding days in [first, last] (ISO dates, inclusive)."""
    fs, _ = filesystem(root)
    for part in list_parts(root, kind):
        if not _in_range(part, first, last):
            continue
        frame = pq.read_table(part.path, filesystem=fs).to_pandas()
        if part.day is None and (first is not None or last is not None):
            day = pd.Series(day_of(frame["ts"].to_numpy(np.int64))).map(day_name)
            keep = np.ones(len(frame), bool)
            if first is not None:
                keep &= (day >= first).to_numpy()
            if last is not None:
                keep &= (day <= last).to_numpy()
            frame = frame[keep]
        yield part, frame


def read_log(
    root: str | Path, kind: str, first: str | None = None, last: str | None = None, key: str = "transaction_id"
) -> pd.DataFrame:
    """Events of `kind` on days [first, last], one row per `key` (the last written)."""
    frames = [frame for _, frame in iter_parts(root, kind, first, last)]
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=np.int64) for name in COLUMNS.get(kind, ("ts", key))})
    frame = pd.concat(frames, ignore_index=True)
    return frame.drop_duplicates(key, keep="last").reset_index(drop=True)


def not_in_log(root: str | Path, kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose transaction id is not in the log yet (on their own days).

    For events delivered a second time (a crash between a part's write and its
    acknowledgement): only the days they fall on are read, and only their ids.
    """
    if frame.empty:
        return frame
    fs, _ = filesystem(root)
    names = {day_name(int(d)) for d in np.unique(day_of(frame["ts"].to_numpy(np.int64)))}
    seen: set[int] = set()
    for part in list_parts(root, kind):
        if part.day is None or part.day in names:
            ids = pq.read_table(part.path, filesystem=fs, columns=["transaction_id"]).column(0)
            seen.update(ids.to_pylist())
    if not seen:
        return frame
    return frame[~frame["transaction_id"].isin(seen)]


def is_empty(root: str | Path) -> bool:
    return not any(list_parts(root, kind) for kind in KINDS)


def _filled_path(root: str | Path, store: str) -> tuple[pafs.FileSystem, str]:
    fs, path = filesystem(root)
    return fs, f"{path}/filled/{store.replace(':', '_')}"


def record_filled(root: str | Path, store: str) -> None:
    """Notes, durably beside the event log, that the online store `store` was filled once: a
    store found empty later has lost data (it is not a new deployment)."""
    fs, path = _filled_path(root, store)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(f"{datetime.now(UTC).isoformat(timespec='seconds')}\n".encode())


def was_filled(root: str | Path, store: str) -> bool:
    fs, path = _filled_path(root, store)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def migrate(root: str | Path) -> int:
    """Rewrites parts written before the day partitions into them; returns how many."""
    fs, _ = filesystem(root)
    moved = 0
    writer = EventLogWriter(root)
    for kind in KINDS:
        for part in list_parts(root, kind):
            if part.day is not None:
                continue
            writer.write(kind, pq.read_table(part.path, filesystem=fs).to_pandas())
            fs.delete_file(part.path)
            moved += 1
    return moved
