"""The request-time features, compiled: one pass per transaction over its customer's and
its terminal's stored facts, straight into the model's input matrix (spec.SERVED_INPUTS).

The same definitions as the vectorised window functions of `vigil.features.windows`,
which the backfill runs over whole files; the tests hold the two equal on every feature
(counts exact, averages and ratios within 1e-9). The vectorised functions pay for
sorting, packing keys and padding matrices, which a file of millions of rows amortises
and a request batch does not. Measured on a 1,000-row batch of the handbook (95 k
customer facts, 46 k labels): 11.5 ms vectorised, 3.3 ms here (same run). For one
transaction, read and decode included: 35 us, against 77 us for protobuf's parser and
the same arithmetic in plain Python.

Per transaction (time t, id, amount):
- earlier customer facts: time < t, or time = t with a lower id; a stored copy of the
  transaction itself (same id) never counts, the request's own values do, once;
- customer windows (t - n days, t]: count and mean amount, the transaction included;
- habits over spec.HABIT_DAYS of earlier facts: the median amount (the transaction's own
  amount when there are none), facts above spec.HIGH_AMOUNT_FACTOR x median within each
  of spec.HIGH_AMOUNT_DAYS, the largest amount within spec.MAX_RATIO_DAYS;
- terminal labels in (t - delay - n days, t - delay]: count and fraud rate; over the
  longest window, the run of frauds at its end, its age, the newest fraud's age, and the
  newest label's age (spec.NO_LABEL_AGE_DAYS without one).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vigil.features import spec
from vigil.features.windows import FloatArray, IntArray, SortedFacts

_AT = {name: j for j, name in enumerate(spec.SERVED_INPUTS)}
COLUMNS = len(spec.SERVED_INPUTS)
DAY = spec.DAY_SECONDS
WINDOWS = np.array([d * DAY for d in spec.WINDOW_DAYS], np.int64)
CUSTOMER_COUNT = np.array([_AT[spec.customer_count_name(d)] for d in spec.WINDOW_DAYS], np.int64)
CUSTOMER_AVG = np.array([_AT[spec.customer_avg_name(d)] for d in spec.WINDOW_DAYS], np.int64)
TERMINAL_COUNT = np.array([_AT[spec.terminal_count_name(d)] for d in spec.WINDOW_DAYS], np.int64)
TERMINAL_RISK = np.array([_AT[spec.terminal_risk_name(d)] for d in spec.WINDOW_DAYS], np.int64)
HIGH_WINDOWS = np.array([d * DAY for d in spec.HIGH_AMOUNT_DAYS], np.int64)
HIGH = np.array([_AT[spec.customer_high_name(d)] for d in spec.HIGH_AMOUNT_DAYS], np.int64)
AMOUNT, WEEKEND, NIGHT = _AT["tx_amount"], _AT[spec.WEEKEND], _AT[spec.NIGHT]
OVER_MEDIAN, MAX_RATIO = _AT[spec.AMOUNT_OVER_MEDIAN], _AT[spec.MAX_RATIO]
STREAK, STREAK_AGE, LAST_FRAUD_AGE = _AT[spec.FRAUD_STREAK], _AT[spec.STREAK_AGE], _AT[spec.LAST_FRAUD_AGE]
LABEL_AGE = _AT[spec.LABEL_AGE]
HABIT, MAX_RATIO_WINDOW = spec.HABIT_DAYS * DAY, spec.MAX_RATIO_DAYS * DAY
DELAY, LONGEST = spec.TERMINAL_DELAY_DAYS * DAY, max(spec.WINDOW_DAYS) * DAY
FACTOR, NIGHT_LAST_HOUR, NO_LABEL_AGE = spec.HIGH_AMOUNT_FACTOR, spec.NIGHT_LAST_HOUR, spec.NO_LABEL_AGE_DAYS

_WRITTEN = {AMOUNT, WEEKEND, NIGHT, OVER_MEDIAN, MAX_RATIO, STREAK, STREAK_AGE, LAST_FRAUD_AGE, LABEL_AGE}
_WRITTEN |= {int(j) for j in (*CUSTOMER_COUNT, *CUSTOMER_AVG, *TERMINAL_COUNT, *TERMINAL_RISK, *HIGH)}
if set(range(COLUMNS)) != _WRITTEN:  # a feature added to the spec must be added here too
    raise ImportError(f"vigil.features.kernel does not compute {sorted(set(spec.SERVED_INPUTS) - set(_AT))}")


@njit(cache=True, nogil=True)
def _customer(
    out: np.ndarray, i: int, t: int, own: int, amount: float,
    ts: np.ndarray, ids: np.ndarray, amounts: np.ndarray, a: int, b: int,
    habit_ts: np.ndarray, habit_amount: np.ndarray, ordered: np.ndarray, window: np.ndarray,
) -> None:  # pragma: no cover - compiled  # fmt: skip
    windows = WINDOWS.shape[0]
    counts, sums, carry = window[0], window[1], window[2]  # carry: Neumaier compensation of the sums
    counts[:] = 0.0
    sums[:] = 0.0
    carry[:] = 0.0
    k = 0
    for j in range(a, b):
        moment = ts[j]
        if moment > t or (moment == t and ids[j] >= own) or ids[j] == own:
            continue  # later, or the transaction's own stored copy
        value = amounts[j]
        for w in range(windows):
            if moment > t - WINDOWS[w]:
                counts[w] += 1
                total = sums[w] + value
                if abs(sums[w]) >= abs(value):
                    carry[w] += (sums[w] - total) + value
                else:
                    carry[w] += (value - total) + sums[w]
                sums[w] = total
        if moment > t - HABIT:
            habit_ts[k] = moment
            habit_amount[k] = value
            k += 1
    for w in range(windows):
        out[i, CUSTOMER_COUNT[w]] = counts[w] + 1
        out[i, CUSTOMER_AVG[w]] = ((sums[w] + carry[w]) + amount) / (counts[w] + 1)
    median = amount
    if k:
        ordered[:k] = habit_amount[:k]
        ordered[:k].sort()
        median = (ordered[(k - 1) // 2] + ordered[k // 2]) / 2
    out[i, OVER_MEDIAN] = amount / (median + 1.0)
    for h in range(HIGH_WINDOWS.shape[0]):
        high = 0
        for j in range(k):
            if habit_ts[j] > t - HIGH_WINDOWS[h] and habit_amount[j] > FACTOR * median:
                high += 1
        out[i, HIGH[h]] = high
    biggest = 0.0
    for j in range(k):
        if habit_ts[j] > t - MAX_RATIO_WINDOW and habit_amount[j] > biggest:
            biggest = habit_amount[j]
    out[i, MAX_RATIO] = biggest / (median + 1.0)


@njit(cache=True, nogil=True)
def _terminal(
    out: np.ndarray, i: int, t: int, ts: np.ndarray, fraud: np.ndarray, a: int, b: int
) -> None:  # pragma: no cover - compiled
    end = t - DELAY
    hi = a + np.searchsorted(ts[a:b], end, side="right")
    for w in range(WINDOWS.shape[0]):
        lo = a + np.searchsorted(ts[a:b], end - WINDOWS[w], side="right")
        frauds = 0.0
        for j in range(lo, hi):
            frauds += fraud[j]
        out[i, TERMINAL_COUNT[w]] = hi - lo
        out[i, TERMINAL_RISK[w]] = frauds / (hi - lo) if hi > lo else 0.0
    first = a + np.searchsorted(ts[a:b], end - LONGEST, side="right")
    start = hi - 1  # walks back to the label before the run of frauds at the end
    while start >= first and fraud[start] > 0.5:
        start -= 1
    streak = hi - 1 - start
    out[i, STREAK] = streak
    out[i, STREAK_AGE] = (t - ts[start + 1]) / DAY if streak else 0.0
    newest = hi - 1
    while newest >= first and not fraud[newest] > 0.5:
        newest -= 1
    out[i, LAST_FRAUD_AGE] = (t - ts[newest]) / DAY if newest >= first else 0.0
    out[i, LABEL_AGE] = (t - ts[hi - 1]) / DAY if hi > first else NO_LABEL_AGE


@njit(cache=True, nogil=True)
def _rows(
    customer_bounds: np.ndarray, c_ts: np.ndarray, c_id: np.ndarray, c_amount: np.ndarray,
    label_bounds: np.ndarray, l_ts: np.ndarray, l_fraud: np.ndarray,
    q_id: np.ndarray, q_ts: np.ndarray, q_amount: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled  # fmt: skip
    n = q_id.shape[0]
    out = np.empty((n, COLUMNS))
    longest = 0
    for i in range(n):
        longest = max(longest, customer_bounds[i + 1] - customer_bounds[i])
    habit_ts = np.empty(longest, np.int64)
    habit_amount, ordered = np.empty(longest), np.empty(longest)
    window = np.empty((3, WINDOWS.shape[0]))
    for i in range(n):
        t, amount = q_ts[i], q_amount[i]
        out[i, AMOUNT] = amount
        day = t // DAY
        out[i, WEEKEND] = 1.0 if (day + 3) % 7 >= 5 else 0.0  # 1970-01-01 was a Thursday
        out[i, NIGHT] = 1.0 if (t - day * DAY) // 3600 <= NIGHT_LAST_HOUR else 0.0
        _customer(
            out, i, t, q_id[i], amount, c_ts, c_id, c_amount,
            customer_bounds[i], customer_bounds[i + 1], habit_ts, habit_amount, ordered, window,
        )  # fmt: skip
        _terminal(out, i, t, l_ts, l_fraud, label_bounds[i], label_bounds[i + 1])
    return out


def served_inputs(
    customers: SortedFacts, labels: SortedFacts, tx_id: IntArray, ts: IntArray, amount: FloatArray
) -> np.ndarray:
    """The model inputs (spec.SERVED_INPUTS, float64) of transaction i from the facts of
    entity i in `customers` and in `labels` (stacks numbered 0..n-1, sorted)."""
    entities = np.arange(len(tx_id) + 1, dtype=np.int64)
    return _rows(
        np.searchsorted(customers.entity, entities), customers.ts, customers.tx_id, customers.value,
        np.searchsorted(labels.entity, entities), labels.ts, labels.value,
        np.ascontiguousarray(tx_id, np.int64), np.ascontiguousarray(ts, np.int64),
        np.ascontiguousarray(amount, np.float64),
    )  # fmt: skip


def compile_kernel() -> None:
    """Compiles (or loads numba's cached build of) the kernel before a request needs it."""
    empty = SortedFacts(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    served_inputs(empty, empty, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
