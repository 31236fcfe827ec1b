"""Incremental, bounded backfill: the features of the event log's transactions, by day.

    <data>/offline/features/date=YYYY-MM-DD/part-0.parquet     (one file per day)
    <data>/offline/features/_manifest.json                     (each day's input fingerprint)

The features of day d need the transactions of days [d − 30, d] (the customer windows and
habits) and the labels of the transactions of days [d − 37, d − 7] (the terminal windows,
streaks and label age). So computing days [a, b] reads only [a − 37, b] of the log, and a
day is computed again only when the parts it reads changed: new events for its window, or
labels arriving late into the partitions it reads. Days are computed in chunks of
`CHUNK_DAYS`, so memory follows the chunk and its look-back, not the history.

The same window functions as the stream and the request-time rollup compute every feature
(`vigil.features.backfill.compute_features`); `engine="spark"` runs them on a Spark
cluster (`vigil.offline.spark_engine`), one chunk per task.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from vigil.features import spec
from vigil.features.backfill import compute_features
from vigil.offline.eventlog import Part, list_parts, read_log

TRANSACTION_LOOKBACK_DAYS = max(spec.WINDOW_DAYS)  # customer windows (t − 30 d, t]
LABEL_WINDOW = (spec.TERMINAL_DELAY_DAYS, spec.TERMINAL_DELAY_DAYS + max(spec.WINDOW_DAYS))  # (t − 37 d, t − 7 d]
CHUNK_DAYS = 7
MANIFEST = "_manifest.json"


def features_dir(offline_dir: Path) -> Path:
    return offline_dir / "features"


def shift(day: str, days: int) -> str:
    return str(date.fromisoformat(day) + timedelta(days=days))


def day_range(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [str(start + timedelta(days=i)) for i in range((end - start).days + 1)]


def inputs_of(day: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The transaction days and the label days the features of `day` read."""
    return (shift(day, -TRANSACTION_LOOKBACK_DAYS), day), (shift(day, -LABEL_WINDOW[1]), shift(day, -LABEL_WINDOW[0]))


def _fingerprints(days: list[str], transactions: list[Part], labels: list[Part]) -> dict[str, str]:
    """Each day's inputs as a digest of the parts it reads (names and sizes: parts never change)."""
    by_day: dict[str, list[Part]] = {}
    for part in transactions + labels:
        by_day.setdefault(part.day or "", []).append(part)
    unpartitioned = sorted(f"{p.path}:{p.size}" for p in by_day.get("", []))
    out = {}
    for day in days:
        (tx_first, tx_last), (label_first, label_last) = inputs_of(day)
        names = list(unpartitioned)
        for part in transactions:
            if part.day is not None and tx_first <= part.day <= tx_last:
                names.append(f"t:{part.path}:{part.size}")
        for part in labels:
            if part.day is not None and label_first <= part.day <= label_last:
                names.append(f"l:{part.path}:{part.size}")
        out[day] = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:20]
    return out


@dataclass
class BackfillReport:
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0
    engine: str = "local"

    def summary(self) -> str:
        return (
            f"backfill ({self.engine}): {len(self.computed)} day(s) computed, {len(self.skipped)} up to date, "
            f"{self.rows:,} rows in {self.seconds:.1f} s"
        )


def chunk_features(log_root: str | Path, first: str, last: str) -> pd.DataFrame:
    """The feature rows of days [first, last], from that span's look-back of the log only."""
    transactions = read_log(log_root, "transactions", shift(first, -TRANSACTION_LOOKBACK_DAYS), last)
    labels = read_log(log_root, "labels", shift(first, -LABEL_WINDOW[1]), shift(last, -LABEL_WINDOW[0]))
    return features_table(transactions, labels, first, last)


