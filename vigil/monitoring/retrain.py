"""The retraining loop: alerts (or a schedule) -> a challenger on recent data -> the gate.

Triggers: a drift alert, a performance alert, or a champion whose training data ends
more than `every_days` before the newest scored transaction. The challenger trains on
the `train_days` labelled days right before the gate's evaluation week (the last
labelled week), is registered with alias `challenger` (the service starts shadowing it at its
next alias poll), then the promotion gate decides on that evaluation week. A promoted
challenger becomes `champion` and every scoring service swaps it in without a restart.

Retraining is skipped while no new labelled day exists since the newest registered
version's training window: the same data would give the same model. Each step is
recorded: tags on the new version (`retrain.*`), the gate's own tags, and a run in the
MLflow experiment `vigil-monitoring` with the monitor's figures and report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from vigil.lifecycle.promotion import Decision
from vigil.monitoring.monitor import MonitorResult, load_state, save_state
from vigil.settings import Settings

log = logging.getLogger("vigil.monitor")
MONITORING_EXPERIMENT = "vigil-monitoring"


@dataclass
class RetrainOutcome:
    reasons: list[str]
    action: str  # "none", "skipped", "dry-run", "retrained"
    detail: str
    version: str | None = None
    decision: Decision | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def retrain_reasons(
    result: MonitorResult, champion_train_end: pd.Timestamp | None, every_days: float | None
) -> list[str]:
    reasons = []
    if result.drift_alerts:
        newest = max(result.drift_alerts, key=lambda w: w.start)
        reasons.append(
            f"drift: {len(result.drift_alerts)} window(s), newest {newest.start} "
            f"(share {newest.share:.2f}: {', '.join(newest.drifted_columns)})"
        )
    if result.performance_alerts:
        worst = min(result.performance_alerts, key=lambda d: d.ap)
        reasons.append(
            f"performance: {len(result.performance_alerts)} day(s) below expected AP, worst {worst.day} "
            f"AP {worst.ap:.3f} vs {worst.expected_ap or float('nan'):.3f}"
        )
    if every_days is not None and result.newest is not None and champion_train_end is not None:
        age = (result.newest - champion_train_end) / pd.Timedelta(days=1)
        if age > every_days:
            reasons.append(f"schedule: the champion's data ends {age:.0f} days before the newest traffic")
    return reasons


def _window_end(tags: dict[str, str]) -> pd.Timestamp | None:
    window = tags.get("window", "")
    return pd.Timestamp(window.split("..")[1]) if ".." in window else None


def registry_windows(settings: Settings) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """(end of the champion's training window, newest training window end of any version)."""
    from mlflow.tracking import MlflowClient

    from vigil.lifecycle.tracking import CHAMPION, REGISTERED_MODEL, configure

    configure(settings)
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    if not versions:
        return None, None
    ends = [e for e in (_window_end(v.tags) for v in versions) if e is not None]
    champion = next((v for v in versions if CHAMPION in (v.aliases or [])), None)
    return (_window_end(champion.tags) if champion else None), (max(ends) if ends else None)


def run_retraining(
    settings: Settings,
    result: MonitorResult,
    data: pd.DataFrame | Callable[[], pd.DataFrame] | None = None,
    *,
    every_days: float | None = None,
    train_days: int = 28,
    model: str = "xgboost",
    params: dict[str, Any] | None = None,
    dry_run: bool = False,
    force: bool = False,
    show_progress: bool = True,
) -> RetrainOutcome:
    """Decides, and unless `dry_run`, retrains, registers and gates. `data`: the training
    set, or what reads it once retraining is due (built from the feature store when not given);
    `params`: the model's own (e.g. the champion's), over the kind's defaults."""
    from vigil.lifecycle.evaluation import Split

    champion_end, newest_end = registry_windows(settings)
    reasons = retrain_reasons(result, champion_end, every_days)
    if force:
        reasons.append("requested (--retrain always)")
    if not reasons:
        return RetrainOutcome([], "none", "no alert and no schedule due: nothing to do")
    frame = data() if callable(data) else data
    if frame is None and dry_run:
        # Saying what would happen reads no training set: building one applies the Feast repo
        # and backfills feature days, and a dry run changes nothing.
        from vigil.offline.eventlog import days

        labelled = days(settings.event_log, "labels")
        if not labelled:
            return RetrainOutcome(reasons, "dry-run", "would retrain, but no label has been ingested yet")
        last = pd.Timestamp(labelled[-1])
    else:
        if frame is None:
            frame = _training_data(settings)
        # The gate's week is the last labelled one; the challenger learns from the days right
        # before it (no gap: what matters is the newest behaviour, and the week stays unseen).
        last = pd.to_datetime(frame["tx_datetime"]).dt.normalize().max()
    gate_start = last - pd.Timedelta(days=6)
    end = gate_start - pd.Timedelta(days=1)
    start = end - pd.Timedelta(days=train_days - 1)
    split = Split(start, end, gate_start, last)
    plan = (
        f"train {model} on {start.date()}..{split.train_end.date()}, register as challenger, "
        f"gate against the champion on {split.test_start.date()}..{split.test_end.date()}"
    )
    if newest_end is not None and split.train_end <= newest_end and not force:
        detail = f"no labelled day after {newest_end.date()} (the newest version's training data): would {plan}"
        skipped = RetrainOutcome(reasons, "skipped", detail)
        return skipped if dry_run else _record(settings, result, skipped)
    if dry_run:
        return RetrainOutcome(reasons, "dry-run", f"would {plan}")
    from vigil.lifecycle.promotion import promote
    from vigil.lifecycle.training import train_and_register

    log.warning("retraining: %s; %s", "; ".join(reasons), plan)
    report = train_and_register(settings, frame, model, params=params, show_progress=show_progress, split=split)
    _tag_version(settings, report.version, reasons)
    decision = promote(settings, frame)
    outcome = RetrainOutcome(
        reasons,
        "retrained",
        f"version {report.version} trained ({plan}); gate: {'PROMOTED' if decision.promoted else 'NOT PROMOTED'}: "
        f"{decision.reason}",
        report.version,
        decision,
        decision.figures,
    )
    return _record(settings, result, outcome)


def _training_data(settings: Settings) -> pd.DataFrame:
    from vigil.offline import training_set
    from vigil.online.feast_store import apply_repo

    return training_set(apply_repo(settings), settings)


def _tag_version(settings: Settings, version: str, reasons: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    from vigil.lifecycle.tracking import REGISTERED_MODEL

    client = MlflowClient()
    client.set_model_version_tag(REGISTERED_MODEL, version, "retrain.reasons", json.dumps(reasons))
    client.set_model_version_tag(REGISTERED_MODEL, version, "retrain.at", datetime.now(UTC).isoformat())


def _record(settings: Settings, result: MonitorResult, outcome: RetrainOutcome) -> RetrainOutcome:
    """Keeps the decision in the monitor's state and as a run of `vigil-monitoring`."""
    import mlflow
    from vigil.lifecycle.tracking import configure

    state = load_state(settings)
    state.setdefault("retrains", []).append(
        {"at": datetime.now(UTC).isoformat(timespec="seconds"), "reasons": outcome.reasons, "outcome": outcome.detail}
    )
    save_state(settings, state)
    configure(settings)
    experiment = mlflow.get_experiment_by_name(MONITORING_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id if experiment is not None else mlflow.create_experiment(MONITORING_EXPERIMENT)
    )
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{outcome.action}"):
        mlflow.set_tags(
            {
                "action": outcome.action,
                "reasons": json.dumps(outcome.reasons),
                "detail": outcome.detail[:5000],
                "newest_transaction": str(result.newest),
                **({"challenger_version": outcome.version} if outcome.version else {}),
                **({"promoted": str(outcome.decision.promoted)} if outcome.decision else {}),
            }
        )
        if result.windows:
            newest = max(result.windows, key=lambda w: w.start)
            mlflow.log_metric("drift_share", newest.share)
        if result.performance:
            mlflow.log_metric("live_ap", max(result.performance, key=lambda d: d.day).ap)
        for name, figures in outcome.figures.items():
            for key, value in figures.items():
                if isinstance(value, float):
                    mlflow.log_metric(f"gate.{name.replace(' ', '_')}.{key}", value)
        if result.index is not None and result.index.exists():
            mlflow.log_artifact(str(result.index), "monitoring")
    return outcome
