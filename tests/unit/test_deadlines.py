"""Batch deadlines follow the measured cost of a row, never below the configured estimate."""

from __future__ import annotations

import pytest

from scoring.deadlines import BatchDeadlines


def test_one_transaction_gets_the_budget() -> None:
    assert BatchDeadlines(0.025, 0.00025).allowance(1) == 0.025


def test_a_batch_starts_from_the_configured_row_estimate() -> None:
    deadlines = BatchDeadlines(0.025, 0.00025, margin=3.0)
    assert deadlines.allowance(1001) == pytest.approx(0.025 + 3 * 0.00025 * 1000)


def test_slow_rows_on_this_machine_lengthen_the_deadline() -> None:
    deadlines = BatchDeadlines(0.025, 0.00025, margin=3.0)
    for _ in range(50):
        deadlines.observe(1000, 2.0)  # 2 ms a row: a slow or busy machine
    assert deadlines.row_seconds == pytest.approx(0.002, rel=0.01)
    assert deadlines.allowance(1000) > 2.0  # the next such batch has the time it needs


def test_a_missed_deadline_grows_the_estimate() -> None:
    deadlines = BatchDeadlines(0.025, 0.00025, margin=3.0)
    before = deadlines.allowance(1000)
    deadlines.observe(1000, before)  # cut off at its deadline: it needed at least that
    assert deadlines.allowance(1000) > before


def test_fast_rows_never_go_below_the_floor_and_small_batches_are_not_measured() -> None:
    deadlines = BatchDeadlines(0.025, 0.00025, margin=3.0)
    deadlines.observe(10, 10.0)  # too small to say what a row costs
    assert deadlines.row_seconds == 0.00025
    for _ in range(50):
        deadlines.observe(1000, 0.01)
    assert deadlines.allowance(1001) == pytest.approx(0.025 + 3 * 0.00025 * 1000)