def features_table(transactions: pd.DataFrame, labels: pd.DataFrame, first: str, last: str) -> pd.DataFrame:
    """Feature rows of the transactions of days [first, last] (event log columns in, table out)."""
    if transactions.empty:
        return pd.DataFrame()
    transactions = transactions.assign(tx_datetime=pd.to_datetime(transactions["ts"], unit="s"))
    labels = labels.assign(tx_datetime=pd.to_datetime(labels["ts"], unit="s"))
    features = compute_features(transactions, labels)
    day = transactions["tx_datetime"].dt.strftime("%Y-%m-%d").to_numpy()
    keep = (day >= first) & (day <= last)
    table = features[keep].reset_index(drop=True)
    chosen = transactions[keep]
    return table.assign(
        event_timestamp=chosen["tx_datetime"].dt.tz_localize("UTC").to_numpy(),
        tx_amount=chosen["tx_amount"].to_numpy(np.float64),
        customer_id=chosen["customer_id"].to_numpy(np.int64),
        terminal_id=chosen["terminal_id"].to_numpy(np.int64),
        day=day[keep],
    )


def write_days(folder: Path, table: pd.DataFrame) -> int:
    """One file per day (written aside, then renamed); returns the rows written."""
    rows = 0
    for day, part in table.groupby("day", sort=True):
        target = folder / f"date={day}"
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*.parquet"):  # a day computed again replaces what was there
            if old.name != "part-0.parquet":
                old.unlink()
        tmp = target / ".part-0.parquet.tmp"
        part.drop(columns=["day"]).to_parquet(tmp, index=False)
        tmp.rename(target / "part-0.parquet")
        rows += len(part)
    return rows


def _chunks(days: list[str], most: int | None = CHUNK_DAYS) -> list[tuple[str, str]]:
    """Runs of consecutive days, cut every `most` days (None: never)."""
    out: list[tuple[str, str]] = []
    for day in days:
        if out and shift(out[-1][1], 1) == day and (most is None or len(day_range(out[-1][0], day)) <= most):
            out[-1] = (out[-1][0], day)
        else:
            out.append((day, day))
    return out


def backfill_days(
    log_root: str | Path,
    offline_dir: Path,
    first: str | None = None,
    last: str | None = None,
    force: bool = False,
    engine: str = "local",
    spark_master: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> BackfillReport:
    """Computes the features of the log's days in [first, last] whose inputs changed, into
    `offline_dir`/features (the log itself may be anywhere pyarrow reads: `log_root`)."""
    started = time.perf_counter()
    transactions, labels = list_parts(log_root, "transactions"), list_parts(log_root, "labels")
    logged = sorted({p.day for p in transactions if p.day is not None})
    if any(p.day is None for p in transactions):  # parts from before the day partitions
        logged = sorted(set(logged) | set(_unpartitioned_days(log_root)))
    days = [d for d in logged if (first is None or d >= first) and (last is None or d <= last)]
    folder = features_dir(offline_dir)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    wanted = _fingerprints(days, transactions, labels)
    report = BackfillReport(engine=engine)
    todo: list[str] = []
    for day in days:
        current = has_day(folder, day) and manifest.get(day) == wanted[day]
        (report.skipped if current and not force else todo).append(day)
    if engine == "spark":
        from vigil.offline.spark_engine import compute_chunks

        # Whole runs of days: Spark partitions by entity, so its memory follows a bucket of
        # entities, not the span of days.
        report.rows = compute_chunks(log_root, _chunks(todo, None), folder, spark_master, progress)
    else:
        for chunk_first, chunk_last in _chunks(todo):
            table = chunk_features(log_root, chunk_first, chunk_last)
            report.rows += write_days(folder, table) if not table.empty else 0
            if progress is not None:
                progress(len(day_range(chunk_first, chunk_last)))
    report.computed = todo
    for day in todo:
        manifest[day] = wanted[day]
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=0, sort_keys=True))
    tmp.rename(manifest_path)
    report.seconds = time.perf_counter() - started
    return report


def _unpartitioned_days(log_root: str | Path) -> list[str]:
    frame = read_log(log_root, "transactions")
    return sorted(set(pd.to_datetime(frame["ts"], unit="s").dt.strftime("%Y-%m-%d")))


def has_day(folder: Path, day: str) -> bool:
    return any((folder / f"date={day}").glob("*.parquet"))


def read_features(offline_dir: Path, first: str, last: str) -> pd.DataFrame:
    """The computed feature rows of days [first, last] (whichever engine wrote them)."""
    folder = features_dir(offline_dir)
    frames = [
        pd.read_parquet(path)
        for day in day_range(first, last)
        for path in sorted((folder / f"date={day}").glob("*.parquet"))
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
