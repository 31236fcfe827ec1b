"""Train, evaluate, log and register a fraud model (what `vigil train` runs)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from vigil.lifecycle.evaluation import Metrics, Split, book_week_test_set, evaluate, in_days
from vigil.lifecycle.policy import DEFAULT_BLOCK_PRECISION, DEFAULT_BUDGET, Policy, choose_policy
from vigil.lifecycle.policy import TAG as POLICY_TAG
from vigil.lifecycle.tracking import CHALLENGER, CHAMPION, FALLBACK_ARTIFACT, REGISTERED_MODEL, configure
from vigil.models.base import FraudModel, resolve_device
from vigil.models.baseline import BaselineModel
from vigil.models.registry import MODEL_KINDS
from vigil.monitoring.reference import ARTIFACT as REFERENCE_ARTIFACT
from vigil.monitoring.reference import build_reference
from vigil.settings import Settings


@dataclass
class TrainReport:
    model_kind: str
    run_id: str
    version: str
    aliases: list[str]
    split: Split
    metrics: Metrics | None
    train_rows: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    policy: Policy | None = None


def default_split(data: pd.DataFrame, train_start: str | None, train_end: str | None) -> Split:
    """Train on [train_start, train_end]; evaluate on the 7 days after a 7-day delay.

    Without dates: evaluate on the last 7 labelled days, train on everything before the
    delay that precedes them.
    """
    days = pd.to_datetime(data["tx_datetime"]).dt.normalize()
    first, last = days.min(), days.max()
    if train_end is None:
        split = Split.book(last - pd.Timedelta(days=6))
        return split.with_train_start(train_start or first)
    return Split.after(train_end).with_train_start(train_start or first)


def fit_with_progress(model: FraudModel, frame: pd.DataFrame, labels: np.ndarray, show: bool = True) -> FraudModel:
    with tqdm(total=model.progress_units, desc=f"train {model.kind}", unit="step", disable=not show) as bar:

        def step(n: int) -> None:
            bar.update(n)

        return model.fit(frame, labels, progress=step)


def train_and_register(
    settings: Settings,
    data: pd.DataFrame,
    kind: str = "xgboost",
    train_start: str | None = None,
    train_end: str | None = None,
    params: dict[str, Any] | None = None,
    show_progress: bool = True,
    split: Split | None = None,
    review_budget: float = DEFAULT_BUDGET,
    block_precision: float = DEFAULT_BLOCK_PRECISION,
) -> TrainReport:
    """Trains `kind` on `data` (a training set: model inputs, tx_fraud, ids, times), logs
    everything to MLflow and registers a new version of `fraud-detector` as challenger
    (the first version becomes champion too). `split` overrides the train/test days
    (default: `default_split` of the dates)."""
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    import mlflow
    from vigil import plots

    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose from {', '.join(MODEL_KINDS)}")
    started = time.perf_counter()
    split = split or default_split(data, train_start, train_end)
    train = in_days(data, split.train_start, split.train_end)
    if train.empty or train["tx_fraud"].nunique() < 2:
        raise ValueError(f"no usable training data between {split.train_start.date()} and {split.train_end.date()}")
    test = book_week_test_set(data, split)
    device = resolve_device(settings.device)
    model = MODEL_KINDS[kind](params, device=device)
    fit_with_progress(model, train, train["tx_fraud"].to_numpy(), show_progress)
    metrics = evaluate(test, model.predict_proba(test)) if not test.empty else None
    # Every version carries the baseline the scoring service falls back to, trained on
    # the same rows (for a baseline version, itself).
    # A declared service's baseline reads the same inputs; the handbook's, fraud_v1's.
    same = {"inputs": list(model.inputs), "feature_service": model.service_name} if model.params.get("inputs") else None
    fallback = model if kind == BaselineModel.kind else BaselineModel(same).fit(train, train["tx_fraud"].to_numpy())
    policy = version_policy(model, fallback, test, train, review_budget, block_precision)

    experiment_id = configure(settings)
    client = MlflowClient()
    # float64: a JSON input example reads back as float64, which a float32 schema refuses.
    example = train[list(model.inputs)].head(5).astype(np.float64)
    service_tags = _service_tags(model)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{kind}-{split.train_end.date()}") as run:
        mlflow.log_params({**{f"model.{k}": v for k, v in model.params.items()}, "model.kind": kind, "device": device})
        mlflow.set_tags(
            {
                **service_tags,
                "data.train_start": str(split.train_start.date()),
                "data.train_end": str(split.train_end.date()),
                "data.test_start": str(split.test_start.date()),
                "data.test_end": str(split.test_end.date()),
                "data.train_rows": str(len(train)),
                "data.train_frauds": str(int(train["tx_fraud"].sum())),
            }
        )
        if metrics is not None:
            mlflow.log_metrics({f"test.{k}": v for k, v in metrics.as_dict().items()})
            figure = plots.curves(test["tx_fraud"].to_numpy(), model.predict_proba(test), f"{kind}, test week")
            mlflow.log_figure(figure, "plots/roc_pr.png")
        importance = model.feature_importance()
        if importance:
            mlflow.log_dict(importance, "feature_importance.json")
            mlflow.log_figure(plots.importance(importance, f"{kind}: feature importance"), "plots/importance.png")
        signature = infer_signature(example, model.predict_proba(example))
        info = model.log_model("model", example, signature)
        mlflow.log_dict(policy.as_dict(), "policy.json")
        mlflow.log_params({f"policy.{k}": v for k, v in policy.as_dict().items()})
        fallback_example = train[list(fallback.inputs)].head(5).astype(np.float64)
        fallback_signature = infer_signature(fallback_example, fallback.predict_proba(fallback_example))
        fallback.log_model(FALLBACK_ARTIFACT, fallback_example, fallback_signature)
        # All of the test days' traffic, known-compromised customers included: live traffic has them.
        _log_reference(build_reference(train, in_days(data, split.test_start, split.test_end), model))
    version = (
        client.create_model_version(REGISTERED_MODEL, info.model_uri, run.info.run_id) if _registered(client) else None
    )
    if version is None:
        client.create_registered_model(REGISTERED_MODEL, description="Card-fraud scorer (Vigil)")
        version = client.create_model_version(REGISTERED_MODEL, info.model_uri, run.info.run_id)
    number = str(version.version)
    tags = {
        "model_kind": kind,
        "feature_service": service_tags["feature_service"],
        "window": f"{split.train_start.date()}..{split.train_end.date()}",
    }
    if metrics is not None:
        tags["test_metrics"] = json.dumps({k: round(v, 4) for k, v in metrics.as_dict().items()})
    tags[POLICY_TAG] = policy.to_json()
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, number, key, value)
    aliases = [CHALLENGER]
    client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER, number)
    if not _has_alias(client, CHAMPION):
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, number)
        client.set_model_version_tag(REGISTERED_MODEL, number, "gate.decision", "promoted: first version")
        aliases.append(CHAMPION)
    return TrainReport(
        kind,
        run.info.run_id,
        number,
        aliases,
        split,
        metrics,
        len(train),
        time.perf_counter() - started,
        model.params,
        policy,
    )


def _service_tags(model: FraudModel) -> dict[str, str]:
    """What the version is trained on: a declared service (its inputs in order) or a handbook feature set."""
    if model.params.get("inputs"):
        return {"feature_service": model.service_name, "feature_service.inputs": json.dumps(list(model.inputs))}
    features = model.feature_set
    return {
        "feature_service": features.service,
        "feature_service.version": str(features.version),
        "training_service": features.training_service,
    }


def version_policy(
    model: FraudModel,
    fallback: FraudModel,
    test: pd.DataFrame,
    train: pd.DataFrame,
    budget: float = DEFAULT_BUDGET,
    block_precision: float = DEFAULT_BLOCK_PRECISION,
) -> Policy:
    """The decision policy from the evaluation week (or, without one, the last training week)."""
    week, source = test, "evaluation week"
    if test.empty or test["tx_fraud"].nunique() < 2:
        last = pd.to_datetime(train["tx_datetime"]).dt.normalize().max()
        week, source = in_days(train, last - pd.Timedelta(days=6), last), "last training week (no evaluation week)"
    policy = choose_policy(week, model.predict_proba(week), fallback.predict_proba(week), budget, block_precision)
    return replace(policy, source=source)


def _log_reference(reference: pd.DataFrame) -> None:
    """The drift monitor's reference for this version, computed once, logged with the run."""
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        reference.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))


def _registered(client: Any) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(REGISTERED_MODEL)
        return True
    except MlflowException:
        return False


def _has_alias(client: Any, alias: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version_by_alias(REGISTERED_MODEL, alias)
        return True
    except MlflowException:
        return False
