"""The event-time bound: an outlier ahead of the stream is refused, the stream goes on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from vigil.event_clock import EventClock
from vigil.events import LABEL, RawBatch, validate

DAY = 86_400
START = 1_522_540_800  # 2018-04-01


def test_one_outlier_is_refused_and_does_not_move_the_bar() -> None:
    clock = EventClock(None, "k", DAY)
    ts = START + np.arange(0, 40 * DAY, 3_600, dtype=np.int64)
    ts[100] = 7_289_654_400  # 2200-12-31
    ahead = clock.too_far_ahead(ts, np.ones(len(ts), bool), ts)
    assert np.flatnonzero(ahead).tolist() == [100]


def test_progress_within_the_tolerance_is_followed_across_batches() -> None:
    clock = EventClock(None, "k", DAY)
    for day in range(10):
        ts = START + day * DAY + np.arange(0, DAY, 600, dtype=np.int64)
        assert not clock.too_far_ahead(ts, np.ones(len(ts), bool), ts).any()
    late = np.array([START + 12 * DAY], np.int64)
    assert clock.too_far_ahead(late, np.ones(1, bool), late).all()  # one payment cannot outvote the watermark


def test_a_slice_of_the_stream_further_on_is_measured_against_its_own_payments() -> None:
    """Two consumers read every other batch: one's next batch starts days past its watermark."""
    clock = EventClock(None, "k", DAY)
    first = START + np.arange(0, DAY, 60, dtype=np.int64)
    assert not clock.too_far_ahead(first, np.ones(len(first), bool), first).any()
    further = START + 3 * DAY + np.arange(0, DAY, 60, dtype=np.int64)
    further[10] = 7_289_654_400
    assert np.flatnonzero(clock.too_far_ahead(further, np.ones(len(further), bool), further)).tolist() == [10]


def test_nothing_from_beyond_the_wall_clock() -> None:
    clock = EventClock(None, "k", DAY)
    ts = np.array([7_289_654_400], np.int64)
    assert clock.too_far_ahead(ts, np.ones(1, bool), ts).all()


def test_invalid_events_neither_count_nor_are_flagged() -> None:
    clock = EventClock(None, "k", DAY)
    ts = np.array([START, START + 50 * DAY, START + 1], np.int64)
    assert not clock.too_far_ahead(ts, np.array([True, False, True]), ts[[0, 2]]).any()


def test_validate_names_the_reason() -> None:
    clock = EventClock(None, "k", DAY)
    rows = [
        {"transaction_id": i, "tx_datetime": f"2018-04-0{1 + i}T10:00:00", "customer_id": 1, "terminal_id": 2,
         "tx_amount": 10.0}
        for i in range(5)
    ]  # fmt: skip
    rows.append({"kind": LABEL, "transaction_id": 99, "tx_datetime": "2200-12-31T00:00:00", "terminal_id": 2,
                 "tx_fraud": 1})  # fmt: skip
    checked = validate(RawBatch(pd.DataFrame(rows, dtype=object), "test"), clock)
    assert len(checked.transactions) == 5 and checked.labels.empty
    assert [d.reason for d in checked.dead] == ["tx_datetime is more than 1 day ahead of the stream's event time"]
