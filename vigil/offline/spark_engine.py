"""The backfill on Spark, when one machine is not enough (`vigil backfill --engine spark`).

The same feature definitions as the local engine, run where the data is: the event log's
day partitions are read by Spark, and the shared vectorised kernels
(`vigil.features.backfill.customer_features` / `terminal_features`) run inside grouped
pandas UDFs, each on a bucket of entities with all of their history:

    transactions [a − 30, b] --groupBy(customer bucket).applyInPandas--> calendar + customer features
    transactions [a, b] + labels [a − 37, b − 7] --cogroup(terminal bucket).applyInPandas--> terminal features
    join on transaction_id -> features of days [a, b], written by day

A bucket is `entity % buckets`, so a call holds many entities (the kernels are vectorised)
and never a part of one. `spark.master` comes from `--spark-master` (default `local[*]`).
PySpark is an optional extra: `pip install -e '.[spark]'`, and Java 17.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from vigil.features import spec
from vigil.features.backfill import CALENDAR, CUSTOMER, TERMINAL, customer_features, terminal_features

BUCKETS = 64


class SparkUnavailableError(RuntimeError):
    """PySpark or Java is missing (the message says what to install)."""


def check_spark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailableError(
            "the Spark engine needs PySpark: pip install -e '.[spark]' (in the project's .venv)"
        ) from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SparkUnavailableError("the Spark engine needs Java 17: install a JDK (e.g. apt install openjdk-17-jre)")


def session(master: str | None) -> Any:
    """A Spark session on `master`, its Python workers on this interpreter."""
    check_spark()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master or "local[*]")
        .appName("vigil-backfill")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(BUCKETS // 4))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _schema(names: tuple[str, ...]) -> str:
    return ", ".join(["transaction_id long", *(f"{n} {'long' if n in CALENDAR else 'double'}" for n in names)])


def _days(root: str | Path, kind: str, first: str, last: str) -> list[str]:
    """The log's day folders of `kind` in [first, last], as Spark names them (s3:// is s3a://)."""
    from vigil.offline.eventlog import filesystem, list_parts

    _, base = filesystem(root)
    days = sorted({p.day for p in list_parts(root, kind) if p.day is not None and first <= p.day <= last})
    prefix = "s3a://" if str(root).startswith("s3://") else ""
    return [f"{prefix}{base}/{kind}/date={day}" for day in days]


def _times(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(tx_datetime=pd.to_datetime(frame["ts"], unit="s"))


def compute_chunks(
    log_root: str | Path,
    chunks: list[tuple[str, str]],
    folder: Path,
    master: str | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Computes the features of each run of days in `chunks` on Spark, one job a run;
    returns the rows written."""
    if not chunks:
        return 0
    from pyspark.sql import functions as F

    from vigil.offline.backfill import LABEL_WINDOW, TRANSACTION_LOOKBACK_DAYS, day_range, shift

    spark = session(master)
    written = 0
    for first, last in chunks:
        tx_paths = _days(log_root, "transactions", shift(first, -TRANSACTION_LOOKBACK_DAYS), last)
        label_paths = _days(log_root, "labels", shift(first, -LABEL_WINDOW[1]), shift(last, -LABEL_WINDOW[0]))
        if not tx_paths:
            continue
        base = tx_paths[0].rsplit("/", 1)[0]
        reader = spark.read.option("basePath", base)
        transactions = reader.parquet(*tx_paths).dropDuplicates(["transaction_id"])
        if label_paths:
            labels = (
                spark.read.option("basePath", label_paths[0].rsplit("/", 1)[0])
                .parquet(*label_paths)
                .dropDuplicates(["transaction_id"])
            )
        else:
            labels = spark.createDataFrame([], "transaction_id long, ts long, terminal_id long, tx_fraud long")

        def customers(frame: pd.DataFrame) -> pd.DataFrame:
            return customer_features(_times(frame)).astype(dict.fromkeys(CALENDAR, "int64"))

        def terminals(queries: pd.DataFrame, known: pd.DataFrame) -> pd.DataFrame:
            return terminal_features(_times(queries), _times(known))

        customer_part = (
            transactions.withColumn("bucket", F.col("customer_id") % BUCKETS)
            .groupBy("bucket")
            .applyInPandas(customers, _schema((*CALENDAR, *CUSTOMER)))
        )
        wanted = transactions.where((F.col("date") >= first) & (F.col("date") <= last))
        queries = wanted.select("transaction_id", "ts", "terminal_id").withColumn(
            "bucket", F.col("terminal_id") % BUCKETS
        )
        terminal_part = (
            queries.groupBy("bucket")
            .cogroup(labels.withColumn("bucket", F.col("terminal_id") % BUCKETS).groupBy("bucket"))
            .applyInPandas(terminals, _schema(TERMINAL))
        )
        table = (
            wanted.select(
                "transaction_id",
                "customer_id",
                "terminal_id",
                "tx_amount",
                F.timestamp_seconds("ts").alias("event_timestamp"),
                F.col("date").alias("day"),
            )
            .join(customer_part, "transaction_id")
            .join(terminal_part, "transaction_id")
        )
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            out = Path(tmp) / "out"
            columns = ["transaction_id", *spec.ALL_FEATURES, "event_timestamp", "tx_amount", "customer_id"]
            table.select(*columns, "terminal_id", "day").write.partitionBy("day").parquet(str(out))
            for day_folder in sorted(out.glob("day=*")):
                day = day_folder.name.removeprefix("day=")
                target = folder / f"date={day}"
                if target.exists():
                    shutil.rmtree(target)
                day_folder.rename(target)
                written += sum(pq.read_metadata(f).num_rows for f in target.glob("*.parquet"))
        if progress is not None:
            progress(len(day_range(first, last)))
    return written
