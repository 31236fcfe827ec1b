"""The prediction log as a table: the scoring service's Redis stream, rolled to Parquet.

The service appends every answer to a bounded stream (`{prefix}:predictions`). Rolling
copies the entries not yet copied into a Parquet part under `predictions/` and records
the last copied stream id, so the stream can stay short while the history stays whole.
Rolling twice copies nothing twice; a part is written before the marker moves, so a
crash in between costs a duplicate (removed on read), never a loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from vigil.features import spec
from vigil.settings import Settings

COLUMNS = ["transaction_id", "ts", "customer_id", "terminal_id", "score", "version", "fallback", "reason", "latency_ms"]
READ_COUNT = 10_000


def predictions_dir(settings: Settings) -> Path:
    return settings.data_dir / "predictions"


def _marker(settings: Settings) -> str:
    return f"{settings.prediction_stream}:rolled"


def _frame(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pd.DataFrame:
    """Stream entries to typed columns: ids, time, score, model version, fallback, inputs."""
    rows = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    frame = pd.DataFrame(rows)
    for name in ("ts", "customer_id", "terminal_id"):  # written by services since the prediction log had them
        if name not in frame:
            frame[name] = -1
    out = pd.DataFrame(
        {
            "stream_id": [entry_id.decode() for entry_id, _ in entries],
            "transaction_id": frame["transaction_id"].astype(np.int64),
            "ts": frame["ts"].fillna(-1).astype(np.int64),
            "customer_id": frame["customer_id"].fillna(-1).astype(np.int64),
            "terminal_id": frame["terminal_id"].fillna(-1).astype(np.int64),
            "score": frame["score"].astype(np.float64),
            "version": frame["version"].astype(str),
            "fallback": frame["fallback"].astype(np.int64).astype(bool),
            "reason": frame["reason"].astype(str),
            "latency_ms": frame["latency_ms"].astype(np.float64),
        }
    )
    inputs = np.array([json.loads(f) for f in frame["features"]], dtype=np.float64).reshape(-1, len(spec.MODEL_INPUTS))
    for j, name in enumerate(spec.MODEL_INPUTS):
        out[name] = inputs[:, j]
    return out


def roll_predictions(settings: Settings, client: redis.Redis) -> int:
    """Copies the stream's new entries to Parquet; returns how many were copied."""
    folder = predictions_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    marker: bytes | None = client.get(_marker(settings))  # type: ignore[assignment]
    start = "(" + marker.decode() if marker else "-"
    copied = 0
    while True:
        entries = client.xrange(settings.prediction_stream, min=start, count=READ_COUNT)
        if not entries:
            return copied
        frame = _frame(entries)  # type: ignore[arg-type]
        first, last = frame["stream_id"].iloc[0], frame["stream_id"].iloc[-1]
        frame.to_parquet(folder / f"part-{first.replace('-', '_')}-{last.replace('-', '_')}.parquet", index=False)
        client.set(_marker(settings), last)
        copied += len(frame)
        start = "(" + last


def read_predictions(settings: Settings, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """Every rolled prediction (of transactions at or after `since`), one row per answer,
    with `tx_datetime` from the transaction's own time."""
    parts = sorted(predictions_dir(settings).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=[*COLUMNS, *spec.MODEL_INPUTS, "tx_datetime"])
    filters = [("ts", ">=", int(since.timestamp()))] if since is not None else None
    frame = pd.concat([pd.read_parquet(p, filters=filters) for p in parts], ignore_index=True)
    frame = frame.drop_duplicates("stream_id")
    frame = frame[frame["ts"] >= 0]  # entries from services older than the logged time
    frame["tx_datetime"] = pd.to_datetime(frame["ts"], unit="s")
    return frame.sort_values(["ts", "stream_id"]).reset_index(drop=True)


def delete_rolled(settings: Settings, client: redis.Redis) -> None:
    """Forgets the rolled history (tests and the demo start clean)."""
    client.delete(_marker(settings))
    for part in predictions_dir(settings).glob("part-*.parquet"):
        part.unlink()
