"""The scoring routes' own body checks: the fast path agrees with the documented schemas."""

from __future__ import annotations

from datetime import datetime

import pytest

from scoring.fastpath import BATCH, SCORE, ClientError, ParsedTransaction, explain_flag, transactions_from

GOOD = {"transaction_id": 1, "customer_id": 2, "terminal_id": 3, "tx_amount": 4.5, "tx_datetime": "2018-08-08T10:31:00"}


def test_a_well_formed_transaction_takes_the_fast_path() -> None:
    [tx] = transactions_from(SCORE, GOOD, 10)
    assert tx == ParsedTransaction(1, 2, 3, 4.5, datetime(2018, 8, 8, 10, 31))
    [tx] = transactions_from(SCORE, {**GOOD, "tx_amount": 4}, 10)
    assert tx.tx_amount == 4.0 and isinstance(tx.tx_amount, float)


def test_unknown_fields_are_ignored() -> None:
    [tx] = transactions_from(SCORE, {**GOOD, "extra": True}, 10)
    assert tx.customer_id == 2


def test_zones_are_converted_to_utc_and_naive_means_utc() -> None:
    [naive] = transactions_from(SCORE, GOOD, 10)
    [zulu] = transactions_from(SCORE, {**GOOD, "tx_datetime": "2018-08-08T10:31:00Z"}, 10)
    [paris] = transactions_from(SCORE, {**GOOD, "tx_datetime": "2018-08-08T12:31:00+02:00"}, 10)
    [fine] = transactions_from(SCORE, {**GOOD, "tx_datetime": "2018-08-08T10:31:00.123456789"}, 10)
    assert naive.tx_datetime == zulu.tx_datetime == paris.tx_datetime == datetime(2018, 8, 8, 10, 31)
    assert fine.tx_datetime == datetime(2018, 8, 8, 10, 31, 0, 123456)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tx_amount": -1.0}, "tx_amount"),
        ({"tx_amount": "lots"}, "tx_amount"),
        ({"customer_id": -5}, "customer_id"),
        ({"terminal_id": 2**64}, "terminal_id"),
        ({"tx_datetime": "yesterday"}, "tx_datetime"),
        ({"transaction_id": None}, "transaction_id"),
        # Strict types: no booleans or strings for numbers, no strings for ids.
        ({"tx_amount": True}, "tx_amount"),
        ({"tx_amount": "4.5"}, "tx_amount"),
        ({"customer_id": "2"}, "customer_id"),
        ({"customer_id": True}, "customer_id"),
        ({"customer_id": 2.0}, "customer_id"),
        # Amounts a model cannot take finite (float32 ends near 3.4e38), or beyond the stated bound.
        ({"tx_amount": 1e308}, "tx_amount"),
        ({"tx_amount": 3.5e38}, "tx_amount"),
        ({"tx_amount": 1e9 + 1}, "tx_amount"),
        # One datetime format: no dates alone, week dates, epoch numbers; a stated range.
        ({"tx_datetime": "2018-08-08"}, "tx_datetime"),
        ({"tx_datetime": "2018-W32-3"}, "tx_datetime"),
        ({"tx_datetime": 1533724260}, "tx_datetime"),
        ({"tx_datetime": "2018-08-08 10:31:00"}, "tx_datetime"),
        ({"tx_datetime": "9741-01-01T00:00:00"}, "tx_datetime"),
        ({"tx_datetime": "2263-01-01T00:00:00"}, "tx_datetime"),
        ({"tx_datetime": "1969-12-31T23:59:59"}, "tx_datetime"),
        ({"tx_datetime": "2018-02-30T10:00:00"}, "tx_datetime"),
    ],
)
def test_bad_fields_are_a_422_naming_them(change: dict[str, object], field: str) -> None:
    with pytest.raises(ClientError) as raised:
        transactions_from(SCORE, {**GOOD, **change}, 10)
    assert raised.value.status == 422
    assert [e["loc"] for e in raised.value.body["detail"]] == [["body", field]]


def test_a_bad_row_in_a_batch_is_named_by_its_position() -> None:
    with pytest.raises(ClientError) as raised:
        transactions_from(BATCH, {"transactions": [GOOD, {**GOOD, "tx_amount": -2}]}, 10)
    assert raised.value.body["detail"][0]["loc"] == ["body", "transactions", 1, "tx_amount"]
    assert len(transactions_from(BATCH, {"transactions": [GOOD, GOOD]}, 10)) == 2


def test_a_refused_input_is_echoed_as_a_short_excerpt() -> None:
    with pytest.raises(ClientError) as raised:
        transactions_from(SCORE, {**GOOD, "tx_datetime": "x" * 100_000}, 10)
    echoed = raised.value.body["detail"][0]["input"]
    assert len(echoed) < 100


def test_an_oversized_batch_is_a_413() -> None:
    with pytest.raises(ClientError) as raised:
        transactions_from(BATCH, {"transactions": [GOOD] * 11}, 10)
    assert raised.value.status == 413


def test_explain_flag() -> None:
    assert explain_flag(b"") is False
    assert explain_flag(b"explain=true") is True
    assert explain_flag(b"explain=0") is False
    with pytest.raises(ClientError):
        explain_flag(b"explain=maybe")
