"""Model comparison on fresh simulated worlds.

One dataset's July holds four weekly draws, and which model wins a week is partly luck:
a week's AUC difference has a 95 % interval of about +/-0.02 (`vigil evaluate`'s
bootstrap). Worlds from the simulator (the handbook's three fraud patterns, each world
its own seed: its own customers, terminals, compromises and payments) are independent
of the handbook's file, so they can say how often, and by how much, one model beats
another, without spending the file's test weeks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd

from vigil.features.backfill import compute_features
from vigil.lifecycle.evaluation import METRICS
from vigil.lifecycle.selection import Candidate, WindowScores, run_windows
from vigil.simulate import SimulationConfig, simulate


def world_data(seed: int, days: int, start_date: str = "2018-04-01", customers: int = 5_000) -> pd.DataFrame:
    """A simulated world (twice as many terminals as customers, as in the handbook) with
    every feature, in time order, without the fraud scenario (the simulator's answer key
    is never a model input)."""
    config = SimulationConfig(customers=customers, terminals=2 * customers, days=days, start_date=start_date, seed=seed)
    transactions = simulate(config)
    features = compute_features(transactions)
    own = [c for c in features.columns if c not in transactions.columns]
    data = transactions.join(features.set_index(transactions.index)[own])
    return data.drop(columns=["tx_fraud_scenario"]).sort_values(["tx_datetime", "transaction_id"], ignore_index=True)


def compare_on_worlds(
    seeds: Sequence[int],
    candidates: Sequence[Candidate],
    test_starts: Sequence[str],
    days: int,
    start_date: str = "2018-04-01",
    customers: int = 5_000,
    log: Callable[[str], None] = print,
    on_world: Callable[[pd.DataFrame], None] | None = None,
    on_window: WindowScores | None = None,
) -> pd.DataFrame:
    """Every candidate's metrics on every test window of every world (column `world`: the seed).

    `on_world` gets the results so far after each world (to save them as they come).
    """
    parts: list[pd.DataFrame] = []
    for seed in seeds:
        log(f"world {seed}: simulating {days} days")
        data = world_data(seed, days, start_date, customers)
        result = run_windows(data, test_starts, candidates, log=log, on_window=on_window)
        parts.append(result.assign(world=seed))
        if on_world is not None:
            on_world(pd.concat(parts, ignore_index=True))
    return pd.concat(parts, ignore_index=True)


def margins(results: pd.DataFrame, reference: str) -> pd.DataFrame:
    """`reference` minus every other model, per world and window, for each metric."""
    wide = results.pivot_table(index=["world", "test_start"], columns="model", values=list(METRICS))
    rows = []
    for other in results["model"].unique():
        if other == reference:
            continue
        diff = pd.DataFrame({m: wide[(m, reference)] - wide[(m, other)] for m in METRICS})
        rows.append(diff.assign(against=other).reset_index())
    return pd.concat(rows, ignore_index=True)


def summary(results: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per other model (and against every other at once, by each window's worst margin):
    mean margin and share of windows won, per metric; share of windows won on all three
    metrics; share of worlds won on all three in every window.

    A tie (equal CP@100 is common: it moves in steps of 1/700 a week) is not a win.
    """
    diff = margins(results, reference)
    # Against all of them at once: the worst margin of each window.
    worst = diff.groupby(["world", "test_start"])[list(METRICS)].min().reset_index().assign(against="every other model")
    rows = []
    for other, part in pd.concat([diff, worst], ignore_index=True).groupby("against", sort=False):
        ahead = part[list(METRICS)] > 0
        row: dict[str, object] = {"against": other, "windows": len(part)}
        for m in METRICS:
            row[f"{m}_margin"] = float(part[m].mean())
            row[f"{m}_margin_sd"] = float(part[m].std(ddof=1)) if len(part) > 1 else float("nan")
            row[f"{m}_won"] = float(ahead[m].mean())
        every = ahead.all(axis=1)
        row["all_three_won"] = float(every.mean())
        row["worlds_all_windows_won"] = float(every.groupby(part["world"]).all().mean())
        rows.append(row)
    return pd.DataFrame(rows)
