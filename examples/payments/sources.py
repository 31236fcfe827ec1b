"""The payments, their chargebacks, and the payment being scored."""

from pathlib import Path

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Float64, Int64, String, UnixTimestamp

_DATA = Path(__file__).resolve().parent / "data"

# Every field a payment carries.
payment = RequestSource(
    name="payment",
    schema=[
        Field(name="payment_id", dtype=Int64),
        Field(name="paid_at", dtype=UnixTimestamp),
        Field(name="card_id", dtype=String),
        Field(name="merchant_id", dtype=String),
        Field(name="device_id", dtype=String),
        Field(name="channel", dtype=String),
        Field(name="amount", dtype=Float64),
    ],
    tags={"vigil.role": "events", "vigil.batch": "payments"},  # POST /v1/score/batch {"payments": [...]}
)

payments = PushSource(
    name="payments",
    batch_source=FileSource(name="payments_log", path=str(_DATA / "payments"), timestamp_field="paid_at"),
    tags={"vigil.role": "events", "vigil.event_id": "payment_id"},
)

# A chargeback (is_fraud 1) or a payment confirmed genuine (0), days after the payment.
chargebacks = PushSource(
    name="chargebacks",
    batch_source=FileSource(name="chargebacks_log", path=str(_DATA / "chargebacks"), timestamp_field="paid_at"),
    tags={"vigil.role": "labels", "vigil.event_id": "payment_id", "vigil.label": "is_fraud"},
)
