"""`vigil monitor`: drift and live performance over windows of the prediction log.

One run: roll the prediction log to Parquet; cut the last `lookback_days` of scored
traffic into windows of the transactions' own time; compare each (window, model
version) with that version's training reference (Evidently, one HTML report per window);
join label events to the logged scores for per-day AP and CP@100; raise alerts; write
`reports/index.html`, `reports/monitoring.json` and Prometheus gauges
(`reports/metrics.prom`, the node-exporter textfile format). Finished windows are kept
in `monitoring.json` and not recomputed by the next run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from vigil.monitoring.drift import THRESHOLD, WindowDrift, drift_columns, measure_drift
from vigil.monitoring.performance import DayPerformance, daily_performance, read_labels
from vigil.monitoring.predictions import read_predictions, roll_predictions, unpersisted
from vigil.monitoring.reference import load_reference
from vigil.monitoring.report import write_gauges, write_index
from vigil.online.connection import connect
from vigil.settings import Settings

log = logging.getLogger("vigil.monitor")
MIN_REPORT_ROWS = 50


@dataclass(frozen=True)
class MonitorConfig:
    window_hours: float = 24.0
    lookback_days: float = 7.0
    drift_share_threshold: float = 0.25  # share of drifting columns that raises a drift alert
    min_rows: int = 300  # smaller windows are reported, never alerted on
    max_rows: int = 20_000  # larger windows are sampled
    ap_tolerance: float = 0.3  # a day's AP below (1 - this) x the version's expected AP alerts
    min_frauds: int = 10
    # Labels arrive this long after a transaction: a day is judged only once they could have.
    label_delay_days: float = 7.0
    # The features' longest look-back (30 days) plus the label delay: windows this close to
    # the start of the ingested history compare half-filled windows with full ones.
    warmup_days: float = 37.0
    # Answers dated further than this past the 99th percentile of scored times are left out.
    outlier_days: float = 1.0


@dataclass
class MonitorResult:
    windows: list[WindowDrift] = field(default_factory=list)
    performance: list[DayPerformance] = field(default_factory=list)
    drift_alerts: list[WindowDrift] = field(default_factory=list)
    performance_alerts: list[DayPerformance] = field(default_factory=list)
    rolled: int = 0
    labels_pending_from: str | None = None  # days from this one on wait for their labels
    index: Path | None = None
    metrics_file: Path | None = None
    newest: pd.Timestamp | None = None
    excluded: int = 0  # answers left out as dated far past the bulk of the traffic

    @property
    def alerted(self) -> bool:
        return bool(self.drift_alerts or self.performance_alerts)


def _state_path(settings: Settings) -> Path:
    return settings.reports_dir / "monitoring.json"


def load_state(settings: Settings) -> dict[str, Any]:
    path = _state_path(settings)
    return json.loads(path.read_text()) if path.exists() else {"windows": {}, "retrains": []}


def save_state(settings: Settings, state: dict[str, Any]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1, default=str))


def expected_ap(settings: Settings, versions: set[str]) -> dict[str, float]:
    """Each version's test AP at training time (its `test_metrics` tag)."""
    from mlflow.tracking import MlflowClient

    from vigil.lifecycle.tracking import REGISTERED_MODEL, configure

    configure(settings)
    client = MlflowClient()
    out = {}
    for version in versions:
        tags = client.get_model_version(REGISTERED_MODEL, version).tags
        if "test_metrics" in tags:
            out[version] = float(json.loads(tags["test_metrics"])["ap"])
    return out


def history_start(settings: Settings) -> pd.Timestamp:
    """The first day of the ingested history (the offline event log)."""
    from vigil.offline.eventlog import days

    first = days(settings.event_log, "transactions")
    return pd.Timestamp(first[0]) if first else pd.Timestamp.min


def began_ts(window: WindowDrift) -> pd.Timestamp:
    return pd.Timestamp(window.start)


def _windows(predictions: pd.DataFrame, seconds: int) -> dict[tuple[int, str], pd.DataFrame]:
    served = predictions[~predictions["fallback"].astype(bool)]  # a fallback's score is another model's
    start = served["ts"] // seconds * seconds
    return {(int(s), str(v)): rows for (s, v), rows in served.groupby([start, served["version"]], sort=True)}


def beyond_the_bulk(ts: pd.Series, tolerance_seconds: float) -> pd.Series:
    """Answers dated further than `tolerance_seconds` past the 99th percentile of the scored
    traffic's times: a request dated years ahead (a client's clock, a typo) would otherwise
    become the newest transaction, and every window would be cut around it, empty."""
    if ts.empty:
        return ts.astype(bool)
    return ts > float(ts.quantile(0.99)) + tolerance_seconds


