"""From a score to a decision: allow, review or block, with the reasons.

Precedence, first match wins:
1. block: the customer or terminal is on a block list (`list:block_customer`, ...), or a
   `block` rule matches (`rule:<name>`);
2. allow: on an allow list, or an `allow` rule matches;
3. review: a `review` rule matches, or the score reaches the version's review threshold
   (`score>=review_threshold`); the score reaching the block threshold makes it a block
   (`score>=block_threshold`).
Otherwise allow (`score<review_threshold`). Every matching rule is listed in `reasons`,
whichever decided.

A fallback answer decides the same way, with the fallback model's own review threshold
(`fallback_score>=review_threshold`), and never blocks on its score: a degraded answer
may send a card to review, not stop a payment. Rules and lists apply as usual.

Allow and block lists live in Redis (sets `<prefix>:list:<allow|block>:<customer|terminal>`),
edited through the API; each service keeps a copy refreshed every second.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import numpy as np

from scoring.metrics import ServiceMetrics
from scoring.rules import RulesFile
from vigil.features import spec
from vigil.lifecycle.policy import Policy

log = logging.getLogger("vigil.scoring")

LISTS = ("allow", "block")
KINDS = ("customer", "terminal")


def list_key(prefix: str, which: str, kind: str) -> str:
    return f"{prefix}:list:{which}:{kind}"


@dataclass
class Lists:
    """The allow and block lists, as sets of ids."""

    members: dict[tuple[str, str], frozenset[int]] = field(
        default_factory=lambda: {(w, k): frozenset() for w in LISTS for k in KINDS}
    )

    async def refresh(self, client: Any, prefix: str) -> None:
        fresh = {}
        for which in LISTS:
            for kind in KINDS:
                values = await client.smembers(list_key(prefix, which, kind))
                fresh[(which, kind)] = frozenset(int(v) for v in values)
        self.members = fresh

    def hit(self, which: str, customer: int, terminal: int) -> list[str]:
        out = []
        if customer in self.members[(which, "customer")]:
            out.append(f"list:{which}_customer")
        if terminal in self.members[(which, "terminal")]:
            out.append(f"list:{which}_terminal")
        return out


class Decider:
    def __init__(self, rules: RulesFile, lists: Lists, metrics: ServiceMetrics) -> None:
        self.rules, self.lists, self.metrics = rules, lists, metrics
        self._failing: set[str] = set()

    def decide(
        self,
        results: list[dict[str, Any]],
        txs: Sequence[Any],
        inputs: np.ndarray,
        policy: Policy,
        fallback: bool,
    ) -> None:
        """Adds `decision` and `reasons` to each result (in place)."""
        scores = np.fromiter((r["score"] for r in results), np.float64, len(results))
        if fallback:
            review_line = policy.fallback_review_threshold
            review = scores >= review_line if review_line is not None else np.zeros(len(results), bool)
            block = np.zeros(len(results), bool)
        else:
            review = scores >= policy.review_threshold
            block = (
                scores >= policy.block_threshold if policy.block_threshold is not None else np.zeros(len(results), bool)
            )
        rules = self.rules.current.rules
        listed = self.listed()
        counts: collections.Counter[str] = collections.Counter()
        for i, (result, tx) in enumerate(zip(results, txs, strict=True)):
            blocked = self.hits("block", tx) if listed else []
            allowed = self.hits("allow", tx) if listed else []
            matched = self._matching(rules, tx, inputs[i], result["score"], fallback) if rules else []
            reasons = [*blocked, *allowed, *(f"rule:{r.name}" for r in matched)]
            actions = {r.action for r in matched}
            if blocked or "block" in actions:
                decision = "block"
            elif allowed or "allow" in actions:
                decision = "allow"
            elif block[i]:
                decision = "block"
                reasons.append("score>=block_threshold")
            elif review[i] or "review" in actions:
                decision = "review"
                if review[i]:
                    reasons.append("fallback_score>=review_threshold" if fallback else "score>=review_threshold")
            else:
                decision = "allow"
                reasons.append("fallback_score<review_threshold" if fallback else "score<review_threshold")
            result["decision"], result["reasons"] = decision, reasons
            counts[decision] += 1
        for decision, n in counts.items():  # once per outcome: a metric update per row cost more than deciding
            self.metrics.decisions.labels(decision).inc(n)

    def listed(self) -> bool:
        """Whether any list has a member (lists are looked up only then)."""
        return any(self.lists.members.values())

    def hits(self, which: str, tx: Any) -> list[str]:
        """The reasons of the `which` lists the transaction's entities are on."""
        return self.lists.hit(which, tx.customer_id, tx.terminal_id)

    def _matching(self, rules: Sequence[Any], tx: Any, inputs: np.ndarray, score: float, fallback: bool) -> list[Any]:
        context: dict[str, Any] = dict(zip(spec.SERVED_INPUTS, inputs.tolist(), strict=True))
        context.update(
            transaction_id=tx.transaction_id,
            customer_id=tx.customer_id,
            terminal_id=tx.terminal_id,
            tx_amount=tx.tx_amount,
            tx_datetime=tx.tx_datetime.replace(tzinfo=UTC),
            score=score,
            fallback=fallback,
        )
        return self._run(rules, context)

    def _run(self, rules: Sequence[Any], context: dict[str, Any]) -> list[Any]:
        matched = []
        for rule in rules:
            try:
                hit = rule.program.execute(context) is True
            except Exception as error:  # a runtime error (e.g. a division by zero) is no match
                self.metrics.rule_errors.labels(rule.name).inc()
                if rule.name not in self._failing:
                    log.warning("rule %s failed on a transaction (counted as no match): %s", rule.name, error)
                    self._failing.add(rule.name)
                continue
            if hit:
                matched.append(rule)
                self.metrics.rule_hits.labels(rule.name, rule.action).inc()
        return matched
