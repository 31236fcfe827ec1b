"""The events (card payments), their labels, and the payment being scored."""

from pathlib import Path

from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Float64, Int64, UnixTimestamp

_DATA = Path(__file__).resolve().parent / "data"

# Every field a payment carries: what /v1/score takes and the stream's entries hold;
# /v1/score/batch takes a list of them as {"transactions": [...]}.
payment = RequestSource(
    name="payment",
    schema=[
        Field(name="transaction_id", dtype=Int64),
        Field(name="tx_datetime", dtype=UnixTimestamp),
        Field(name="customer_id", dtype=Int64),
        Field(name="terminal_id", dtype=Int64),
        # Far above any card payment, far below float32's range: a model's inputs stay finite.
        Field(name="tx_amount", dtype=Float64, tags={"vigil.min": "0", "vigil.max": "1e9"}),
    ],
    tags={"vigil.role": "events", "vigil.batch": "transactions"},
)

# The payments, as the stream delivers them; tx_datetime is each one's own time.
payments = PushSource(
    name="payments",
    batch_source=FileSource(name="payments_log", path=str(_DATA / "payments"), timestamp_field="tx_datetime"),
    tags={"vigil.role": "events", "vigil.event_id": "transaction_id"},
)

# A payment's label (tx_fraud: 0 or 1), stamped with the payment's own time.
labels = PushSource(
    name="labels",
    batch_source=FileSource(name="labels_log", path=str(_DATA / "labels"), timestamp_field="tx_datetime"),
    tags={"vigil.role": "labels", "vigil.event_id": "transaction_id", "vigil.label": "tx_fraud"},
)
