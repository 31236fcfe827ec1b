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
from typing import Any

import numpy as np
import orjson
import pandas as pd
import redis

from vigil.features import spec
from vigil.settings import Settings

COLUMNS = ["transaction_id", "ts", "customer_id", "terminal_id", "score", "version", "fallback", "reason", "latency_ms"]
READ_COUNT = 500  # entries per read; the service's entries hold up to 2,000 answers each
# The scoring service's entries: many answers each, as JSON columns.
ENTRY_FORMAT = "columns-v1"


def predictions_dir(settings: Settings) -> Path:
    return settings.data_dir / "predictions"


def answers_key(stream: str) -> str:
    """The counter of answers ever logged to `stream`."""
    return f"{stream}:answers"


def logged_answers(settings: Settings, client: redis.Redis) -> int:
    return int(client.get(answers_key(settings.prediction_stream)) or 0)  # type: ignore[arg-type]


def _marker(settings: Settings) -> str:
    return f"{settings.prediction_stream}:rolled"


def _columns_entry(entry_id: str, fields: dict[bytes, bytes]) -> pd.DataFrame:
    """An entry of many answers (`format=columns-v1`, as the scoring service writes them)."""
    data = orjson.loads(fields[b"data"])
    frame = pd.DataFrame({name: data[name] for name in COLUMNS})
    frame.insert(0, "stream_id", [f"{entry_id}:{i}" for i in range(len(frame))])
    inputs = np.asarray(data["features"], dtype=np.float64).reshape(len(frame), -1)
    # Services before fraud_v2 logged fewer inputs: the missing ones are NaN.
    for j, name in enumerate(spec.SERVED_INPUTS):
        frame[name] = inputs[:, j] if j < inputs.shape[1] else np.nan
    return frame


def _answer_entry(entry_id: str, fields: dict[bytes, bytes]) -> pd.DataFrame:
    """An entry of one answer (field per column, features as a JSON list)."""
    row: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    inputs = json.loads(row.pop("features"))
    row.update({name: inputs[j] if j < len(inputs) else np.nan for j, name in enumerate(spec.SERVED_INPUTS)})
    return pd.DataFrame([{"stream_id": entry_id, **row}])


def decode_entries(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pd.DataFrame:
    """Stream entries (either form) to typed columns: ids, time, score, model version, fallback, inputs."""
    parts = [
        _columns_entry(entry_id.decode(), fields)
        if fields.get(b"format") == ENTRY_FORMAT.encode()
        else _answer_entry(entry_id.decode(), fields)
        for entry_id, fields in entries
    ]
    frame = pd.concat(parts, ignore_index=True)
    for name in ("ts", "customer_id", "terminal_id"):  # absent from entries of services before they were logged
        if name not in frame:
            frame[name] = -1
    typed = {
        "transaction_id": np.int64,
        "ts": np.int64,
        "customer_id": np.int64,
        "terminal_id": np.int64,
        "score": np.float64,
        "latency_ms": np.float64,
    }
    for name, dtype in typed.items():
        frame[name] = pd.to_numeric(frame[name]).fillna(-1).astype(dtype)
    frame["version"] = frame["version"].astype(str)
    frame["reason"] = frame["reason"].fillna("").astype(str)
    frame["fallback"] = frame["fallback"].map(lambda v: str(v) in ("1", "True", "true")).astype(bool)
    frame[list(spec.SERVED_INPUTS)] = frame[list(spec.SERVED_INPUTS)].astype(np.float64)
    return frame[["stream_id", *COLUMNS, *spec.SERVED_INPUTS]]


def roll_predictions(settings: Settings, client: redis.Redis) -> int:
    """Copies the stream's new entries to Parquet; returns how many answers they held."""
    folder = predictions_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    marker: bytes | None = client.get(_marker(settings))  # type: ignore[assignment]
    start = "(" + marker.decode() if marker else "-"
    copied = 0
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(  # type: ignore[assignment]
            settings.prediction_stream, min=start, count=READ_COUNT
        )
        if not entries:
            return copied
        frame = decode_entries(entries)
        first, last = entries[0][0].decode(), entries[-1][0].decode()
        frame.to_parquet(folder / f"part-{first.replace('-', '_')}-{last.replace('-', '_')}.parquet", index=False)
        client.set(_marker(settings), last)
        copied += len(frame)
        start = "(" + last


def read_predictions(settings: Settings, since: pd.Timestamp | None = None) -> pd.DataFrame:
    """Every rolled prediction (of transactions at or after `since`), one row per answer,
    with `tx_datetime` from the transaction's own time."""
    parts = sorted(predictions_dir(settings).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=[*COLUMNS, *spec.SERVED_INPUTS, "tx_datetime"])
    filters = [("ts", ">=", int(since.timestamp()))] if since is not None else None
    frame = pd.concat([pd.read_parquet(p, filters=filters) for p in parts], ignore_index=True)
    frame = frame.drop_duplicates("stream_id")
    frame = frame[frame["ts"] >= 0]  # entries from services older than the logged time
    frame["tx_datetime"] = pd.to_datetime(frame["ts"], unit="s")
    # Log order within a second: stream ids ("ms-seq", ":i" for an answer inside a
    # columns entry) compared as numbers; as strings "x-10" would sort before "x-9".
    order = frame["stream_id"].str.extract(r"^(\d+)-(\d+)(?::(\d+))?$").fillna("0").astype(np.int64)
    frame[["_ms", "_seq", "_i"]] = order.to_numpy()
    frame = frame.sort_values(["ts", "_ms", "_seq", "_i"], kind="stable")
    return frame.drop(columns=["_ms", "_seq", "_i"]).reset_index(drop=True)


def delete_rolled(settings: Settings, client: redis.Redis) -> None:
    """Forgets the rolled history (tests and the demo start clean)."""
    client.delete(_marker(settings))
    for part in predictions_dir(settings).glob("part-*.parquet"):
        part.unlink()
