"""The window arithmetic: bounds, ties, quiet entities, and the request-time features (the
compiled kernel) equal to the backfill's (the vectorised windows) on every feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vigil.features import spec
from vigil.features.backfill import compute_features, epoch_seconds
from vigil.features.history import EntityHistory, merge
from vigil.features.rollup import TransactionFacts, features_as_of

DAY = spec.DAY_SECONDS
T0 = 1_525_132_800  # 2018-05-01 00:00:00, a Tuesday


def history(ts: list[int], ids: list[int], values: list[float]) -> EntityHistory:
    return merge(EntityHistory.empty(), np.array(ts, np.int64), np.array(ids, np.int64), np.array(values))


def _times(seconds: list[int]) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(seconds, np.int64), unit="s"))


def backfilled(
    customers: list[EntityHistory], terminals: list[EntityHistory], requests: list[tuple[int, int, float]]
) -> list[dict[str, float]]:
    """The backfill's features of each request (tx_id, ts, amount) as one more transaction of
    customer i at terminal i, with customer i's facts and terminal i's labels."""
    rows, labels = [], []
    for i, (customer, terminal, (tx_id, ts, amount)) in enumerate(zip(customers, terminals, requests, strict=True)):
        rows.append(
            pd.DataFrame(
                {
                    "transaction_id": [*customer.tx_id.tolist(), tx_id],
                    "tx_datetime": _times([*customer.ts.tolist(), ts]),
                    "customer_id": i,
                    "terminal_id": i,
                    "tx_amount": [*customer.value.tolist(), amount],
                }
            )
        )
        labels.append(
            pd.DataFrame(
                {
                    "transaction_id": terminal.tx_id,
                    "tx_datetime": _times(terminal.ts.tolist()),
                    "terminal_id": i,
                    "tx_fraud": terminal.value,
                }
            )
        )
    # A request's stored copy comes first, so the request's own values are the ones kept.
    out = compute_features(pd.concat(rows, ignore_index=True), pd.concat(labels, ignore_index=True))
    out = out.drop_duplicates("transaction_id").set_index("transaction_id")
    return [{k: float(v) for k, v in out.loc[tx_id].items()} for tx_id, _, _ in requests]


def one(customer: EntityHistory, terminal: EntityHistory, tx_id: int, ts: int, amount: float) -> dict[str, float]:
    """The request-time features of one transaction, checked against the backfill's."""
    out = features_as_of(
        [customer], [terminal], TransactionFacts(np.array([tx_id]), np.array([ts]), np.array([amount]))
    )
    served = {k: float(v[0]) for k, v in out.items()}
    assert served == pytest.approx(backfilled([customer], [terminal], [(tx_id, ts, amount)])[0], abs=1e-9)
    return served


def test_quiet_customer_sees_only_the_current_transaction() -> None:
    customer = history([T0 - 2 * DAY - 5, T0 - 2 * DAY], [1, 2], [10.0, 30.0])
    f = one(customer, EntityHistory.empty(), 3, T0, 50.0)
    assert f[spec.customer_count_name(1)] == 1
    assert f[spec.customer_avg_name(1)] == 50.0
    assert f[spec.customer_count_name(7)] == 3
    assert f[spec.customer_avg_name(7)] == pytest.approx(30.0)


def test_customer_window_is_open_at_start_closed_at_end() -> None:
    customer = history([T0 - DAY, T0 - DAY + 1], [1, 2], [10.0, 20.0])
    f = one(customer, EntityHistory.empty(), 3, T0, 30.0)
    assert f[spec.customer_count_name(1)] == 2  # t - 1 day exactly is outside, t - 1 day + 1 s inside


def test_same_second_sees_lower_ids_only() -> None:
    customer = history([T0, T0], [5, 9], [10.0, 20.0])
    assert one(customer, EntityHistory.empty(), 7, T0, 30.0)[spec.customer_count_name(1)] == 2  # 5 and itself
    assert one(customer, EntityHistory.empty(), 4, T0, 30.0)[spec.customer_count_name(1)] == 1


