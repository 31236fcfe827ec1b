"""The handbook's 14 features: a customer's spending windows, a terminal's delayed fraud
rate, and the calendar of the payment itself."""

import warnings
from datetime import timedelta

from entities import customer, terminal
from feast import Field, StreamFeatureView
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64
from sources import labels, payment, payments

WINDOWS = (1, 7, 30)
warnings.filterwarnings("ignore", message="Stream feature views are experimental")


def _aggregations(column: str, count_name: str, mean_name: str) -> list[Aggregation]:
    return [
        Aggregation(column=column, function=function, time_window=timedelta(days=days), name=name.format(days))
        for days in WINDOWS
        for function, name in (("count", count_name), ("mean", mean_name))
    ]


def _schema(aggregations: list[Aggregation]) -> list[Field]:
    return [Field(name=a.name, dtype=Float64) for a in aggregations]


# Payments of the card in the last 1, 7 and 30 days (the one scored included): how many, and their mean amount.
_customer = _aggregations("tx_amount", "customer_id_nb_tx_{}day_window", "customer_id_avg_amount_{}day_window")
customer_spending = StreamFeatureView(
    name="customer_spending",
    source=payments,
    entities=[customer],
    schema=_schema(_customer),
    aggregations=_customer,
    timestamp_field="tx_datetime",
)

# Labels come back a week late: the terminal's labelled payments in the 1, 7 and 30 days
# before that week, how many and the share of frauds among them.
_terminal = _aggregations("tx_fraud", "terminal_id_nb_tx_{}day_window", "terminal_id_risk_{}day_window")
terminal_risk = StreamFeatureView(
    name="terminal_risk",
    source=labels,
    entities=[terminal],
    schema=_schema(_terminal),
    aggregations=_terminal,
    timestamp_field="tx_datetime",
    tags={"vigil.delay": "7d"},
)


@on_demand_feature_view(
    sources=[payment],
    schema=[Field(name="tx_during_weekend", dtype=Int64), Field(name="tx_during_night", dtype=Int64)],
    mode="python",
)
def payment_calendar(inputs: dict) -> dict:
    # Saturday or Sunday, and hours 0 to 6 (UTC), as the handbook defines them.
    times = inputs["tx_datetime"]
    return {
        "tx_during_weekend": [int(t.weekday() >= 5) for t in times],
        "tx_during_night": [int(t.hour <= 6) for t in times],
    }
