"""Writes transactions to a file, or as events to a Redis stream at a given rate."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vigil.files import file_format
from vigil.online.connection import connect


def write_file(blocks: Iterable[pd.DataFrame], path: Path) -> tuple[int, int]:
    """Streams blocks into one Parquet/CSV/JSON-lines file; returns (rows, frauds)."""
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = frauds = 0
    writer: pq.ParquetWriter | None = None
    try:
        for i, block in enumerate(blocks):
            rows += len(block)
            frauds += int(block["tx_fraud"].sum())
            if fmt == "parquet":
                table = pa.Table.from_pandas(block, preserve_index=False)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
            elif fmt == "csv":
                block.to_csv(path, mode="w" if i == 0 else "a", header=i == 0, index=False)
            else:
                text = block.assign(tx_datetime=block["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")).to_json(
                    orient="records", lines=True
                )
                with path.open("w" if i == 0 else "a") as out:
                    out.write(text if text.endswith("\n") else text + "\n")
    finally:
        if writer is not None:
            writer.close()
    return rows, frauds


def parse_stream_uri(uri: str) -> tuple[str, str]:
    """redis://HOST:PORT/STREAM -> (connection URL on db 0, stream name)."""
    parts = urlsplit(uri)
    stream = parts.path.lstrip("/")
    if parts.scheme not in ("redis", "rediss") or not stream:
        raise ValueError(f"{uri}: use redis://HOST:PORT/STREAM")
    return f"{parts.scheme}://{parts.netloc}/0", stream


def event_fields(events: pd.DataFrame) -> list[dict[str, str]]:
    """Flat string fields per event (the stream format the flow reads)."""
    frame = events.copy()
    frame["tx_datetime"] = pd.to_datetime(frame["tx_datetime"]).dt.strftime("%Y-%m-%dT%H:%M:%S")
    records = frame.to_dict("records")
    return [
        {k: str(v) for k, v in r.items() if v is not None and not (isinstance(v, float) and v != v)} for r in records
    ]


def write_stream(
    transactions: pd.DataFrame,
    uri: str,
    rate: float | None = None,
    label_delay_days: float = 7.0,
    with_labels: bool = True,
    limit: int | None = None,
    chunk: int = 500,
) -> int:
    """Sends transactions (and their delayed label events) in event order; returns the count."""
    from flows.sources import replay_order

    url, stream = parse_stream_uri(uri)
    columns = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]
    frame = transactions[[*columns, "tx_fraud"]] if with_labels else transactions[columns].assign(tx_fraud=None)
    events, _ = replay_order(frame.assign(kind="transaction"), label_delay_days)
    if limit is not None:
        events = events.iloc[:limit]
    client = connect(url)
    started = time.perf_counter()
    sent = 0
    step = max(1, min(chunk, int(rate / 100) if rate else chunk))  # ~100 sends a second when paced
    for start in range(0, len(events), step):
        fields = event_fields(events.iloc[start : start + step])
        with client.pipeline(transaction=False) as pipe:
            for f in fields:
                pipe.xadd(stream, f)
            pipe.execute()
        sent += len(fields)
        if rate:
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                time.sleep(ahead)
    client.close()
    return sent
