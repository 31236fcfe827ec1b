"""The prediction log: the scoring service's Redis stream, persisted to day-partitioned Parquet.

The service appends every answer to `{prefix}:predictions` (entries of many answers each,
see `scoring.prediction_log`). `persist` moves them to

    <data>/predictions/date=YYYY-MM-DD/part-<first id>-<last id>.parquet   (the transactions' day)

and only then trims the stream of what it wrote (XTRIM MINID), so the stream stays short
however fast answers come, and nothing is trimmed unread. One persister works at a time
(a lease in Redis). The position it reached is kept in Redis and checked against the
newest part on disk; a crash between writing a part and moving the position writes those
answers again, and every reader keeps one row per answer (`answer_id`: the entry's own id
and the answer's place in it, which a service's retried write repeats too), so each
answer is exported exactly once.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from vigil.features import spec
from vigil.settings import Settings

COLUMNS = [
    "answer_id",
    "transaction_id",
    "ts",
    "customer_id",
    "terminal_id",
    "score",
    "version",
    "fallback",
    "reason",
    "decision",
    "reasons",
    "latency_ms",
]
READ_COUNT = 200  # entries per read; the service's entries hold up to 2,000 answers each
# The scoring service's entries: many answers each, as JSON columns.
ENTRY_FORMAT = "columns-v1"
PARTITION = "date="
LEASE_SECONDS = 10


def predictions_dir(settings: Settings) -> Path:
    return settings.data_dir / "predictions"


def answers_key(stream: str) -> str:
    """The counter of answers ever logged to `stream`."""
    return f"{stream}:answers"


def logged_answers(settings: Settings, client: Any) -> int:
    return int(client.get(answers_key(settings.prediction_stream)) or 0)


def persisted_key(settings: Settings) -> str:
    """Where the persister keeps the id of the last entry it wrote to Parquet."""
    return f"{settings.prediction_stream}:persisted"


def _lease(settings: Settings) -> str:
    return f"{settings.prediction_stream}:persister"


def _columns_entry(entry_id: str, fields: dict[bytes, bytes]) -> pd.DataFrame:
    """An entry of many answers (`format=columns-v1`, as the scoring service writes them)."""
    data = orjson.loads(fields[b"data"])
    rows = len(data["transaction_id"])
    frame = pd.DataFrame({name: data[name] for name in COLUMNS if name in data})
    own = fields.get(b"entry", entry_id.encode()).decode()
    frame.insert(0, "answer_id", [f"{own}:{i}" for i in range(rows)])
    frame.insert(0, "stream_id", [f"{entry_id}:{i}" for i in range(rows)])
    if "reasons" in frame:
        frame["reasons"] = frame["reasons"].map(lambda r: ",".join(r) if isinstance(r, list) else str(r or ""))
    inputs = np.asarray(data["features"], dtype=np.float64).reshape(rows, -1)
    # A declared repo's versions name their inputs; the handbook's are its served inputs (a
    # service before fraud_v2 logged fewer: the missing ones are NaN).
    names = data.get("inputs") or spec.SERVED_INPUTS
    for j, name in enumerate(names):
        frame[name] = inputs[:, j] if j < inputs.shape[1] else np.nan
    frame.attrs["inputs"] = list(names)
    return frame


def _answer_entry(entry_id: str, fields: dict[bytes, bytes]) -> pd.DataFrame:
    """An entry of one answer (field per column, features as a JSON list)."""
    row: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    inputs = json.loads(row.pop("features"))
    row.update({name: inputs[j] if j < len(inputs) else np.nan for j, name in enumerate(spec.SERVED_INPUTS)})
    frame = pd.DataFrame([{"stream_id": entry_id, "answer_id": f"{entry_id}:0", **row}])
    frame.attrs["inputs"] = list(spec.SERVED_INPUTS)
    return frame


def decode_entries(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> pd.DataFrame:
    """Stream entries (either form) to typed columns: ids, time, score, model version, fallback, inputs."""
    parts = [
        _columns_entry(entry_id.decode(), fields)
        if fields.get(b"format") == ENTRY_FORMAT.encode()
        else _answer_entry(entry_id.decode(), fields)
        for entry_id, fields in entries
    ]
    inputs = list(dict.fromkeys(name for part in parts for name in part.attrs["inputs"]))
    frame = pd.concat(parts, ignore_index=True)
    for name in ("ts", "customer_id", "terminal_id"):  # absent from entries of services before they were logged
        if name not in frame:
            frame[name] = -1
    for name in ("decision", "reasons"):
        if name not in frame:
            frame[name] = ""
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
    for name in ("version", "reason", "decision", "reasons"):
        frame[name] = frame[name].fillna("").astype(str)
    frame["fallback"] = frame["fallback"].map(lambda v: str(v) in ("1", "True", "true")).astype(bool)
    frame[inputs] = frame[inputs].astype(np.float64)
    return frame[["stream_id", *COLUMNS, *inputs]]


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _write_days(folder: Path, frame: pd.DataFrame, first: str, last: str) -> None:
    """One part per transaction day, written aside, flushed and renamed (never half a file)."""
    day = pd.to_datetime(frame["ts"].clip(lower=0), unit="s").dt.strftime("%Y-%m-%d")
    name = f"part-{first.replace('-', '_')}-{last.replace('-', '_')}.parquet"
    for value, rows in frame.groupby(day, sort=True):
        target = folder / f"{PARTITION}{value}"
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{name}.tmp"
        with tmp.open("wb") as out:
            rows.to_parquet(out, index=False)
            out.flush()
            os.fsync(out.fileno())
        tmp.rename(target / name)


def persist_once(settings: Settings, client: Any, holder: str | None = None) -> int:
    """Moves the stream's unwritten entries to Parquet and trims them; returns how many
    answers it wrote. `holder` names a lease this persister already holds."""
    folder = predictions_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    stream = settings.prediction_stream
    marker: bytes | None = client.get(persisted_key(settings))
    start = "(" + marker.decode() if marker else "-"
    written = 0
    while True:
        if holder is not None and not renew_lease(settings, client, holder):
            raise RuntimeError("another persister took over the prediction log")
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream, min=start, count=READ_COUNT)
        if not entries:
            return written
        frame = decode_entries(entries)
        first, last = entries[0][0].decode(), entries[-1][0].decode()
        _write_days(folder, frame, first, last)
        client.set(persisted_key(settings), last)
        client.xtrim(stream, minid=_next_id(last), approximate=False)  # only what is now on disk
        written += len(frame)
        start = "(" + last


def take_lease(settings: Settings, client: Any, holder: str) -> bool:
    return bool(client.set(_lease(settings), holder, nx=True, ex=LEASE_SECONDS))


def renew_lease(settings: Settings, client: Any, holder: str) -> bool:
    current = client.get(_lease(settings))
    if current is not None and current.decode() != holder:
        return False
    client.set(_lease(settings), holder, ex=LEASE_SECONDS)
    return True


def release_lease(settings: Settings, client: Any, holder: str) -> None:
    current = client.get(_lease(settings))
    if current is not None and current.decode() == holder:
        client.delete(_lease(settings))


def roll_predictions(settings: Settings, client: Any) -> int:
    """Persists what the stream holds now (what `vigil monitor` does before reading)."""
    holder = f"monitor-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    if not take_lease(settings, client, holder):
        return 0  # a `vigil predictions persist` is running: it keeps the files current
    try:
        return persist_once(settings, client, holder)
    finally:
        release_lease(settings, client, holder)


def _parts(settings: Settings) -> list[Path]:
    folder = predictions_dir(settings)
    return sorted([*folder.glob("part-*.parquet"), *folder.glob(f"{PARTITION}*/part-*.parquet")])


def unpersisted(settings: Settings, client: Any) -> pd.DataFrame:
    """The prediction log's entries not persisted yet, decoded, left where they are (a dry run)."""
    marker: bytes | None = client.get(persisted_key(settings))
    entries = client.xrange(settings.prediction_stream, min="(" + marker.decode() if marker else "-")
    return decode_entries(entries) if entries else pd.DataFrame()


