"""What a monitor run leaves for people and for Prometheus.

`reports/index.html`: drift share per window and AP per day as a picture, then every
window with its Evidently report linked, the days with labels, and retraining decisions.
`reports/metrics.prom`: gauges in Prometheus' text format (a node exporter's textfile
collector picks it up; `vigil monitor --watch` also serves them over HTTP).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from vigil.settings import Settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vigil.monitoring.monitor import MonitorConfig, MonitorResult


def gauges(result: MonitorResult, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    registry = registry or CollectorRegistry()
    share = Gauge("vigil_drift_share", "Share of drifting columns in the newest window", ["version"], registry=registry)
    column = Gauge("vigil_feature_drift", "Drift score per column in the newest window", ["column"], registry=registry)
    drift_alert = Gauge("vigil_drift_alert", "1 when the newest window crossed the drift threshold", registry=registry)
    ap = Gauge("vigil_live_average_precision", "AP of the newest labelled day", ["version"], registry=registry)
    cp = Gauge("vigil_live_card_precision_at_100", "CP@100 of the newest labelled day", ["version"], registry=registry)
    perf_alert = Gauge("vigil_performance_alert", "1 when the newest labelled day's AP dropped", registry=registry)
    if result.windows:
        newest = max(result.windows, key=lambda w: w.start)
        share.labels(newest.version).set(newest.share)
        for c in newest.columns:
            column.labels(c.column).set(c.score)
        drift_alert.set(1.0 if newest in result.drift_alerts else 0.0)
    if result.performance:
        day = max(result.performance, key=lambda d: d.day)
        ap.labels(day.version).set(day.ap)
        cp.labels(day.version).set(day.cp_at_100)
        perf_alert.set(1.0 if day.alert else 0.0)
    return registry


def write_gauges(settings: Settings, result: MonitorResult) -> Path:
    path = settings.reports_dir / "metrics.prom"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), gauges(result))
    return path


def monitoring_figure(result: MonitorResult, threshold: float, ap_tolerance: float = 0.3) -> Figure:
    """Drift share per window (per model version) over live AP per labelled day, with the
    lines Vigil alerts at: the drift threshold, and (1 - tolerance) x each version's expected AP."""
    import pandas as pd
    from matplotlib.figure import Figure

    # No pyplot: a report written from a notebook must not change its plotting backend.
    fig = Figure(figsize=(9, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    for version in sorted({w.version for w in result.windows}):
        windows = [w for w in result.windows if w.version == version]
        line = top.plot([pd.Timestamp(w.start) for w in windows], [w.share for w in windows], "o-", label=f"v{version}")
        warm = [w for w in windows if w.warmup]
        if warm:  # hollow: the windows still filling up at the start of history
            top.plot([pd.Timestamp(w.start) for w in warm], [w.share for w in warm], "o", mfc="white",
                     color=line[0].get_color(), label=f"v{version} warm-up (no alert)")  # fmt: skip
    top.axhline(threshold, color="tab:red", linestyle="--", label=f"drift alert at {threshold:g}")
    top.set_ylabel("drift share")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    for version in sorted({d.version for d in result.performance}):
        days = [d for d in result.performance if d.version == version]
        line = bottom.plot([pd.Timestamp(d.day) for d in days], [d.ap for d in days], "s-", label=f"AP v{version}")
        expected = days[0].expected_ap
        if expected is not None:
            color = line[0].get_color()
            bottom.axhline(expected, linestyle=":", color=color, label=f"v{version} expected AP {expected:.2f}")
            alert = (1 - ap_tolerance) * expected
            bottom.axhline(alert, linestyle="--", color="tab:red", label=f"v{version} alert below {alert:.2f}")
    if result.labels_pending_from:
        bottom.axvline(pd.Timestamp(result.labels_pending_from), color="grey", linewidth=0.8)
        bottom.text(pd.Timestamp(result.labels_pending_from), 0.03, " labels pending", fontsize=8, color="grey")
    bottom.set_ylabel("live AP (labelled days)")
    bottom.set_ylim(0, 1)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def drift_heatmap(result: MonitorResult) -> Figure:
    """Drift score of every column in every window (darker: further from the reference)."""
    import numpy as np
    from matplotlib.figure import Figure

    windows = sorted(result.windows, key=lambda w: (w.start, w.version))
    columns = [c.column for c in windows[0].columns] if windows else []
    scores = np.array([[c.score for c in w.columns] for w in windows]).T if windows else np.zeros((0, 0))
    fig = Figure(figsize=(max(6, 0.6 * len(windows)), 0.35 * len(columns) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(np.minimum(scores, 0.5), aspect="auto", cmap="Reds", vmin=0, vmax=0.5)
    ax.set_yticks(range(len(columns)), [c.replace("_window", "") for c in columns], fontsize=8)
    ax.set_xticks(range(len(windows)), [f"{w.start[:10]} v{w.version}" for w in windows], rotation=60, fontsize=8)
    for i, w in enumerate(windows):
        for j, c in enumerate(w.columns):
            if c.drifted:
                ax.text(i, j, "x", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="drift score (x: drifted)")
    ax.set_title("per-column drift against the training reference")
    fig.tight_layout()
    return fig


def _figure(result: MonitorResult, config: MonitorConfig) -> str:
    """The monitoring figure as an inline PNG."""
    fig = monitoring_figure(result, config.drift_share_threshold, config.ap_tolerance)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return html.escape(str(value))


def write_index(settings: Settings, result: MonitorResult, config: MonitorConfig, state: dict[str, Any]) -> Path:
    alerts = {id(w) for w in result.drift_alerts}
    window_rows = "".join(
        f"<tr class='{'alert' if id(w) in alerts else 'warmup' if w.warmup else ''}'>"
        f"<td>{_cell(w.start)}{' (warm-up)' if w.warmup else ''}</td><td>v{_cell(w.version)}</td>"
        f"<td>{w.rows}</td><td>{_cell(w.share)}</td><td>{_cell(', '.join(w.drifted_columns) or '-')}</td>"
        f"<td><a href='{html.escape(w.report or '')}'>report</a></td></tr>"
        for w in sorted(result.windows, key=lambda w: (w.start, w.version), reverse=True)
    )
    day_rows = "".join(
        f"<tr class='{'alert' if d.alert else ''}'><td>{d.day}</td><td>v{_cell(d.version)}</td>"
        f"<td>{d.transactions}</td><td>{d.frauds}</td><td>{_cell(d.auc)}</td><td>{_cell(d.ap)}</td><td>{_cell(d.cp_at_100)}</td>"
        f"<td>{_cell(d.expected_ap) if d.expected_ap is not None else '-'}</td></tr>"
        for d in sorted(result.performance, key=lambda d: (d.day, d.version), reverse=True)
    )
    retrain_rows = "".join(
        f"<tr><td>{_cell(r.get('at'))}</td><td>{_cell(r.get('reasons'))}</td><td>{_cell(r.get('outcome'))}</td></tr>"
        for r in reversed(state.get("retrains", []))
    )
    picture = _figure(result, config) if result.windows or result.performance else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Vigil monitoring</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}tr.alert{{background:#fdd}}
tr.warmup{{color:#888}}</style></head><body>
<h1>Vigil monitoring</h1>
<p>Newest scored transaction: {_cell(result.newest)}. Windows of {config.window_hours:g} h over the last
{config.lookback_days:g} days; drift alert at a drift share of {config.drift_share_threshold:g} or more
(windows of at least {config.min_rows} rows); performance alert when a day's AP is below
{1 - config.ap_tolerance:.0%} of the version's expected AP. Windows within {config.warmup_days:g} days of the
start of the ingested history are marked warm-up and never alert: their 30-day features are still
filling up. Days from {_cell(result.labels_pending_from or "-")} on are not judged yet: their labels
arrive {config.label_delay_days:g} days after the transactions.</p>
{f'<img src="data:image/png;base64,{picture}" alt="drift share and live AP">' if picture else ""}
<h2>Drift per window</h2><table><tr><th>window start</th><th>model</th><th>rows</th><th>drift share</th>
<th>drifted columns</th><th>Evidently</th></tr>{window_rows}</table>
<h2>Live performance (labelled days)</h2><table><tr><th>day</th><th>model</th><th>transactions</th><th>frauds</th>
<th>AUC</th><th>AP</th><th>CP@100</th><th>expected AP</th></tr>{day_rows}</table>
<h2>Retraining</h2><table><tr><th>at</th><th>reasons</th><th>outcome</th></tr>{retrain_rows}</table>
</body></html>"""
    path = settings.reports_dir / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
