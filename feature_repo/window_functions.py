"""fraud_v2's and fraud_v3's own aggregations, beyond Feast's six functions.

Each is called for every payment with its card's (or its terminal's) facts in the window,
oldest first: `values` (the amounts, or the labels), `times` (nanoseconds), `ids`, and the
payment's own time `t` and id. On the payments the last fact is the payment itself.
Vigil compiles them with numba; a helper they call is compiled too (`@njit`).
"""

import numpy as np
from numba import njit

from vigil.declared import window_function

DAY = 86_400 * 10**9
HIGH_AMOUNT_FACTOR = 3.0
# A terminal without labels in its window has gone unobserved for at least the label delay
# and the window: 7 + 30 days.
NO_LABEL_AGE_DAYS = 37.0


@njit(cache=True)  # a helper the window functions call: compiled with them
def _median_of_earlier(values: np.ndarray) -> float:
    """The median amount of the card's earlier payments; the payment's own without any."""
    k = values.shape[0] - 1
    if k == 0:
        return float(values[-1])
    ordered = np.sort(values[:-1])
    return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2


@window_function
def habit_median(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    return _median_of_earlier(values)


def _high_amounts(days: int):  # type: ignore[no-untyped-def]
    def high_amounts(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
        """Earlier payments of the last `days` days above 3x the card's habit."""
        median = _median_of_earlier(values)
        high = 0
        for j in range(values.shape[0] - 1):
            if times[j] > t - days * DAY and values[j] > HIGH_AMOUNT_FACTOR * median:
                high += 1
        return float(high)

    return high_amounts


high_amounts_7d = window_function(_high_amounts(7), name="high_amounts_7d")
high_amounts_14d = window_function(_high_amounts(14), name="high_amounts_14d")


@window_function
def max_over_habit_7d(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """The card's largest earlier payment of the last 7 days against its habit."""
    biggest = 0.0
    for j in range(values.shape[0] - 1):
        if times[j] > t - 7 * DAY and values[j] > biggest:
            biggest = values[j]
    return biggest / (_median_of_earlier(values) + 1.0)


@window_function
def fraud_streak(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """How many of the terminal's newest labels are all frauds."""
    streak = 0
    for j in range(values.shape[0] - 1, -1, -1):
        if not values[j] > 0.5:
            break
        streak += 1
    return float(streak)


@window_function
def fraud_streak_age_days(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """Days from the first fraud of that run to the payment (0 without a run)."""
    start = values.shape[0]
    while start > 0 and values[start - 1] > 0.5:
        start -= 1
    return float((t - times[start]) / DAY) if start < values.shape[0] else 0.0


@window_function
def last_fraud_age_days(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """Days from the terminal's newest labelled fraud to the payment (0 without one)."""
    for j in range(values.shape[0] - 1, -1, -1):
        if values[j] > 0.5:
            return (t - times[j]) / DAY
    return 0.0


@window_function
def label_age_days(values: np.ndarray, times: np.ndarray, ids: np.ndarray, t: int, event_id: int) -> float:
    """Days from the terminal's newest label to the payment: how long it has gone unobserved."""
    if values.shape[0] == 0:
        return NO_LABEL_AGE_DAYS
    return (t - times[-1]) / DAY