def test_already_ingested_transaction_counts_once_with_request_values() -> None:
    customer = history([T0 - 10, T0], [1, 2], [10.0, 20.0])
    f = one(customer, EntityHistory.empty(), 2, T0, 20.0)
    assert f[spec.customer_count_name(1)] == 2
    assert f[spec.customer_avg_name(1)] == 15.0


def test_a_copy_stored_at_another_time_is_dropped() -> None:
    customer = history([T0 - 3 * DAY, T0 - 10], [2, 1], [500.0, 10.0])  # id 2: the request, stored earlier
    f = one(customer, EntityHistory.empty(), 2, T0, 30.0)
    assert f[spec.customer_count_name(7)] == 2
    assert f[spec.customer_avg_name(7)] == 20.0


def test_a_batch_with_ties_and_copies_equals_the_backfill() -> None:
    """Many requests at once, each with same-second facts of lower and higher ids and, for
    some, their own stored copy, and labels of every kind, against the backfill row by row."""
    rng = np.random.default_rng(11)
    customers, terminals, requests = [], [], []
    for i in range(300):
        ts = sorted(rng.integers(T0 - 40 * DAY, T0, size=int(rng.integers(0, 30))).tolist())
        ts += [T0] * int(rng.integers(0, 4))
        tx_id = 10_000 * i + 5_000  # ids unique across customers, some below the request's, some above
        ids = (10_000 * i + rng.permutation(np.r_[0:5_000, 5_001:10_000])[: len(ts)]).tolist()
        if rng.random() < 0.5:  # the flow ingested the request already (sometimes at another time)
            ts.append(T0 if rng.random() < 0.7 else T0 - DAY)
            ids.append(tx_id)
        amounts = rng.uniform(1, 500, size=len(ts)).tolist()
        customers.append(history(ts, ids, amounts))
        requests.append((tx_id, T0, float(rng.uniform(1, 500))))
        # Labels of the terminal: runs of frauds at the window's end or not, some before its start.
        k = int(rng.integers(0, 25))
        labelled = sorted(rng.integers(T0 - 50 * DAY, T0 - 6 * DAY, size=k).tolist())
        frauds = (rng.random(k) < rng.choice([0.1, 0.9])).astype(float).tolist()
        terminals.append(history(labelled, (10_000_000 + 100 * i + np.arange(k)).tolist(), frauds))
    txs = TransactionFacts(*(np.array(column) for column in zip(*requests, strict=True)))
    batch = features_as_of(customers, terminals, txs)
    expected = backfilled(customers, terminals, requests)
    for i in range(len(requests)):
        assert {k: float(v[i]) for k, v in batch.items()} == pytest.approx(expected[i], abs=1e-9), i


def test_terminal_window_uses_labels_delayed_by_a_week() -> None:
    labels = history([T0 - 7 * DAY, T0 - 8 * DAY, T0 - 7 * DAY + 1, T0 - 37 * DAY], [1, 2, 3, 4], [1.0, 0.0, 1.0, 1.0])
    f = one(EntityHistory.empty(), labels, 9, T0, 1.0)
    assert f[spec.terminal_count_name(1)] == 1  # (t-8d, t-7d]: id 1 only; id 2 sits on the open bound
    assert f[spec.terminal_risk_name(1)] == 1.0
    assert f[spec.terminal_count_name(7)] == 2
    assert f[spec.terminal_risk_name(7)] == 0.5
    assert f[spec.terminal_count_name(30)] == 2  # t - 37 d is on the open bound


def test_empty_terminal_window_has_zero_risk() -> None:
    f = one(EntityHistory.empty(), EntityHistory.empty(), 1, T0, 1.0)
    assert f[spec.terminal_count_name(30)] == 0 and f[spec.terminal_risk_name(30)] == 0


