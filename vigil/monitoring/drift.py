"""Drift of one window of live traffic against a training reference, with Evidently 0.7.

Every model input and the score are tested column by column: Wasserstein distance
(normed by the reference's spread) for numbers, Jensen-Shannon distance for the two
binary calendar flags, each drifting above 0.1 (Evidently's defaults for large samples,
fixed here so a small window is judged by the same rule as a large one). The window's
drift share is the share of drifting columns. `tx_during_weekend` is left out of
windows shorter than a week: a Saturday is all weekend by construction, not by drift.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vigil.features import spec

BINARY_COLUMNS = (spec.WEEKEND, spec.NIGHT)
SCORE = "score"
METHOD_NUMERIC, METHOD_BINARY, THRESHOLD = "wasserstein", "jensenshannon", 0.1
WEEK_SECONDS = 7 * 86_400


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass
class WindowDrift:
    start: str
    end: str
    version: str
    rows: int
    compared_rows: int
    share: float
    columns: list[ColumnDrift] = field(default_factory=list)
    report: str | None = None
    warmup: bool = False  # within the features' look-back of the history's start: never an alert

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted_columns": self.drifted_columns}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> WindowDrift:
        data = {k: v for k, v in data.items() if k != "drifted_columns"}
        columns = [ColumnDrift(**c) for c in data.pop("columns")]
        return WindowDrift(**data, columns=columns)


def drift_columns(window_seconds: int, reference: pd.DataFrame | None = None) -> list[str]:
    """The columns compared: the version's inputs (those of its `reference`, else the
    handbook's served inputs) and its score; the weekend flag only over a week or more."""
    if reference is not None:
        inputs = [c for c in reference.columns if c not in (SCORE, "tx_fraud", "tx_datetime")]
    else:
        inputs = list(spec.SERVED_INPUTS)
    columns = [*inputs, SCORE]
    return columns if window_seconds >= WEEK_SECONDS else [c for c in columns if c != spec.WEEKEND]


def measure_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    html_path: Path | None = None,
    max_rows: int = 20_000,
    seed: int = 0,
    drift_share: float = 0.25,
    caption: str = "",
) -> tuple[float, list[ColumnDrift], int]:
    """Runs Evidently's drift preset; returns (drift share, per-column results, rows compared).

    Windows larger than `max_rows` are sampled (uniformly, seeded) so a report takes seconds.
    """
    # Evidently's modules warn about their own dependencies (numpy.core, litestar) on import;
    # set here, after Feast's imports reset DeprecationWarning to "once".
    warnings.filterwarnings("ignore", message=r"numpy\.core is deprecated")
    warnings.filterwarnings("ignore", message=r".*Deprecated in litestar")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    if len(current) > max_rows:
        current = current.sample(max_rows, random_state=seed)
    # A reference or log from before fraud_v2 lacks its inputs (absent or all NaN): compared on the rest.
    columns = [c for c in columns if c in reference and c in current and current[c].notna().any()]
    binary = [c for c in columns if c in BINARY_COLUMNS]
    numeric = [c for c in columns if c not in BINARY_COLUMNS]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=binary)

    def dataset(frame: pd.DataFrame) -> Any:
        data = frame[columns].astype(float)
        data[binary] = data[binary].astype(int)
        return Dataset.from_pandas(data, data_definition=definition)

    report = Report(
        [
            DataDriftPreset(
                columns=columns,
                num_method=METHOD_NUMERIC,
                cat_method=METHOD_BINARY,
                threshold=THRESHOLD,
                drift_share=drift_share,  # Vigil's alert line, so the report's verdict is Vigil's
            )
        ],
        include_tests=True,
        metadata={"window": caption} if caption else None,
    )
    with warnings.catch_warnings():
        # Evidently's correlation widgets warn on constant columns (a window without night payments).
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = report.run(dataset(current), dataset(reference))
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html_path))
        if caption:
            _add_banner(html_path, caption)
    return (*_parse(snapshot.dict(), columns), len(current))


def _parse(result: dict[str, Any], columns: list[str]) -> tuple[float, list[ColumnDrift]]:
    """Drift share and per-column scores from the snapshot; a column drifted when
    Evidently's own drift test for it failed."""
    failed = {
        test["metric_config"]["params"].get("column")
        for test in result.get("tests", [])
        if test["id"] == "drift" and test["status"] == "FAIL"
    }
    share = 0.0
    by_column: dict[str, ColumnDrift] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
        elif config["type"].endswith(":ValueDrift"):
            name = config["column"]
            by_column[name] = ColumnDrift(
                name, config["method"], float(metric["value"]), float(config["threshold"]), name in failed
            )
    return share, [by_column[c] for c in columns if c in by_column]


def _add_banner(path: Path, caption: str) -> None:
    """Puts what Vigil compared, and by which rule, at the top of Evidently's page."""
    import html

    banner = (
        '<div style="font-family:sans-serif;padding:10px 16px;background:#f3f6fa;border-bottom:1px solid #ccd">'
        f"<b>Vigil drift report</b> &mdash; {html.escape(caption)}</div>"
    )
    text = path.read_text(encoding="utf-8")
    at = text.find("<body")
    if at != -1:
        at = text.find(">", at) + 1
        path.write_text(text[:at] + banner + text[at:], encoding="utf-8")
