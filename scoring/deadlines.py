"""How long a request may take before it is answered from the fallback.

One transaction gets the budget (`VIGIL_SCORE_BUDGET_MS`). A batch gets the budget plus, for
every row after the first, a margin times what a row has recently cost on this machine
(measured on the batches themselves), so a large batch on a slow or busy machine is given
the time its size needs instead of quietly going to the baseline. Until batches have been
measured, `VIGIL_SCORE_ROW_BUDGET_MS` is the estimate; the estimate never goes below it.
"""

from __future__ import annotations

# Batches smaller than this say little about a row's cost (the fixed part dominates).
MIN_MEASURED_ROWS = 50


class BatchDeadlines:
    def __init__(self, budget_seconds: float, row_seconds: float, margin: float = 3.0, weight: float = 0.2) -> None:
        self.budget, self.floor, self.margin, self.weight = budget_seconds, row_seconds, margin, weight
        self.row_seconds = row_seconds  # recent seconds per row (exponentially weighted)

    def allowance(self, rows: int) -> float:
        """Seconds a request of `rows` transactions may take."""
        if rows <= 1:
            return self.budget
        return self.budget + self.margin * max(self.row_seconds, self.floor) * (rows - 1)

    def observe(self, rows: int, seconds: float) -> None:
        """A batch took `seconds` (a missed deadline counts what it had used: the estimate
        grows, and the next batches get more time)."""
        if rows < MIN_MEASURED_ROWS:
            return
        self.row_seconds += self.weight * (seconds / rows - self.row_seconds)
