"""A simulator of card transactions like the Fraud Detection Handbook's.

Customers and terminals live on a 100 x 100 square; a customer pays at terminals within
a radius, a Poisson number of times a day, amounts normal around their own mean. Three
fraud patterns as in the handbook: (1) any amount above 220; (2) two terminals a day
are compromised and every transaction on them for the next 28 days is fraud; (3) three
customers a day are compromised and a third of their transactions over the next 14
days are fraud with the amount multiplied by 5.

Drift for monitoring tests: `amount_shift` multiplies genuine amounts from `drift_day`
on; `new_pattern_day` starts a fourth pattern ("card testing": compromised cards make
bursts of small night-time payments on random terminals).

Deterministic for a seed; generated in blocks of days so any size fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

DAY = 86_400
COLUMNS = [
    "transaction_id",
    "tx_datetime",
    "customer_id",
    "terminal_id",
    "tx_amount",
    "tx_time_seconds",
    "tx_time_days",
    "tx_fraud",
    "tx_fraud_scenario",
]


@dataclass(frozen=True)
class SimulationConfig:
    customers: int = 5_000
    terminals: int = 10_000
    days: int = 30
    start_date: str = "2018-04-01"
    radius: float = 5.0
    seed: int = 0
    amount_shift: float = 1.0  # multiplies genuine amounts from drift_day on
    drift_day: int | None = None
    new_pattern_day: int | None = None  # first day of the card-testing pattern
    testing_cards_per_day: int = 3  # cards the card-testing pattern compromises each day
    block_days: int = 7


@dataclass(frozen=True)
class _World:
    mean_amount: np.ndarray
    std_amount: np.ndarray
    tx_per_day: np.ndarray
    nearby: np.ndarray  # flattened terminal ids near each customer
    nearby_start: np.ndarray
    nearby_count: np.ndarray
    compromised_terminals: list[np.ndarray]  # per day
    compromised_customers: list[np.ndarray]  # per day
    testing_customers: list[np.ndarray]  # per day, pattern 4


def _world(cfg: SimulationConfig, rng: np.random.Generator) -> _World:
    customer_xy = rng.uniform(0, 100, size=(cfg.customers, 2))
    mean_amount = rng.uniform(5, 100, cfg.customers)
    tx_per_day = rng.uniform(0, 4, cfg.customers)
    terminal_xy = rng.uniform(0, 100, size=(cfg.terminals, 2))
    neighbours = cKDTree(terminal_xy).query_ball_point(customer_xy, r=cfg.radius)
    counts = np.array([len(n) for n in neighbours], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    flat = (
        np.concatenate([np.sort(np.asarray(n, dtype=np.int64)) for n in neighbours])
        if counts.sum()
        else np.zeros(0, np.int64)
    )
    comp_t = [rng.choice(cfg.terminals, size=min(2, cfg.terminals), replace=False) for _ in range(cfg.days)]
    comp_c = [rng.choice(cfg.customers, size=min(3, cfg.customers), replace=False) for _ in range(cfg.days)]
    testing = [
        rng.choice(cfg.customers, size=min(cfg.testing_cards_per_day, cfg.customers), replace=False)
        if cfg.new_pattern_day is not None and day >= cfg.new_pattern_day
        else np.zeros(0, np.int64)
        for day in range(cfg.days)
    ]
    return _World(mean_amount, mean_amount / 2, tx_per_day, flat, starts, counts, comp_t, comp_c, testing)


def _active(schedule: list[np.ndarray], day: int, duration: int) -> np.ndarray:
    first = max(0, day - duration + 1)
    chosen = schedule[first : day + 1]
    return np.unique(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def _block(
    cfg: SimulationConfig, world: _World, first_day: int, last_day: int, rng: np.random.Generator
) -> pd.DataFrame:
    n_days = last_day - first_day
    counts = rng.poisson(np.tile(world.tx_per_day, n_days))  # (day, customer) flattened day-major
    counts[np.tile(world.nearby_count == 0, n_days)] = 0
    cell = np.repeat(np.arange(counts.shape[0]), counts)
    customer = cell % cfg.customers
    day = first_day + cell // cfg.customers
    seconds = rng.normal(DAY / 2, 20_000, cell.shape[0]).astype(np.int64)
    mean, std = world.mean_amount[customer], world.std_amount[customer]
    amount = rng.normal(mean, std)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    pick = np.floor(rng.uniform(0, 1, cell.shape[0]) * world.nearby_count[customer]).astype(np.int64)
    terminal = world.nearby[world.nearby_start[customer] + pick]
    scenario = np.zeros(cell.shape[0], dtype=np.int64)
    if cfg.drift_day is not None and cfg.amount_shift != 1.0:
        amount = np.where(day >= cfg.drift_day, amount * cfg.amount_shift, amount)
    # Pattern 4 (drift): bursts of small night-time payments on random terminals.
    extra = []
    for d in range(first_day, last_day):
        cards: np.ndarray = (
            _active(world.testing_customers, d, 7) if cfg.new_pattern_day is not None else np.zeros(0, np.int64)
        )
        for c in cards:
            k = int(rng.integers(3, 8))
            extra.append(
                pd.DataFrame(
                    {
                        "customer_id": np.full(k, c),
                        "day": np.full(k, d),
                        "seconds": rng.integers(0, 5 * 3600, k),
                        "amount": rng.uniform(1, 10, k),
                        "terminal_id": rng.integers(0, cfg.terminals, k),
                        "scenario": np.full(k, 4),
                    }
                )
            )
    frame = pd.DataFrame(
        {
            "customer_id": customer,
            "day": day,
            "seconds": seconds,
            "amount": amount,
            "terminal_id": terminal,
            "scenario": scenario,
        }
    )
    # Payment times fall within the day; draws outside it are dropped, as in the handbook.
    frame = frame[(frame["seconds"] > 0) & (frame["seconds"] < DAY)]
    if extra:
        frame = pd.concat([frame, *extra], ignore_index=True)
    frame["amount"] = frame["amount"].round(2)
    # Pattern 2: compromised terminals, 28 days.
    for d in range(first_day, last_day):
        on_day = frame["day"].to_numpy() == d
        hit = on_day & np.isin(frame["terminal_id"].to_numpy(), _active(world.compromised_terminals, d, 28))
        frame.loc[hit & (frame["scenario"] == 0), "scenario"] = 2
        # Pattern 3: compromised customers, 14 days, a third of their payments at 5x.
        victims = on_day & np.isin(frame["customer_id"].to_numpy(), _active(world.compromised_customers, d, 14))
        victims &= frame["scenario"].to_numpy() == 0
        chosen = victims & (rng.uniform(0, 1, len(frame)) < 1 / 3)
        frame.loc[chosen, "amount"] = (frame.loc[chosen, "amount"] * 5).round(2)
        frame.loc[chosen, "scenario"] = 3
    # Pattern 1: large amounts (checked last, as in the handbook: it overrides).
    frame.loc[frame["amount"] > 220, "scenario"] = 1
    frame["time"] = frame["day"] * DAY + frame["seconds"]
    return frame.sort_values(["time", "customer_id"], kind="stable").reset_index(drop=True)


def simulate_blocks(cfg: SimulationConfig) -> Iterator[pd.DataFrame]:
    """Transactions in handbook columns, block by block, ids increasing with time."""
    rng = np.random.default_rng(cfg.seed)
    world = _world(cfg, rng)
    start = pd.Timestamp(cfg.start_date)
    next_id = 0
    for first in range(0, cfg.days, cfg.block_days):
        block = _block(cfg, world, first, min(cfg.days, first + cfg.block_days), rng)
        n = len(block)
        yield pd.DataFrame(
            {
                "transaction_id": np.arange(next_id, next_id + n, dtype=np.int64),
                "tx_datetime": (start + pd.to_timedelta(block["time"], unit="s")).astype("datetime64[us]"),
                "customer_id": block["customer_id"].astype(np.int64),
                "terminal_id": block["terminal_id"].astype(np.int64),
                "tx_amount": block["amount"].astype(np.float64),
                "tx_time_seconds": block["time"].astype(np.int64),
                "tx_time_days": block["day"].astype(np.int64),
                "tx_fraud": (block["scenario"] > 0).astype(np.int64),
                "tx_fraud_scenario": block["scenario"].astype(np.int64),
            }
        )
        next_id += n


def simulate(cfg: SimulationConfig) -> pd.DataFrame:
    return pd.concat(list(simulate_blocks(cfg)), ignore_index=True)
