"""The scoring routes' own body checks: the fast path agrees with the documented schemas."""

from __future__ import annotations

from datetime import datetime

import pytest

from scoring.fastpath import BATCH, SCORE, ClientError, ParsedTransaction, explain_flag, transactions_from
from scoring.schemas import Transaction

GOOD = {"transaction_id": 1, "customer_id": 2, "terminal_id": 3, "tx_amount": 4.5, "tx_datetime": "2018-08-08T10:31:00"}


def test_a_well_formed_transaction_takes_the_fast_path() -> None:
    [tx] = transactions_from(SCORE, GOOD, 10)
    assert tx == ParsedTransaction(1, 2, 3, 4.5, datetime(2018, 8, 8, 10, 31))
    [tx] = transactions_from(SCORE, {**GOOD, "tx_amount": 4}, 10)
    assert tx.tx_amount == 4.0 and isinstance(tx.tx_amount, float)


def test_lax_inputs_are_judged_by_the_schema() -> None:
    [tx] = transactions_from(SCORE, {**GOOD, "customer_id": "2", "extra": True}, 10)
    assert isinstance(tx, Transaction) and tx.customer_id == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tx_amount": -1.0}, "tx_amount"),
        ({"tx_amount": "lots"}, "tx_amount"),
        ({"customer_id": -5}, "customer_id"),
        ({"terminal_id": 2**64}, "terminal_id"),
        ({"tx_datetime": "yesterday"}, "tx_datetime"),
        ({"transaction_id": None}, "transaction_id"),
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