def read_predictions(
    settings: Settings, since: pd.Timestamp | None = None, also: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Every persisted prediction (of transactions at or after `since`), and those of `also`
    (decoded entries not persisted yet), one row per answer, with `tx_datetime` from the
    transaction's own time."""
    parts = _parts(settings)
    if since is not None:
        first_day = f"{PARTITION}{since:%Y-%m-%d}"
        parts = [p for p in parts if not p.parent.name.startswith(PARTITION) or p.parent.name >= first_day]
    extra = [also] if also is not None and not also.empty else []
    if not parts and not extra:
        return pd.DataFrame(columns=[*COLUMNS, *spec.SERVED_INPUTS, "tx_datetime"])
    filters = [("ts", ">=", int(since.timestamp()))] if since is not None else None
    frame = pd.concat([*(pd.read_parquet(p, filters=filters) for p in parts), *extra], ignore_index=True)
    if "answer_id" not in frame:
        frame["answer_id"] = frame["stream_id"]
    frame["answer_id"] = frame["answer_id"].fillna(frame["stream_id"])
    for name in ("decision", "reasons"):
        frame[name] = frame[name].fillna("") if name in frame else ""
    frame = frame.drop_duplicates("answer_id")
    frame = frame[frame["ts"] >= 0]  # entries from services older than the logged time
    frame["tx_datetime"] = pd.to_datetime(frame["ts"], unit="s")
    # Log order within a second: stream ids ("ms-seq", ":i" for an answer inside a
    # columns entry) compared as numbers; as strings "x-10" would sort before "x-9".
    order = frame["stream_id"].str.extract(r"^(\d+)-(\d+)(?::(\d+))?$").fillna("0").astype(np.int64)
    frame[["_ms", "_seq", "_i"]] = order.to_numpy()
    frame = frame.sort_values(["ts", "_ms", "_seq", "_i"], kind="stable")
    return frame.drop(columns=["_ms", "_seq", "_i"]).reset_index(drop=True)


def export(settings: Settings, out: Path) -> int:
    """Every persisted answer, once, to one Parquet file; returns how many."""
    frame = read_predictions(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=["stream_id"]).to_parquet(out, index=False)
    return len(frame)


def delete_rolled(settings: Settings, client: Any) -> None:
    """Forgets the persisted history (tests and the demo start clean)."""
    client.delete(persisted_key(settings))
    for part in _parts(settings):
        part.unlink()
