"""How `vigil.lifecycle.worlds` counts wins and margins (pure functions, hand-made results)."""

from __future__ import annotations

import pandas as pd
import pytest

from vigil.lifecycle.worlds import margins, summary


def results() -> pd.DataFrame:
    rows = []
    # world, window, model, auc, ap, cp_at_100
    table = [
        (1, "w1", "ours", 0.90, 0.75, 0.30),
        (1, "w1", "a", 0.88, 0.70, 0.30),  # CP@100 tie: not a win
        (1, "w1", "b", 0.91, 0.70, 0.29),
        (1, "w2", "ours", 0.90, 0.75, 0.31),
        (1, "w2", "a", 0.89, 0.70, 0.30),
        (1, "w2", "b", 0.88, 0.71, 0.30),
        (2, "w1", "ours", 0.92, 0.80, 0.33),
        (2, "w1", "a", 0.90, 0.70, 0.30),
        (2, "w1", "b", 0.91, 0.72, 0.32),
        (2, "w2", "ours", 0.92, 0.80, 0.33),
        (2, "w2", "a", 0.90, 0.70, 0.30),
        (2, "w2", "b", 0.91, 0.72, 0.32),
    ]
    for world, window, model, auc, ap, cp in table:
        rows.append({"world": world, "test_start": window, "model": model, "auc": auc, "ap": ap, "cp_at_100": cp})
    return pd.DataFrame(rows)


def test_margins_are_reference_minus_each_other_model() -> None:
    diff = margins(results(), "ours").set_index(["against", "world", "test_start"])
    assert diff.loc[("b", 1, "w1"), "auc"] == pytest.approx(-0.01)
    assert diff.loc[("a", 2, "w2"), "ap"] == pytest.approx(0.10)
    assert len(diff) == 8


def test_summary_counts_wins_ties_and_the_worst_margin() -> None:
    table = summary(results(), "ours").set_index("against")
    assert list(table.index) == ["a", "b", "every other model"]
    a, b, every = table.loc["a"], table.loc["b"], table.loc["every other model"]
    assert a["windows"] == 4 and a["auc_won"] == 1.0 and a["cp_at_100_won"] == 0.75  # the tie
    assert a["all_three_won"] == 0.75 and a["worlds_all_windows_won"] == 0.5
    assert b["auc_won"] == 0.75 and b["all_three_won"] == 0.75 and b["worlds_all_windows_won"] == 0.5
    # Against both: world 1 loses w1 (AUC to b, CP@100 tie with a); world 2 wins everything.
    assert every["all_three_won"] == 0.75 and every["worlds_all_windows_won"] == 0.5
    assert every["auc_margin"] == pytest.approx((-0.01 + 0.01 + 0.01 + 0.01) / 4)
