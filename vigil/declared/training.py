"""Training on a declared feature service: each labelled event's features as of its own
time (the computation the flow and the scoring service run), then the same training,
evaluation, policy and registration as every Vigil model (`vigil.lifecycle.training`).

The lifecycle's helpers read three columns of a training frame: the time, the label and
the unit a review budget counts (a card a day). A declared repo names them itself; the
frame carries them under the lifecycle's names, beside the service's features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from vigil.declared.backfill import compute_declared
from vigil.declared.model import DeclaredFeatures, Service
from vigil.lifecycle.evaluation import Split

if TYPE_CHECKING:
    from vigil.settings import Settings

TIME, LABEL, UNIT = "tx_datetime", "tx_fraud", "customer_id"  # the lifecycle's column names


@dataclass(frozen=True)
class TrainingSet:
    """A declared service's training frame and what it was built from."""

    frame: pd.DataFrame
    service: Service
    unit: str  # the join key whose values a review budget counts per day
    delay_days: int  # the longest label delay of the repo's views, whole days


def review_unit(declared: DeclaredFeatures, service: Service) -> str:
    """What a review budget counts: the entity of the service's first view on the events
    (the card, in a payments repo), else the event itself."""
    for aggregation in declared.aggregations:
        if aggregation.on == "events" and aggregation.name in service.features:
            return aggregation.key
    return declared.events.event_id


def training_set(
    declared: DeclaredFeatures, events: pd.DataFrame, service_name: str | None = None, every_feature: bool = False
) -> TrainingSet:
    """The features of `service_name` (default: the repo's default service; with
    `every_feature`, every feature the repo declares, so that versions trained on different
    services can be scored side by side) for every labelled event of `events` (the events'
    fields and the label column), each as of its own time, with the time, label and review unit."""
    service = declared.service(service_name)
    if declared.labels is None:
        raise ValueError("the repo declares no labels source: there is nothing to train on")
    label = declared.labels.label
    if label not in events.columns:
        raise ValueError(f"the events have no label column {label!r} (the labels source's vigil.label)")
    missing = [name for name in declared.events.fields if name not in events.columns]
    if missing:
        raise ValueError(f"the events have no column {', '.join(map(repr, missing))} (fields of the repo's events)")
    events = events.reset_index(drop=True)
    wanted = declared.feature_names if every_feature else service.features
    values = compute_declared(declared, events, None, features=wanted)
    unit = review_unit(declared, service)
    frame = values.assign(
        **{
            TIME: pd.to_datetime(events[declared.events.time], utc=True).dt.tz_localize(None).to_numpy(),
            LABEL: events[label].to_numpy(),
            UNIT: pd.factorize(events[unit])[0].astype(np.int64),
        }
    )
    frame = frame[frame[LABEL].notna()].astype({LABEL: np.int64}).sort_values(TIME, kind="stable")
    delay = max((a.delay_seconds for a in declared.aggregations if a.on == "labels"), default=0)
    return TrainingSet(frame.reset_index(drop=True), service, unit, math.ceil(delay / 86_400))


def logged_events(declared: DeclaredFeatures, root: str | Path) -> pd.DataFrame:
    """The events the repo's flow recorded in the offline event log under `root`, one per
    event id, each with its label when one was accepted (the label column; NaN when none):
    what `vigil train` and `vigil promote` read when no file is given."""
    from vigil.offline.eventlog import LOG_TS, read_log

    schema = declared.events
    events = read_log(root, "events", key=schema.event_id)
    if events.empty:
        return pd.DataFrame(columns=list(schema.fields))
    events = events.drop(columns=[LOG_TS]).sort_values(schema.time, kind="stable").reset_index(drop=True)
    if declared.labels is not None:
        labels = read_log(root, "labels").set_index("transaction_id")["tx_fraud"]
        events[declared.labels.label] = events[schema.event_id].map(labels)
    return events


def version_params(service: Service, model_kind: str) -> dict[str, object]:
    """What a model version of a declared service is trained with: exactly the service's
    inputs, in its order, and the service's name, which the version records (the scoring
    service gives each loaded version its own service's features). The XGBoost model's own
    ratios and recent-fraud companion read the handbook's built-in features, so they are off."""
    params: dict[str, object] = {"inputs": list(service.features), "feature_service": service.name}
    if model_kind == "xgboost":
        params.update(derived_inputs=False, recent_days=0)
    return params


def retraining_inputs(
    settings: Settings, declared: DeclaredFeatures, model_kind: str
) -> tuple[Callable[[], pd.DataFrame], dict[str, object]]:
    """What `vigil monitor` retrains a declared repo with: a reader of every declared feature
    of the labelled events the flow recorded in the offline event log (read only once
    retraining is due; the gate scores each version on its own service's), and the params
    that train on the champion's feature service (the repo's default without a champion)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from vigil.lifecycle.tracking import CHAMPION, REGISTERED_MODEL, configure

    configure(settings)
    try:
        tags = MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).tags
    except MlflowException:  # no champion yet
        tags = {}
    named = tags.get("feature_service")
    service = declared.service(named if named in declared.services else None)

    def read() -> pd.DataFrame:
        return training_set(declared, logged_events(declared, settings.event_log), every_feature=True).frame

    return read, version_params(service, model_kind)


def default_split(data: TrainingSet, test_days: int = 7, train_end: str | None = None) -> Split:
    """Train on everything up to `train_end` (default: the day before the label delay that
    precedes the last `test_days` days), test on the `test_days` days after that delay."""
    days = pd.to_datetime(data.frame[TIME]).dt.normalize()
    first, last = days.min(), days.max()
    if train_end is not None:
        end = pd.Timestamp(train_end).normalize()
        start = end + pd.Timedelta(days=data.delay_days + 1)
        return Split(first, end, start, start + pd.Timedelta(days=test_days - 1))
    test_start = last - pd.Timedelta(days=test_days - 1)
    return Split(first, test_start - pd.Timedelta(days=data.delay_days + 1), test_start, last)