def test_habit_is_the_median_of_earlier_amounts_in_30_days() -> None:
    # Earlier: 10, 20, 200 (within 30 days; 200 is 3x above the median 20), 1000 is 31 days old.
    customer = history(
        [T0 - 31 * DAY, T0 - 20 * DAY, T0 - 10 * DAY, T0 - 2 * DAY], [1, 2, 3, 4], [1000.0, 10.0, 20.0, 200.0]
    )
    f = one(customer, EntityHistory.empty(), 5, T0, 100.0)
    assert f[spec.AMOUNT_OVER_MEDIAN] == pytest.approx(100.0 / 21.0)
    assert f[spec.customer_high_name(7)] == 1 and f[spec.customer_high_name(14)] == 1
    assert f[spec.MAX_RATIO] == pytest.approx(200.0 / 21.0)
    # An even count takes the mean of the two middle amounts; no earlier amount: the own amount.
    even = history([T0 - 3 * DAY, T0 - 2 * DAY], [1, 2], [10.0, 30.0])
    assert one(even, EntityHistory.empty(), 3, T0, 21.0)[spec.AMOUNT_OVER_MEDIAN] == pytest.approx(1.0)
    first = one(EntityHistory.empty(), EntityHistory.empty(), 1, T0, 9.0)
    assert first[spec.AMOUNT_OVER_MEDIAN] == pytest.approx(0.9) and first[spec.MAX_RATIO] == 0.0


def test_habit_leaves_out_the_transaction_and_later_same_second_ids() -> None:
    customer = history([T0 - DAY, T0, T0], [1, 5, 9], [10.0, 50.0, 900.0])
    f = one(customer, EntityHistory.empty(), 7, T0, 40.0)  # earlier: 10 and 50 (id 5); 900 (id 9) is later
    assert f[spec.AMOUNT_OVER_MEDIAN] == pytest.approx(40.0 / 31.0)
    assert f[spec.MAX_RATIO] == pytest.approx(50.0 / 31.0)


def test_fraud_streak_counts_the_newest_labels_of_the_window() -> None:
    # Labels (t - delay is the window end): genuine at -20 d, frauds at -15, -12, -9 d, and a
    # fraud at -6 d that is not known yet (after t - 7 d).
    labels = history(
        [T0 - 20 * DAY, T0 - 15 * DAY, T0 - 12 * DAY, T0 - 9 * DAY, T0 - 6 * DAY],
        [1, 2, 3, 4, 5],
        [0.0, 1.0, 1.0, 1.0, 1.0],
    )
    f = one(EntityHistory.empty(), labels, 9, T0, 1.0)
    assert f[spec.FRAUD_STREAK] == 3
    assert f[spec.STREAK_AGE] == pytest.approx(15.0)
    assert f[spec.LAST_FRAUD_AGE] == pytest.approx(9.0)
    assert f[spec.LABEL_AGE] == pytest.approx(9.0)  # the newest known label (-6 d is not known yet)
    # A genuine label ends the streak; the newest fraud is still seen.
    broken = history([T0 - 12 * DAY, T0 - 8 * DAY], [1, 2], [1.0, 0.0])
    g = one(EntityHistory.empty(), broken, 9, T0, 1.0)
    assert g[spec.FRAUD_STREAK] == 0 and g[spec.STREAK_AGE] == 0.0 and g[spec.LAST_FRAUD_AGE] == pytest.approx(12.0)
    assert g[spec.LABEL_AGE] == pytest.approx(8.0)


def test_fraud_streak_stops_at_the_window_start() -> None:
    # Frauds at -40 d (outside (t - 37 d, t - 7 d]) and -30 d: the streak is 1, the age 30 days.
    labels = history([T0 - 40 * DAY, T0 - 30 * DAY], [1, 2], [1.0, 1.0])
    f = one(EntityHistory.empty(), labels, 9, T0, 1.0)
    assert f[spec.FRAUD_STREAK] == 1 and f[spec.STREAK_AGE] == pytest.approx(30.0)
    none = one(EntityHistory.empty(), history([T0 - 40 * DAY], [1], [1.0]), 9, T0, 1.0)
    assert none[spec.FRAUD_STREAK] == 0 and none[spec.LAST_FRAUD_AGE] == 0.0
    # The label age reads the same window: -30 d is the newest label; none in it -> its far end.
    assert f[spec.LABEL_AGE] == pytest.approx(30.0)
    assert none[spec.LABEL_AGE] == spec.NO_LABEL_AGE_DAYS == 37.0
    assert one(EntityHistory.empty(), EntityHistory.empty(), 9, T0, 1.0)[spec.LABEL_AGE] == 37.0


