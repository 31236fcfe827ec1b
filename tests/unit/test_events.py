"""Validation: every bad record becomes a dead letter naming what is wrong."""

from __future__ import annotations

import pytest

from vigil.events import records_to_batch, validate

GOOD = {
    "transaction_id": 1,
    "tx_datetime": "2018-04-01T00:00:31",
    "customer_id": 5,
    "terminal_id": 9,
    "tx_amount": 10.5,
}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({**GOOD, "tx_datetime": "yesterday"}, "unparseable tx_datetime"),
        # pandas alone reads these two as the wall-clock time
        ({**GOOD, "tx_datetime": "now"}, "unparseable tx_datetime"),
        ({**GOOD, "tx_datetime": " Today"}, "unparseable tx_datetime"),
        ({**GOOD, "customer_id": "abc"}, "field customer_id is not an integer"),
        ({**GOOD, "transaction_id": 1.5}, "field transaction_id is not an integer"),
        ({**GOOD, "tx_amount": -3}, "tx_amount is negative"),
        ({**GOOD, "tx_amount": float("nan")}, "missing field tx_amount"),
        ({**GOOD, "tx_amount": float("inf")}, "tx_amount is not finite"),
        ({**GOOD, "tx_amount": "ten"}, "field tx_amount is not a number"),
        ({k: v for k, v in GOOD.items() if k != "terminal_id"}, "missing field terminal_id"),
        ({**GOOD, "kind": "refund"}, "unknown event kind (expected transaction or label)"),
        (
            {"kind": "label", "transaction_id": 1, "tx_datetime": "2018-04-01", "terminal_id": 9, "tx_fraud": 3},
            "tx_fraud must be 0 or 1",
        ),
        ({"kind": "label", "transaction_id": 1, "terminal_id": 9, "tx_fraud": 1}, "missing field tx_datetime"),
    ],
)
def test_bad_record_is_a_dead_letter_with_reason(record: dict[str, object], reason: str) -> None:
    result = validate(records_to_batch([GOOD, record], "test", ["ok", "bad"]))
    assert [d.reason for d in result.dead] == [reason]
    assert result.dead[0].token == "bad"
    assert result.transactions["token"].tolist() == ["ok"]


def test_unparseable_payloads_are_dead_letters() -> None:
    result = validate(records_to_batch([b"{not json", "[1, 2]", GOOD], "test"))
    assert sorted(d.reason for d in result.dead) == ["payload is not a JSON object", "payload is not valid JSON"]
    assert len(result.transactions) == 1


def test_types_are_normalised() -> None:
    label = {
        "kind": "label",
        "transaction_id": "7",
        "tx_datetime": "2018-04-02 10:00:00",
        "terminal_id": "9",
        "tx_fraud": "1",
    }
    result = validate(records_to_batch([{**GOOD, "customer_id": "5", "tx_amount": "10.5"}, label], "test"))
    assert result.transactions.iloc[0]["customer_id"] == 5
    assert result.transactions.iloc[0]["ts"] == 1522540831
    assert result.labels.iloc[0]["tx_fraud"] == 1 and result.labels.iloc[0]["transaction_id"] == 7
