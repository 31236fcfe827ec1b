"""The decision policy of a model version: the score thresholds for `review` and `block`.

Chosen when the version is trained, on its evaluation week (the handbook's protocol:
customers already known to be compromised left out, and each day the cards already
caught), from two stated objectives:
- `review`: analysts review `budget` cards a day (the handbook's CP@100: 100). Each day,
  the budget-th highest card score among the cards still unknown; the threshold is the
  median of those daily values, so a typical day sends about `budget` cards to review.
  No labels are needed for it.
- `block`: the lowest score above which the week's payments were frauds at least
  `block_precision` of the time (and at least `min_block_frauds` of them), never below
  the review threshold; none when no score reaches that precision.
The fallback model gets its own review threshold the same way; a fallback answer never
blocks on its score (a degraded answer may send a card to review, not stop it).

Stored with the version (MLflow tag `policy`, artifact `policy.json`); `VIGIL_POLICY_FILE`
overrides the thresholds in service.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DEFAULT_BUDGET = 100.0  # cards a day
DEFAULT_BLOCK_PRECISION = 0.9
MIN_BLOCK_FRAUDS = 5
TAG = "policy"


@dataclass(frozen=True)
class Policy:
    review_threshold: float
    block_threshold: float | None
    fallback_review_threshold: float | None
    budget: float = DEFAULT_BUDGET
    block_precision: float = DEFAULT_BLOCK_PRECISION
    source: str = "training"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @staticmethod
    def from_dict(data: dict[str, Any], source: str | None = None) -> Policy:
        policy = Policy(
            review_threshold=float(data["review_threshold"]),
            block_threshold=None if data.get("block_threshold") is None else float(data["block_threshold"]),
            fallback_review_threshold=(
                None if data.get("fallback_review_threshold") is None else float(data["fallback_review_threshold"])
            ),
            budget=float(data.get("budget", DEFAULT_BUDGET)),
            block_precision=float(data.get("block_precision", DEFAULT_BLOCK_PRECISION)),
            source=str(data.get("source", "training")),
        )
        return replace(policy, source=source) if source else policy


def _days(frame: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(frame["tx_datetime"]).dt.normalize().to_numpy()


def daily_cards(frame: pd.DataFrame, scores: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per day: (card ids, each card's highest score that day, whether it had a fraud).

    Cards caught earlier (a fraud among an earlier day's cards above the review line) are
    the caller's to leave out; this only groups.
    """
    day = _days(frame)
    customer = frame["customer_id"].to_numpy()
    score = np.asarray(scores, np.float64)
    fraud = frame["tx_fraud"].to_numpy() if "tx_fraud" in frame else np.zeros(len(frame), np.int64)
    out = []
    for today in np.unique(day):
        rows = day == today
        order = np.argsort(customer[rows], kind="stable")
        c, s, f = customer[rows][order], score[rows][order], fraud[rows][order]
        if not c.size:
            continue
        first = np.r_[0, np.flatnonzero(c[1:] != c[:-1]) + 1]
        out.append((c[first], np.maximum.reduceat(s, first), np.maximum.reduceat(f, first)))
    return out


def review_threshold(frame: pd.DataFrame, scores: np.ndarray, budget: float = DEFAULT_BUDGET) -> float:
    """The score at which a typical day sends `budget` cards to review (median over days)."""
    k = max(round(budget), 1)
    caught: set[Any] = set()
    values = []
    for cards, best, hit in daily_cards(frame, scores):
        fresh = ~np.isin(cards, list(caught))
        cards, best, hit = cards[fresh], best[fresh], hit[fresh]
        if not cards.size:
            continue
        ranked = np.sort(best)[::-1]
        line = float(ranked[min(k, ranked.size) - 1]) if ranked.size >= k else float(ranked[-1])
        values.append(line)
        caught.update(cards[(best >= line) & (hit == 1)].tolist())
    return float(np.median(values)) if values else 1.0


def block_threshold(
    labels: np.ndarray, scores: np.ndarray, precision: float, min_frauds: int = MIN_BLOCK_FRAUDS
) -> float | None:
    """The lowest score above which payments were frauds at least `precision` of the time."""
    score = np.asarray(scores, np.float64)
    fraud = np.asarray(labels, np.int64)
    order = np.argsort(-score, kind="stable")
    s, f = score[order], fraud[order]
    frauds = np.cumsum(f)
    share = frauds / np.arange(1, s.size + 1)
    # Only cut between distinct scores: a threshold takes every payment with its score.
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = last_of_value & (share >= precision) & (frauds >= min_frauds)
    if not ok.any():
        return None
    return float(s[np.flatnonzero(ok)[-1]])


