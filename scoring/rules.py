"""Rules a fraud team writes, in Common Expression Language (CEL), read from `VIGIL_RULES_FILE`.

    rules:
      - name: huge_amount            # letters, digits, _ and -
        when: tx_amount > 10000.0    # CEL over the request, the model inputs and the score
        action: block                # allow | review | block

Why CEL: it is a standard (Kubernetes admission policies, Envoy, Google Cloud IAM), it has
no loops, side effects or I/O, so a rule can neither hang the service nor reach outside
it, and its comparisons work across ints and doubles. The bindings used here
(`common-expression-language`, the Rust `cel` crate behind PyO3) evaluate a compiled
rule in about 1.5 us on this machine; the pure-Python `cel-python` interprets it in
Python. No rule is ever run through Python's `eval`.

Variables: `transaction_id`, `customer_id`, `terminal_id` (ints), `tx_amount` (double),
`tx_datetime` (a timestamp, UTC), every model input by name (doubles: the 15 of fraud_v1
and those later feature sets add), `score` (double) and `fallback` (bool: the score is the
fallback model's). On a declared repo: the event's fields (typed as its schema says), every
feature the repo declares (doubles), `score` and `fallback`.

A file is checked whole before it replaces the rules in force: YAML syntax, each rule's
fields, unknown variables and type errors (each rule is run once on a sample), with the
line of the rule at fault. A file that fails keeps the old rules serving.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vigil.features import spec

log = logging.getLogger("vigil.scoring")

ACTIONS = ("allow", "review", "block")
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Every rule runs on every answer: a file's size bounds the time rules add to a request
# (about 1.5 us a rule, so 1,000 rules cost ~1.5 ms of a 25 ms deadline).
MAX_RULES = 1_000
MAX_EXPRESSION = 2_000


class RulesError(ValueError):
    """A rules file that cannot be loaded: the message names the line and the reason."""


@dataclass(frozen=True)
class Rule:
    name: str
    when: str
    action: str
    line: int
    program: Any


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    digest: str  # of the file's text: tells a change apart from a touch
    source: str

    @staticmethod
    def empty() -> RuleSet:
        return RuleSet((), "", "")

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": r.name, "when": r.when, "action": r.action} for r in self.rules]


def sample_context() -> dict[str, Any]:
    """Values of every variable's type, to run each rule once at load time."""
    context: dict[str, Any] = {name: 0.0 for name in spec.SERVED_INPUTS}
    context.update(
        transaction_id=1,
        customer_id=1,
        terminal_id=1,
        tx_amount=1.0,
        tx_datetime=datetime(2018, 4, 1, tzinfo=UTC),
        score=0.5,
        fallback=False,
    )
    return context


def parse_rules(text: str, source: str = "<rules>", sample: dict[str, Any] | None = None) -> RuleSet:
    """Checks and compiles a rules file's text; raises RulesError naming the line. `sample`:
    a value of each variable's type (default: the handbook's, `sample_context()`); a declared
    repo's come from its schema (`scoring.declared_scorer.rule_sample`)."""
    import cel

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "the file"
        raise RulesError(f"{source}: {where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    data = yaml.safe_load(text) if root is not None else None
    if data is None:
        # An emptied or truncated file must not silently drop every block rule.
        raise RulesError(f"{source}: line 1: the file holds no rules key (write `rules: []` for no rules)")
    if not isinstance(data, dict) or set(data) != {"rules"} or not isinstance(data["rules"] or [], list):
        raise RulesError(f"{source}: line 1: expected a mapping with one key, `rules:`, holding a list")
    nodes: list[Any] = next((value.value for key, value in root.value if key.value == "rules"), [])
    if len(data["rules"] or []) > MAX_RULES:
        raise RulesError(
            f"{source}: line 1: {len(data['rules'])} rules, more than the {MAX_RULES} a file may hold "
            "(every rule runs on every answer)"
        )
    rules: list[Rule] = []
    seen: set[str] = set()
    sample = sample if sample is not None else sample_context()
    variables = frozenset(sample)
    for node, item in zip(nodes, data.get("rules") or [], strict=True):
        line = node.start_mark.line + 1
        where = f"{source}: line {line}"
        if not isinstance(item, dict):
            raise RulesError(f"{where}: a rule is a mapping of name, when and action")
        unknown = set(item) - {"name", "when", "action"}
        if unknown:
            raise RulesError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        name, when, action = item.get("name"), item.get("when"), item.get("action")
        if not isinstance(name, str) or not NAME.match(name):
            raise RulesError(f"{where}: name must be 1-64 letters, digits, _ or -, got {name!r}")
        if name in seen:
            raise RulesError(f"{where}: rule {name!r} is defined twice")
        seen.add(name)
        if action not in ACTIONS:
            raise RulesError(f"{where}: rule {name!r}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        if not isinstance(when, str) or not when.strip():
            raise RulesError(f"{where}: rule {name!r}: `when` must be a CEL expression (a string)")
        if len(when) > MAX_EXPRESSION:
            raise RulesError(f"{where}: rule {name!r}: `when` is longer than {MAX_EXPRESSION} characters")
        try:
            program = cel.compile(when)
        except ValueError as error:
            raise RulesError(f"{where}: rule {name!r}: {_first_line(error)}") from None
        unknown_vars = sorted(set(program.variables()) - variables)
        if unknown_vars:
            raise RulesError(
                f"{where}: rule {name!r}: unknown variable(s) {', '.join(unknown_vars)} "
                f"(request fields, features, score, fallback)"
            )
        try:
            result = program.execute(sample)
        except Exception as error:  # a type error the sample run finds (e.g. double + int)
            raise RulesError(f"{where}: rule {name!r}: {_first_line(error)}") from None
        if not isinstance(result, bool):
            raise RulesError(f"{where}: rule {name!r}: `when` must be true or false, it gives {type(result).__name__}")
        rules.append(Rule(name, when, action, line, program))
    return RuleSet(tuple(rules), hashlib.sha256(text.encode()).hexdigest(), source)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class RulesFile:
    """The rules in force, re-read when the file changes (`check` is called every second)."""

    def __init__(self, path: str | Path | None, sample: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path else None
        self.sample = sample
        self.current = RuleSet.empty()
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = None

    def check(self) -> bool:
        """Loads the file if it changed; True when the rules in force changed."""
        if self.path is None:
            return False
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self.error != "missing":
                log.error("rules file %s is missing; the rules in force keep serving", self.path)
                self.error = "missing"
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        text = self.path.read_text(encoding="utf-8", errors="replace")
        try:
            rules = parse_rules(text, str(self.path), self.sample)
        except RulesError as error:
            self.error = str(error)
            log.error("rules file refused, the %d rules in force keep serving: %s", len(self.current.rules), error)
            return False
        self.error = None
        if rules.digest == self.current.digest:
            return False
        self.current = rules
        log.info("rules loaded from %s: %s", self.path, ", ".join(r.name for r in rules.rules) or "none")
        return True
