"""The handbook's 14 features (a customer's spending windows, a terminal's delayed fraud
rate, and the calendar of the payment itself), and what fraud_v2 and fraud_v3 add: the
amount against the customer's habit, and the terminal's fraud streaks and label age,
through the repo's own window functions (window_functions.py)."""

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


# The amount as the payment gives it: a model input of its own, under its own name.
@on_demand_feature_view(sources=[payment], schema=[Field(name="tx_amount", dtype=Float64)], mode="python")
def payment_amount(inputs: dict) -> dict:
    return {"tx_amount": list(inputs["tx_amount"])}


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


def _over_30_days(column: str, function: str, name: str) -> Aggregation:
    return Aggregation(column=column, function=function, time_window=timedelta(days=30), name=name)


# The card's habit: the median of its earlier payments over 30 days, how many of them in the
# last 7 and 14 days were above 3x that, and its largest of the last 7 days against it.
_habits = [
    _over_30_days("tx_amount", "habit_median", "customer_id_median_amount_30day"),
    _over_30_days("tx_amount", "high_amounts_7d", "customer_id_nb_high_amount_7day_window"),
    _over_30_days("tx_amount", "high_amounts_14d", "customer_id_nb_high_amount_14day_window"),
    _over_30_days("tx_amount", "max_over_habit_7d", "customer_id_max_amount_over_median_7day_window"),
]
customer_habits = StreamFeatureView(
    name="customer_habits",
    source=payments,
    entities=[customer],
    schema=_schema(_habits),
    aggregations=_habits,
    timestamp_field="tx_datetime",
)

# A compromised terminal turns every payment into fraud for weeks: over the 30 days of labels
# before the label week, the run of frauds at the end, its age, the newest fraud's age, and
# how long the terminal has gone without any label.
_streaks = [
    _over_30_days("tx_fraud", "fraud_streak", "terminal_id_fraud_streak"),
    _over_30_days("tx_fraud", "fraud_streak_age_days", "terminal_id_fraud_streak_age_days"),
    _over_30_days("tx_fraud", "last_fraud_age_days", "terminal_id_last_fraud_age_days"),
    _over_30_days("tx_fraud", "label_age_days", "terminal_id_label_age_days"),
]
terminal_streaks = StreamFeatureView(
    name="terminal_streaks",
    source=labels,
    entities=[terminal],
    schema=_schema(_streaks),
    aggregations=_streaks,
    timestamp_field="tx_datetime",
    tags={"vigil.delay": "7d"},
)


@on_demand_feature_view(
    sources=[customer_habits[["customer_id_median_amount_30day"]], payment],
    schema=[Field(name="amount_over_customer_median_30day", dtype=Float64)],
    mode="python",
)
def amount_against_habit(inputs: dict) -> dict:
    amounts, medians = inputs["tx_amount"], inputs["customer_id_median_amount_30day"]
    return {"amount_over_customer_median_30day": [a / (m + 1.0) for a, m in zip(amounts, medians, strict=True)]}
