"""The promotion gate: move `champion` to the challenger only when it is at least as good.

Rule: both versions score the same recent evaluation window (the last 7 labelled days,
known-compromised customers removed as in the handbook). The challenger is promoted
when its average precision is at least the champion's, and neither its ROC AUC nor its
card precision@100 is lower by more than 0.01. `force` promotes regardless; `rollback`
returns `champion` to the version it held before. Every decision is recorded as tags
on the versions involved (decision, reason, figures, time); the figures also hold the
differences with 95 % bootstrap bounds, to show how much one week can tell (not used by
the rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from vigil.lifecycle.evaluation import Metrics, Split, book_week_test_set, evaluate, paired_differences
from vigil.lifecycle.policy import TAG as POLICY_TAG
from vigil.lifecycle.policy import Policy, outcome
from vigil.lifecycle.tracking import CHALLENGER, CHAMPION, REGISTERED_MODEL, configure
from vigil.models.loading import load_native
from vigil.settings import Settings

TOLERANCE = 0.01
INTERVAL_ROUNDS = 100
PREVIOUS_CHAMPION_TAG = "previous_champion"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    champion: str | None  # the champion version after the decision
    challenger: str | None
    figures: dict[str, dict[str, float]]


def gate(
    challenger: Metrics,
    champion: Metrics,
    challenger_caught: float | None = None,
    champion_caught: float | None = None,
    budget: float = 100.0,
) -> tuple[bool, str]:
    """The rule, as a pure function of two sets of metrics (and, when both versions carry a
    decision policy, the cards each one's policy catches within the review budget a day)."""
    if challenger.ap < champion.ap:
        return False, f"average precision {challenger.ap:.4f} < champion's {champion.ap:.4f}"
    if challenger.auc < champion.auc - TOLERANCE:
        return False, f"ROC AUC {challenger.auc:.4f} is more than {TOLERANCE} below champion's {champion.auc:.4f}"
    if challenger.cp_at_100 < champion.cp_at_100 - TOLERANCE:
        return False, (
            f"CP@100 {challenger.cp_at_100:.4f} is more than {TOLERANCE} below champion's {champion.cp_at_100:.4f}"
        )
    # Policies: the same tolerance as CP@100's, in cards a day (0.01 of the budget).
    if (
        challenger_caught is not None
        and champion_caught is not None
        and challenger_caught < champion_caught - TOLERANCE * budget
    ):
        return False, (
            f"its policy catches {challenger_caught:.1f} cards a day within the review budget, "
            f"more than {TOLERANCE * budget:.1f} below the champion's {champion_caught:.1f}"
        )
    return True, (
        f"AP {challenger.ap:.4f} >= {champion.ap:.4f}, AUC {challenger.auc:.4f} vs {champion.auc:.4f}, "
        f"CP@100 {challenger.cp_at_100:.4f} vs {champion.cp_at_100:.4f}"
    )


def evaluation_window(data: pd.DataFrame) -> pd.DataFrame:
    """The last 7 labelled days of `data`, known-compromised customers removed."""
    last = pd.to_datetime(data["tx_datetime"]).dt.normalize().max()
    return book_week_test_set(data, Split.book(last - pd.Timedelta(days=6)))


def _intervals(window: pd.DataFrame, challenger: np.ndarray, current: np.ndarray) -> dict[str, float]:
    """The differences of the metrics with 95 % bootstrap bounds (`paired_differences`)."""
    (differences,) = paired_differences(window, challenger, {"current": current}, rounds=INTERVAL_ROUNDS).values()
    return {
        f"{d.metric}{suffix}": value
        for d in differences
        for suffix, value in (("", d.value), ("_low", d.low), ("_high", d.high))
    }


def _version(client: Any, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None


def _record(client: Any, version: str, decision: str, reason: str, figures: dict[str, Any]) -> None:
    at = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {
        "gate.decision": decision,
        "gate.reason": reason,
        "gate.figures": json.dumps(figures),
        "gate.at": at,
    }.items():
        client.set_model_version_tag(REGISTERED_MODEL, version, key, value)


def nothing_to_promote(settings: Settings, alias: str = CHAMPION) -> Decision | None:
    """The decision when the registry alone settles it (no challenger, or it already holds
    `alias`): asked before any training data is read."""
    from mlflow.tracking import MlflowClient

    configure(settings)
    client = MlflowClient()
    challenger = _version(client, CHALLENGER)
    current = _version(client, alias)
    if challenger is None:
        return Decision(False, "no challenger version: run `vigil train` first", current, None, {})
    if challenger == current:
        return Decision(
            False, f"version {challenger} already holds {alias}: nothing to promote", current, challenger, {}
        )
    return None


def _policy(client: Any, version: str) -> Policy | None:
    tags = client.get_model_version(REGISTERED_MODEL, version).tags
    return Policy.from_dict(json.loads(tags[POLICY_TAG])) if POLICY_TAG in tags else None


def promote(settings: Settings, data: pd.DataFrame, alias: str = CHAMPION, force: bool = False) -> Decision:
    """Runs the gate for the challenger against the holder of `alias` on `data`'s last week."""
    from mlflow.tracking import MlflowClient

    configure(settings)
    client = MlflowClient()
    challenger = _version(client, CHALLENGER)
    current = _version(client, alias)
    if challenger is None:
        return Decision(False, "no challenger version: run `vigil train` first", current, None, {})
    if challenger == current:
        return Decision(False, f"version {challenger} already holds {alias}", current, challenger, {})
    figures: dict[str, dict[str, float]] = {}
    window = evaluation_window(data)
    challenger_scores = load_native(f"models:/{REGISTERED_MODEL}/{challenger}").predict_proba(window)
    challenger_metrics = evaluate(window, challenger_scores)
    figures[f"challenger v{challenger}"] = challenger_metrics.as_dict()
    challenger_policy = _policy(client, challenger)
    caught: dict[str, float | None] = {"challenger": None, "current": None}
    if challenger_policy is not None:
        figures[f"policy of challenger v{challenger}"] = challenger_policy.as_dict()
        challenger_outcome = outcome(window, challenger_scores, challenger_policy)
        figures[f"challenger v{challenger} decisions"] = challenger_outcome.as_dict()
        caught["challenger"] = challenger_outcome.cards_caught_within_budget_per_day
    if current is None:
        promoted, reason = True, f"no {alias} yet"
    else:
        current_scores = load_native(f"models:/{REGISTERED_MODEL}/{current}").predict_proba(window)
        current_metrics = evaluate(window, current_scores)
        figures[f"{alias} v{current}"] = current_metrics.as_dict()
        current_policy = _policy(client, current)
        if current_policy is not None:
            figures[f"policy of {alias} v{current}"] = current_policy.as_dict()
            current_outcome = outcome(window, current_scores, current_policy)
            figures[f"{alias} v{current} decisions"] = current_outcome.as_dict()
            caught["current"] = current_outcome.cards_caught_within_budget_per_day
        budget = challenger_policy.budget if challenger_policy is not None else 100.0
        promoted, reason = gate(challenger_metrics, current_metrics, caught["challenger"], caught["current"], budget)
        if window["tx_fraud"].nunique() == 2:
            # Not part of the rule: how much of the difference one week can tell from noise.
            figures["challenger minus " + alias] = _intervals(window, challenger_scores, current_scores)
    days = pd.to_datetime(window["tx_datetime"]).dt.date
    figures["window"] = {"first_day": str(days.min()), "last_day": str(days.max()), "rows": float(len(window))}  # type: ignore[dict-item]
    if force and not promoted:
        promoted, reason = True, f"forced (the gate said: {reason})"
    if promoted:
        if current is not None:
            client.set_registered_model_tag(REGISTERED_MODEL, PREVIOUS_CHAMPION_TAG, current)
        client.set_registered_model_alias(REGISTERED_MODEL, alias, challenger)
    _record(client, challenger, "promoted" if promoted else "rejected", reason, figures)
    return Decision(promoted, reason, challenger if promoted else current, challenger, figures)


def rollback(settings: Settings, alias: str = CHAMPION) -> Decision:
    """Moves `alias` back to the version that held it before the last promotion."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    configure(settings)
    client = MlflowClient()
    try:
        previous = client.get_registered_model(REGISTERED_MODEL).tags.get(PREVIOUS_CHAMPION_TAG)
    except MlflowException:  # nothing registered yet
        return Decision(False, "no earlier champion to roll back to: nothing is registered", None, None, {})
    current = _version(client, alias)
    if previous is None or previous == current:
        return Decision(False, "no earlier champion to roll back to", current, None, {})
    client.set_registered_model_alias(REGISTERED_MODEL, alias, previous)
    if current is not None:
        client.set_registered_model_tag(REGISTERED_MODEL, PREVIOUS_CHAMPION_TAG, current)
        _record(client, current, "rolled back", f"{alias} returned to version {previous}", {})
    _record(client, previous, "restored", f"{alias} rolled back from version {current}", {})
    return Decision(True, f"{alias} rolled back from version {current} to {previous}", previous, None, {})
