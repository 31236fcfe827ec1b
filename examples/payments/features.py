"""Velocity per card and per device, the merchants a card pays, the merchants' fraud rate
from chargebacks, and the payment's amount against the card's habit."""

import warnings
from datetime import timedelta

from entities import card, device, merchant
from feast import Field, StreamFeatureView
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64
from sources import chargebacks, payment, payments

warnings.filterwarnings("ignore", message="Stream feature views are experimental")
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def _schema(aggregations: list[Aggregation]) -> list[Field]:
    return [Field(name=a.name, dtype=Float64) for a in aggregations]


_card = [
    Aggregation(column="amount", function="count", time_window=HOUR, name="card_payments_1h"),
    Aggregation(column="amount", function="count", time_window=DAY, name="card_payments_24h"),
    Aggregation(column="amount", function="sum", time_window=DAY, name="card_amount_24h"),
    Aggregation(column="amount", function="mean", time_window=7 * DAY, name="card_mean_amount_7d"),
    Aggregation(column="amount", function="max", time_window=7 * DAY, name="card_max_amount_7d"),
    Aggregation(column="merchant_id", function="count_distinct", time_window=DAY, name="card_merchants_24h"),
    Aggregation(column="device_id", function="count_distinct", time_window=7 * DAY, name="card_devices_7d"),
]
card_velocity = StreamFeatureView(
    name="card_velocity",
    source=payments,
    entities=[card],
    schema=_schema(_card),
    aggregations=_card,
    timestamp_field="paid_at",
)

_device = [
    Aggregation(column="amount", function="count", time_window=HOUR, name="device_payments_1h"),
    Aggregation(column="card_id", function="count_distinct", time_window=DAY, name="device_cards_24h"),
]
device_velocity = StreamFeatureView(
    name="device_velocity",
    source=payments,
    entities=[device],
    schema=_schema(_device),
    aggregations=_device,
    timestamp_field="paid_at",
)

# Chargebacks take up to three days: the merchant's labelled payments of the 30 days before.
_merchant = [
    Aggregation(column="is_fraud", function="mean", time_window=30 * DAY, name="merchant_fraud_rate_30d"),
    Aggregation(column="is_fraud", function="count", time_window=30 * DAY, name="merchant_labelled_30d"),
]
merchant_risk = StreamFeatureView(
    name="merchant_risk",
    source=chargebacks,
    entities=[merchant],
    schema=_schema(_merchant),
    aggregations=_merchant,
    timestamp_field="paid_at",
    tags={"vigil.delay": "3d"},
)


@on_demand_feature_view(
    sources=[card_velocity, payment],
    schema=[Field(name="amount_over_card_mean_7d", dtype=Float64), Field(name="in_app", dtype=Int64)],
    mode="python",
)
def payment_context(inputs: dict) -> dict:
    # The card's 7-day mean includes this payment, so it is never 0 for a positive amount.
    return {
        "amount_over_card_mean_7d": [
            amount / mean if mean > 0 else 1.0
            for amount, mean in zip(inputs["amount"], inputs["card_mean_amount_7d"], strict=True)
        ],
        "in_app": [int(channel == "app") for channel in inputs["channel"]],
    }