def test_calendar_flags() -> None:
    saturday_6_59 = T0 + 4 * DAY + 6 * 3600 + 59 * 60 + 59
    f = one(EntityHistory.empty(), EntityHistory.empty(), 1, saturday_6_59, 1.0)
    assert f[spec.WEEKEND] == 1 and f[spec.NIGHT] == 1
    f = one(EntityHistory.empty(), EntityHistory.empty(), 1, T0 + 7 * 3600, 1.0)
    assert f[spec.WEEKEND] == 0 and f[spec.NIGHT] == 0


def test_rollup_equals_backfill_on_a_simulated_world(small_world: pd.DataFrame) -> None:
    """Request-time rollup over all prior facts gives the backfill's numbers, row by row."""
    frame = small_world.iloc[: len(small_world) // 2]
    backfill = compute_features(frame).set_index("transaction_id")
    sample = frame.sample(400, random_state=3)
    ts_all = epoch_seconds(frame["tx_datetime"])
    customers, terminals = [], []
    for row in sample.itertuples():
        t = int(epoch_seconds(pd.Series([row.tx_datetime]))[0])
        mine = (frame["customer_id"].to_numpy() == row.customer_id) & (ts_all <= t)
        customers.append(
            history(ts_all[mine].tolist(), frame["transaction_id"][mine].tolist(), frame["tx_amount"][mine].tolist())
        )
        # Labels known at t: those of transactions at least 7 days old (delay = 7 days).
        known = (frame["terminal_id"].to_numpy() == row.terminal_id) & (ts_all <= t - 7 * DAY)
        terminals.append(
            history(
                ts_all[known].tolist(),
                frame["transaction_id"][known].tolist(),
                frame["tx_fraud"][known].astype(float).tolist(),
            )
        )
    txs = TransactionFacts(
        sample["transaction_id"].to_numpy(np.int64),
        epoch_seconds(sample["tx_datetime"]),
        sample["tx_amount"].to_numpy(np.float64),
    )
    rolled = features_as_of(customers, terminals, txs)
    expected = backfill.loc[sample["transaction_id"]]
    for name in spec.ALL_FEATURES:
        np.testing.assert_allclose(rolled[name], expected[name].to_numpy(np.float64), rtol=0, atol=1e-9, err_msg=name)


def test_same_second_ties_in_any_id_order_and_a_reingested_copy() -> None:
    """Same-second facts written in any id order, plus the request's own ingested copy."""
    customer = history([T0 - 5, T0, T0, T0], [1, 9, 2, 7], [10.0, 40.0, 20.0, 99.0])
    f = one(customer, EntityHistory.empty(), 7, T0, 30.0)
    assert f[spec.customer_count_name(1)] == 3  # ids 1, 2 and the request; 9 is later, 7 is the request itself
    assert f[spec.customer_avg_name(1)] == pytest.approx(20.0)


def test_backfill_keeps_row_order_and_counts_duplicates_once(small_world: pd.DataFrame) -> None:
    frame = small_world.iloc[:2000]
    shuffled = frame.sample(frac=1.0, random_state=1)
    doubled = pd.concat([shuffled, shuffled.iloc[:100]])
    plain = compute_features(shuffled)
    with_dupes = compute_features(doubled)
    assert list(plain["transaction_id"]) == list(shuffled["transaction_id"])
    pd.testing.assert_frame_equal(with_dupes.iloc[: len(plain)].reset_index(drop=True), plain)


@pytest.mark.parametrize("copies", [1, 5])
def test_batch_decode_equals_the_reference_decoder(copies: int) -> None:
    """The compiled decoder (serving's read path) reads what HistoryView.decode reads."""
    from vigil.online.columns import stacked_facts
    from vigil.online.layout import OnlineLayout

    rng = np.random.default_rng(3)
    layout = OnlineLayout.for_project("p")
    for view in (layout.customer, layout.terminal):
        histories = [
            history(
                sorted(rng.integers(T0 - 30 * DAY, T0, size=k).tolist()),
                list(range(k)),
                rng.integers(0, 2, size=k).astype(float).tolist(),
            )
            for k in (0, 1, 5, 40) * copies
        ]
        replies = [[view.encode(h)[f] for f in view.field_keys] if len(h) else [None, None, None] for h in histories]
        facts = stacked_facts(replies, view.value_is_float)
        reference = [view.decode(r) for r in replies]
        assert facts.entity.tolist() == [i for i, h in enumerate(reference) for _ in range(len(h))]
        assert facts.ts.tolist() == [t for h in reference for t in h.ts.tolist()]
        assert facts.tx_id.tolist() == [t for h in reference for t in h.tx_id.tolist()]
        assert facts.value.tolist() == [v for h in reference for v in h.value.tolist()]


def test_batch_decode_takes_any_int64_and_empty_lists() -> None:
    """Varints of 1 to 10 bytes (negative ids are 10), empty lists, missing fields."""
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    from vigil.online.columns import stacked_facts

    samples = [
        [0, 1, 127, 128, 16_383, 16_384, 2**35, 2**62, -1, -(2**63), 2**63 - 1],
        [],
        [5] * 300,
        list(range(-50, 50)),
    ]

    def payload(values: list[int]) -> bytes:
        return Value(int64_list_val=Int64List(val=values)).SerializeToString()

    replies: list[list[bytes | None]] = [[payload(list(range(len(v)))), payload(v), payload(v)] for v in samples]
    replies += [[None, None, None]] * 3 + replies
    facts = stacked_facts(replies, False)
    expected = samples + [[]] * 3 + samples
    assert np.bincount(facts.entity, minlength=len(expected)).tolist() == [len(v) for v in expected]
    assert facts.tx_id.tolist() == [x for v in expected for x in v]
    assert facts.value.tolist() == [float(x) for v in expected for x in v]


@pytest.mark.parametrize(
    "payload",
    [b"\x7a\x02\x0a\x00", b"\x72\x05\x0a\x03\x01", b"\x72\x03\x0a\x01\x80", b"\x72\x01\x12"],
    ids=["wrong type", "short list", "cut varint", "not packed"],
)
def test_batch_decode_refuses_a_corrupt_entry(payload: bytes) -> None:
    from vigil.online.columns import stacked_facts

    with pytest.raises(ValueError, match="corrupt history entry"):
        stacked_facts([[payload, payload, payload]], False)


def test_batch_decode_refuses_lists_of_unequal_length() -> None:
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    from vigil.online.columns import stacked_facts

    two, three = (Value(int64_list_val=Int64List(val=list(range(k)))).SerializeToString() for k in (2, 3))
    with pytest.raises(ValueError, match="unequal length"):
        stacked_facts([[two, three, two]], False)


def test_batch_decode_sorts_an_unsorted_history() -> None:
    from feast.protos.feast.types.Value_pb2 import Int64List, Value

    from vigil.online.columns import stacked_facts

    def payload(values: list[int]) -> bytes:
        return Value(int64_list_val=Int64List(val=values)).SerializeToString()

    facts = stacked_facts([[payload([30, 10, 20]), payload([3, 1, 2]), payload([1, 0, 0])]], False)
    assert facts.ts.tolist() == [10, 20, 30] and facts.tx_id.tolist() == [1, 2, 3] and facts.value.tolist() == [0, 0, 1]
