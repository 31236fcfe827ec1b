"""Rules files: what is refused (naming the line) and what the rules in force do then."""

from __future__ import annotations

from pathlib import Path

import pytest

from scoring.rules import MAX_RULES, RulesError, RulesFile, parse_rules

BLOCK = "rules:\n  - name: huge\n    when: tx_amount > 10000.0\n    action: block\n"


@pytest.mark.parametrize("text", ["", "\n\n", "# every rule commented out\n# - name: huge\n", "---\n"])
def test_an_empty_or_comment_only_file_is_refused(text: str) -> None:
    with pytest.raises(RulesError, match=r"line 1: .*rules: \[\]"):
        parse_rules(text, "rules.yaml")


def test_an_explicit_empty_list_means_no_rules() -> None:
    assert parse_rules("rules: []\n").rules == ()
    assert parse_rules("rules:\n").rules == ()


def test_a_file_without_the_rules_key_is_refused() -> None:
    with pytest.raises(RulesError, match="line 1: expected a mapping"):
        parse_rules("{}\n")


def test_too_many_rules_are_refused() -> None:
    rules = "".join(f"  - name: r{i}\n    when: tx_amount > {i}.0\n    action: review\n" for i in range(MAX_RULES + 1))
    with pytest.raises(RulesError, match=f"more than the {MAX_RULES}"):
        parse_rules("rules:\n" + rules)


def test_an_emptied_file_keeps_the_rules_in_force(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BLOCK)
    rules = RulesFile(path)
    assert rules.check() and [r.name for r in rules.current.rules] == ["huge"]
    path.write_text("# nothing\n")
    assert not rules.check()
    assert rules.error is not None and "rules: []" in rules.error
    assert [r.name for r in rules.current.rules] == ["huge"]  # a block stays a block