def choose_policy(
    frame: pd.DataFrame,
    scores: np.ndarray,
    fallback_scores: np.ndarray | None = None,
    budget: float = DEFAULT_BUDGET,
    block_precision: float = DEFAULT_BLOCK_PRECISION,
) -> Policy:
    """The policy of a version from its evaluation week (`frame`: tx_datetime, customer_id, tx_fraud)."""
    review = review_threshold(frame, scores, budget)
    block = block_threshold(frame["tx_fraud"].to_numpy(), scores, block_precision)
    if block is not None:
        block = max(block, review)
    fallback = review_threshold(frame, fallback_scores, budget) if fallback_scores is not None else None
    return Policy(review, block, fallback, budget, block_precision)


@dataclass(frozen=True)
class PolicyOutcome:
    """What a policy did on a week (the handbook's population: known cards left out)."""

    days: int
    cards_reviewed_per_day: float
    cards_caught_in_review_per_day: float  # cards with a fraud among those sent to review
    cards_caught_within_budget_per_day: float  # the same, counting each day's `budget` highest only
    fraud_amount_caught_in_review: float
    blocked_payments: int
    blocked_frauds: int
    block_precision: float
    fraud_amount_blocked: float
    genuine_customers_blocked: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def outcome(frame: pd.DataFrame, scores: np.ndarray, policy: Policy) -> PolicyOutcome:
    """Replays `policy` over `frame` (tx_datetime, customer_id, tx_amount, tx_fraud) day by day."""
    score = np.asarray(scores, np.float64)
    fraud = frame["tx_fraud"].to_numpy().astype(np.int64)
    # A declared repo's events name no amount: its sums are not known (NaN).
    amount = frame["tx_amount"].to_numpy(np.float64) if "tx_amount" in frame else np.full(len(frame), np.nan)
    customer = frame["customer_id"].to_numpy()
    day = _days(frame)
    k = max(round(policy.budget), 1)
    caught: set[Any] = set()
    reviewed, in_review, in_budget, amount_reviewed = [], [], [], 0.0
    for today in np.unique(day):
        rows = np.flatnonzero((day == today) & ~np.isin(customer, list(caught)))
        if not rows.size:
            reviewed.append(0)
            in_review.append(0)
            in_budget.append(0)
            continue
        flagged_rows = rows[score[rows] >= policy.review_threshold]
        cards = np.unique(customer[flagged_rows])
        hits = np.unique(customer[flagged_rows][fraud[flagged_rows] == 1])
        best = pd.Series(score[flagged_rows]).groupby(customer[flagged_rows]).max().sort_values(ascending=False)
        top = set(best.index[:k].tolist())
        reviewed.append(cards.size)
        in_review.append(hits.size)
        in_budget.append(sum(1 for c in hits.tolist() if c in top))
        amount_reviewed += float(amount[flagged_rows][fraud[flagged_rows] == 1].sum())
        caught.update(hits.tolist())
    blocked = score >= policy.block_threshold if policy.block_threshold is not None else np.zeros(score.size, bool)
    genuine_blocked = np.unique(customer[blocked & (fraud == 0)])
    fraud_cards = set(np.unique(customer[fraud == 1]).tolist())
    days = max(len(reviewed), 1)
    return PolicyOutcome(
        days=len(reviewed),
        cards_reviewed_per_day=float(np.sum(reviewed)) / days,
        cards_caught_in_review_per_day=float(np.sum(in_review)) / days,
        cards_caught_within_budget_per_day=float(np.sum(in_budget)) / days,
        fraud_amount_caught_in_review=amount_reviewed,
        blocked_payments=int(blocked.sum()),
        blocked_frauds=int(fraud[blocked].sum()),
        block_precision=float(fraud[blocked].mean()) if blocked.any() else float("nan"),
        fraud_amount_blocked=float(amount[blocked & (fraud == 1)].sum()),
        genuine_customers_blocked=int(sum(1 for c in genuine_blocked.tolist() if c not in fraud_cards)),
    )


def read_policy_file(path: str | Path) -> dict[str, Any]:
    """A policy file (YAML): review_threshold, block_threshold (null: never block by score),
    fallback_review_threshold; any of them, overriding the version's."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "the file"
        raise ValueError(f"{path}: {where}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of thresholds")
    known = {"review_threshold", "block_threshold", "fallback_review_threshold"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(sorted(unknown))} (use {', '.join(sorted(known))})")
    for key, value in data.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise ValueError(f"{path}: {key} must be a number between 0 and 1 (or null), got {value!r}")
    return data


def with_overrides(policy: Policy, overrides: dict[str, Any], source: str) -> Policy:
    return replace(policy, **overrides, source=source)