def run_monitor(settings: Settings, config: MonitorConfig | None = None, dry_run: bool = False) -> MonitorResult:
    """One run (see the module). `dry_run`: the same figures, with nothing changed: the
    prediction log is read where it is (not rolled to Parquet), no state, report or gauge
    is written, and the drift reports go to a temporary folder."""
    config = config or MonitorConfig()
    result = MonitorResult()
    client = connect(settings.redis_url)
    try:
        if dry_run:
            pending = unpersisted(settings, client)
        else:
            result.rolled, pending = roll_predictions(settings, client), None
    finally:
        client.close()
    everything = read_predictions(settings, also=pending)
    if everything.empty:
        return result
    outliers = beyond_the_bulk(everything["ts"], config.outlier_days * 86_400)
    result.excluded = int(outliers.sum())
    if result.excluded:
        log.warning(
            "%d answers dated after %s are left out (more than %g day(s) past the bulk of scored traffic)",
            result.excluded,
            everything.loc[~outliers, "tx_datetime"].max(),
            config.outlier_days,
        )
        everything = everything[~outliers]
    reports = Path(tempfile.mkdtemp(prefix="vigil-monitor-dry-")) if dry_run else settings.reports_dir
    result.newest = everything["tx_datetime"].max()
    predictions = everything[everything["tx_datetime"] > result.newest - pd.Timedelta(days=config.lookback_days)]
    seconds = max(int(config.window_hours * 3600), 60)
    state = load_state(settings)
    newest_ts = int(everything["ts"].max())
    warmup_end = history_start(settings) + pd.Timedelta(days=config.warmup_days)
    references: dict[str, pd.DataFrame] = {}
    for (start, version), rows in _windows(predictions, seconds).items():
        if len(rows) < MIN_REPORT_ROWS:  # a version's first or last few answers: nothing to compare
            continue
        key = f"{start}-{seconds}-v{version}"
        complete = start + seconds <= newest_ts
        if complete and key in state["windows"]:
            window = WindowDrift.from_dict(state["windows"][key])
        else:
            if version not in references:
                references[version] = load_reference(settings, version, keep=not dry_run)
            began = pd.Timestamp(start, unit="s")
            name = f"{began:%Y%m%d-%H%M}-{seconds // 3600}h-v{version}.html"
            caption = (
                f"window {began} to {began + pd.Timedelta(seconds=seconds)} (transaction time), "
                f"model version {version}, {len(rows):,} answers against the version's training reference; "
                f"a column drifts above {THRESHOLD:g}, the window alerts at a drift share of "
                f"{config.drift_share_threshold:g} (and {config.min_rows:,} rows or more)"
            )
            share, columns, compared = measure_drift(
                references[version],
                rows,
                drift_columns(seconds, references[version]),
                reports / "drift" / name,
                max_rows=config.max_rows,
                drift_share=config.drift_share_threshold,
                caption=caption,
            )
            window = WindowDrift(
                start=str(began),
                end=str(began + pd.Timedelta(seconds=seconds)),
                version=version,
                rows=len(rows),
                compared_rows=compared,
                share=share,
                columns=columns,
                report=f"drift/{name}",
            )
            if complete:
                state["windows"][key] = window.as_dict()
        window.warmup = began_ts(window) < warmup_end
        result.windows.append(window)
        if window.warmup:
            continue  # reported, marked, never an alert: the history is still filling the windows
        if window.rows >= config.min_rows and window.share >= config.drift_share_threshold:
            result.drift_alerts.append(window)
            log.warning(
                "drift alert: window %s (model v%s): %.0f%% of columns drifted (%s); report %s",
                window.start,
                version,
                100 * window.share,
                ", ".join(window.drifted_columns),
                window.report,
            )
    versions = set(predictions["version"].astype(str)) - {""}
    # Only days whose labels could all have arrived by the newest transaction.
    judged_until = (result.newest - pd.Timedelta(days=config.label_delay_days)).normalize()
    judged = predictions[predictions["tx_datetime"] < judged_until]
    result.labels_pending_from = str(judged_until.date())
    result.performance = daily_performance(
        judged,
        read_labels(settings, str(predictions["tx_datetime"].min().date())),
        expected_ap(settings, versions),
        config.ap_tolerance,
        config.min_frauds,
    )
    result.performance_alerts = [day for day in result.performance if day.alert]
    for day in result.performance_alerts:
        log.warning(
            "performance alert: %s (model v%s): AP %.3f vs expected %.3f over %d frauds",
            day.day,
            day.version,
            day.ap,
            day.expected_ap or float("nan"),
            day.frauds,
        )
    state["last_run"] = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "newest_transaction": str(result.newest),
        "drift_alerts": [w.start for w in result.drift_alerts],
        "performance_alerts": [d.day for d in result.performance_alerts],
    }
    if dry_run:
        return result
    save_state(settings, state)
    result.metrics_file = write_gauges(settings, result)
    result.index = write_index(settings, result, config, state)
    return result
