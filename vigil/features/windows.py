"""Vectorised window aggregates: the arithmetic behind every handbook feature, over a
whole file of transactions at once (the backfill, local or on Spark).

The request-time path computes the same features one transaction at a time, compiled
(`vigil.features.kernel`); the tests hold the two equal on every feature.

A history is a set of facts sorted by (entity, ts, tx_id). Entities are re-coded to
dense ranks so that (entity, ts) packs into one int64 key that `np.searchsorted` can
bisect for every query at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vigil.features import spec

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_TS_BITS = 33  # (ts - origin) fits 272 years of seconds: the API admits 1970-2200; 2^30 entity ranks
_MAX_RANK = 1 << (63 - _TS_BITS)
_LONGEST_WINDOW_SECONDS = max(spec.WINDOW_DAYS) * spec.DAY_SECONDS


@dataclass(frozen=True)
class SortedFacts:
    """Facts (one per transaction) sorted by (entity, ts, tx_id).

    `value` is the amount for customer histories and the 0/1 fraud label for
    terminal label histories.
    """

    entity: IntArray
    ts: IntArray
    tx_id: IntArray
    value: FloatArray

    @staticmethod
    def build(entity: IntArray, ts: IntArray, tx_id: IntArray, value: FloatArray) -> SortedFacts:
        order = np.lexsort((tx_id, ts, entity))
        return SortedFacts(entity[order], ts[order], tx_id[order], value[order])

    def __len__(self) -> int:
        return int(self.ts.shape[0])


class _Keys:
    """Packs (entity rank, seconds since origin) into sortable int64 keys."""

    def __init__(self, facts: SortedFacts, query_entity: IntArray, query_ts: IntArray) -> None:
        all_entities = np.concatenate([facts.entity, query_entity])
        if all_entities.size == 0 or (all_entities.min() >= 0 and all_entities.max() < _MAX_RANK):
            # Already small non-negative keys (the request-time stack numbers its entities
            # 0..n-1): they order like their ranks, and ranking them (a sort) is skipped.
            self.fact_rank, self.query_rank = facts.entity, query_entity.astype(np.int64)
        else:
            _, ranks = np.unique(all_entities, return_inverse=True)
            self.fact_rank = ranks[: len(facts)].astype(np.int64)
            self.query_rank = ranks[len(facts) :].astype(np.int64)
        lowest = min(
            int(facts.ts.min()) if len(facts) else 0,
            int(query_ts.min()) if query_ts.size else 0,
        )
        # Leave room below the earliest time for the longest look-back.
        self.origin = lowest - spec.HORIZON_SECONDS - spec.DAY_SECONDS
        self.fact_keys = (self.fact_rank << _TS_BITS) | (facts.ts - self.origin)

    def query_keys(self, ts: IntArray) -> IntArray:
        return (self.query_rank << _TS_BITS) | (ts - self.origin)


def _prefix_sums(values: FloatArray) -> npt.NDArray[np.longdouble]:
    # Extended precision keeps differences of large running sums exact to ~1e-12.
    out = np.zeros(values.shape[0] + 1, dtype=np.longdouble)
    np.cumsum(values, dtype=np.longdouble, out=out[1:])
    return out


def customer_windows(facts: SortedFacts, query_pos: IntArray) -> dict[str, FloatArray]:
    """Count and mean amount of the customer's transactions in (t - n days, t].

    Every query is itself a fact (the current transaction), at position `query_pos`
    in `facts`; the window ends at that position, so a same-second transaction with a
    lower id is seen and one with a higher id is not.
    """
    keys = _Keys(facts, facts.entity[query_pos], facts.ts[query_pos])
    sums = _prefix_sums(facts.value)
    hi = query_pos + 1
    out: dict[str, FloatArray] = {}
    q_ts = facts.ts[query_pos]
    for days in spec.WINDOW_DAYS:
        lo = np.searchsorted(keys.fact_keys, keys.query_keys(q_ts - days * spec.DAY_SECONDS), "right")
        count = (hi - lo).astype(np.float64)
        out[spec.customer_count_name(days)] = count
        out[spec.customer_avg_name(days)] = np.asarray((sums[hi] - sums[lo]) / count, dtype=np.float64)
    return out


def terminal_windows(labels: SortedFacts, query_entity: IntArray, query_ts: IntArray) -> dict[str, FloatArray]:
    """Count and fraud rate of labelled transactions in (t - delay - n days, t - delay]."""
    keys = _Keys(labels, query_entity, query_ts)
    frauds = _prefix_sums(labels.value)
    end = query_ts - spec.TERMINAL_DELAY_DAYS * spec.DAY_SECONDS
    hi = np.searchsorted(keys.fact_keys, keys.query_keys(end), "right")
    out: dict[str, FloatArray] = {}
    for days in spec.WINDOW_DAYS:
        lo = np.searchsorted(keys.fact_keys, keys.query_keys(end - days * spec.DAY_SECONDS), "right")
        count = (hi - lo).astype(np.float64)
        fraud = np.asarray(frauds[hi] - frauds[lo], dtype=np.float64)
        out[spec.terminal_count_name(days)] = count
        out[spec.terminal_risk_name(days)] = np.divide(fraud, count, out=np.zeros_like(fraud), where=count > 0)
    return out


def customer_habits(facts: SortedFacts, query_pos: IntArray, chunk_cells: int = 1 << 22) -> dict[str, FloatArray]:
    """fraud_v2's customer features: the amount against the customer's habit.

    The habit is the median amount of the customer's earlier transactions (the ones
    `customer_windows` counts, less the current one) over spec.HABIT_DAYS; with none,
    the current amount. Per query, the earlier amounts sit in [lo, pos) of `facts`; they
    are laid out as rows of a padded matrix (in chunks of about `chunk_cells` cells) and
    sorted along the row, so the median is read at the middle of each row.
    """
    keys = _Keys(facts, facts.entity[query_pos], facts.ts[query_pos])
    q_ts = facts.ts[query_pos]

    def window_start(days: int) -> IntArray:
        found = np.searchsorted(keys.fact_keys, keys.query_keys(q_ts - days * spec.DAY_SECONDS), "right")
        return np.asarray(found, dtype=np.int64)

    starts = {d: window_start(d) for d in {spec.HABIT_DAYS, spec.MAX_RATIO_DAYS, *spec.HIGH_AMOUNT_DAYS}}
    lo, lo_max = starts[spec.HABIT_DAYS], starts[spec.MAX_RATIO_DAYS]
    count = query_pos - lo
    n = query_pos.shape[0]
    median = facts.value[query_pos].copy()
    high = {d: np.zeros(n) for d in spec.HIGH_AMOUNT_DAYS}
    biggest = np.zeros(n)
    width = int(count.max(initial=0))
    step = max(1, chunk_cells // max(width, 1))
    for a in range(0, n if width else 0, step):
        b = min(a + step, n)
        idx = lo[a:b, None] + np.arange(width)
        valid = idx < query_pos[a:b, None]
        amounts = np.where(valid, facts.value[np.minimum(idx, len(facts) - 1)], np.inf)
        ordered = np.sort(amounts, axis=1)
        c = count[a:b]
        rows = np.arange(b - a)
        middle = (ordered[rows, np.maximum(c - 1, 0) // 2] + ordered[rows, c // 2]) / 2
        median[a:b] = np.where(c > 0, middle, median[a:b])
        above = valid & (amounts > spec.HIGH_AMOUNT_FACTOR * median[a:b, None])
        for days in spec.HIGH_AMOUNT_DAYS:
            high[days][a:b] = np.count_nonzero(above & (idx >= starts[days][a:b, None]), axis=1)
        recent = np.where(valid & (idx >= lo_max[a:b, None]), amounts, -np.inf).max(axis=1)
        biggest[a:b] = np.maximum(recent, 0.0)
    out = {spec.AMOUNT_OVER_MEDIAN: facts.value[query_pos] / (median + 1.0)}
    for days in spec.HIGH_AMOUNT_DAYS:
        out[spec.customer_high_name(days)] = high[days]
    out[spec.MAX_RATIO] = biggest / (median + 1.0)
    return out


def terminal_streaks(labels: SortedFacts, query_entity: IntArray, query_ts: IntArray) -> dict[str, FloatArray]:
    """fraud_v2's terminal features and fraud_v3's label age, over the labels of the 30-day
    label window (t - delay - 30 days, t - delay]: how many of the newest labels are all
    frauds, days from the first of them to t, days from the newest fraud to t (0 for none),
    and days from the newest label to t (spec.NO_LABEL_AGE_DAYS for none)."""
    if not len(labels):
        zeros = np.zeros(query_ts.shape[0])
        out = {name: zeros.copy() for name in spec.STREAK_FEATURES}
        out[spec.LABEL_AGE] = np.full(query_ts.shape[0], spec.NO_LABEL_AGE_DAYS)
        return out
    keys = _Keys(labels, query_entity, query_ts)
    end = query_ts - spec.TERMINAL_DELAY_DAYS * spec.DAY_SECONDS
    hi = np.searchsorted(keys.fact_keys, keys.query_keys(end), "right")
    lo = np.searchsorted(keys.fact_keys, keys.query_keys(end - _LONGEST_WINDOW_SECONDS), "right")
    k = np.arange(len(labels), dtype=np.int64)
    fraud = labels.value > 0.5
    entity_start = np.maximum.accumulate(np.where(np.r_[True, labels.entity[1:] != labels.entity[:-1]], k, 0))
    # At each fact: the run of frauds ending there (within its entity), and the newest fraud so far.
    run = k - np.maximum.accumulate(np.where(fraud, entity_start - 1, k))
    newest = np.maximum.accumulate(np.where(fraud, k, -1))
    last = np.maximum(hi - 1, 0)
    streak = np.where(hi > lo, np.minimum(run[last], hi - lo), 0)
    streak_ts = labels.ts[last - np.maximum(streak, 1) + 1]
    newest_at = newest[last]
    seen = (hi > lo) & (newest_at >= lo)
    fraud_ts = labels.ts[np.maximum(newest_at, 0)]
    return {
        spec.FRAUD_STREAK: streak.astype(np.float64),
        spec.STREAK_AGE: np.where(streak > 0, (query_ts - streak_ts) / spec.DAY_SECONDS, 0.0),
        spec.LAST_FRAUD_AGE: np.where(seen, (query_ts - fraud_ts) / spec.DAY_SECONDS, 0.0),
        spec.LABEL_AGE: np.where(hi > lo, (query_ts - labels.ts[last]) / spec.DAY_SECONDS, spec.NO_LABEL_AGE_DAYS),
    }


def calendar(query_ts: IntArray) -> dict[str, FloatArray]:
    """Weekend and night flags from naive event time in unix seconds."""
    days = np.floor_divide(query_ts, spec.DAY_SECONDS)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (weekday 3, Monday = 0)
    hour = np.floor_divide(query_ts - days * spec.DAY_SECONDS, 3600)
    return {
        spec.WEEKEND: (weekday >= 5).astype(np.float64),
        spec.NIGHT: (hour <= spec.NIGHT_LAST_HOUR).astype(np.float64),
    }
