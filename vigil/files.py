"""Reads transaction files (Parquet, CSV, JSON lines): as raw records keeping bad rows
(`read_records`), or as a table with its time columns parsed (`read_table`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vigil.events import ALL_FIELDS, DeadLetter

FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


class UnreadableFileError(ValueError):
    """The file cannot be read at all (missing, unknown format, no usable columns)."""


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UnreadableFileError(
            f"{path}: unknown file type {path.suffix!r}; use .parquet, .csv or .jsonl (JSON lines)"
        )
    return fmt


def read_records(path: Path) -> tuple[pd.DataFrame, list[DeadLetter]]:
    """The file's rows with the event columns (others dropped), plus unparseable lines.

    CSV values stay text so that validation can name what is wrong with each one.
    """
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file")
    fmt = file_format(path)
    unparsed: list[DeadLetter] = []
    if fmt == "parquet":
        frame = pd.read_parquet(path)
    elif fmt == "csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    else:
        rows = []
        with path.open("r", encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if not text:
                    continue
                try:
                    record = json.loads(text)
                except ValueError:
                    unparsed.append(DeadLetter(f"line {number} is not valid JSON", text, str(path)))
                    continue
                if not isinstance(record, dict):
                    unparsed.append(DeadLetter(f"line {number} is not a JSON object", text, str(path)))
                    continue
                rows.append(record)
        frame = pd.DataFrame(rows)
    present = [c for c in ALL_FIELDS if c in frame.columns]
    if "transaction_id" not in present and len(frame):
        raise UnreadableFileError(f"{path}: no transaction_id column; expected columns {', '.join(ALL_FIELDS[1:])}")
    frame = frame[present].reset_index(drop=True)
    for missing in (c for c in ALL_FIELDS if c not in frame.columns):
        frame[missing] = None
    return frame, unparsed


def read_table(path: Path, times: list[str]) -> pd.DataFrame:
    """A whole file as a frame, the columns `times` parsed as times (a declared repo's events)."""
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file")
    fmt = file_format(path)
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt == "csv":
            return pd.read_csv(path, parse_dates=times)
        return pd.read_json(path, lines=True, convert_dates=times)
    except (OSError, ValueError) as error:
        raise UnreadableFileError(f"{path}: {error}") from None
