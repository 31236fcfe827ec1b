"""Feature views: per-entity histories in the online store, and the handbook features
computed from them as of the request's own time."""

from datetime import timedelta
from typing import Any

from data_sources import (
    customer_history_push,
    terminal_history_push,
    transaction_features_source,
    transaction_features_spark_source,
    transaction_request,
)
from entities import customer, terminal, transaction
from feast import FeatureView, Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float64, Int64

# A customer's transactions over the feature horizon (times, ids, amounts), kept by the flow.
customer_history = FeatureView(
    name="customer_history",
    entities=[customer],
    ttl=timedelta(0),
    schema=[
        Field(name="tx_ts_list", dtype=Array(Int64)),
        Field(name="tx_id_list", dtype=Array(Int64)),
        Field(name="tx_amount_list", dtype=Array(Float64)),
    ],
    source=customer_history_push,
    online=True,
)

# Labels that came back for a terminal's transactions over the horizon, kept by the flow.
terminal_history = FeatureView(
    name="terminal_history",
    entities=[terminal],
    ttl=timedelta(0),
    schema=[
        Field(name="label_tx_ts_list", dtype=Array(Int64)),
        Field(name="label_tx_id_list", dtype=Array(Int64)),
        Field(name="label_fraud_list", dtype=Array(Int64)),
    ],
    source=terminal_history_push,
    online=True,
)


# The 14 handbook features, in the handbook's order and types.
FRAUD_V1_SCHEMA = [
    Field(name="tx_during_weekend", dtype=Int64),
    Field(name="tx_during_night", dtype=Int64),
    Field(name="customer_id_nb_tx_1day_window", dtype=Float64),
    Field(name="customer_id_avg_amount_1day_window", dtype=Float64),
    Field(name="customer_id_nb_tx_7day_window", dtype=Float64),
    Field(name="customer_id_avg_amount_7day_window", dtype=Float64),
    Field(name="customer_id_nb_tx_30day_window", dtype=Float64),
    Field(name="customer_id_avg_amount_30day_window", dtype=Float64),
    Field(name="terminal_id_nb_tx_1day_window", dtype=Float64),
    Field(name="terminal_id_risk_1day_window", dtype=Float64),
    Field(name="terminal_id_nb_tx_7day_window", dtype=Float64),
    Field(name="terminal_id_risk_7day_window", dtype=Float64),
    Field(name="terminal_id_nb_tx_30day_window", dtype=Float64),
    Field(name="terminal_id_risk_30day_window", dtype=Float64),
]


# fraud_v2's additions: the amount against the customer's habit, and fraud streaks on the terminal.
FRAUD_V2_EXTRA_SCHEMA = [
    Field(name="amount_over_customer_median_30day", dtype=Float64),
    Field(name="customer_id_nb_high_amount_7day_window", dtype=Float64),
    Field(name="customer_id_nb_high_amount_14day_window", dtype=Float64),
    Field(name="customer_id_max_amount_over_median_7day_window", dtype=Float64),
    Field(name="terminal_id_fraud_streak", dtype=Float64),
    Field(name="terminal_id_fraud_streak_age_days", dtype=Float64),
    Field(name="terminal_id_last_fraud_age_days", dtype=Float64),
]


# fraud_v3's addition: how long the terminal has gone unobserved (days since its newest label).
FRAUD_V3_EXTRA_SCHEMA = [
    Field(name="terminal_id_label_age_days", dtype=Float64),
]


@on_demand_feature_view(
    sources=[customer_history, terminal_history, transaction_request],
    schema=[*FRAUD_V1_SCHEMA, *FRAUD_V2_EXTRA_SCHEMA, *FRAUD_V3_EXTRA_SCHEMA],
    mode="python",
)
def transaction_features(inputs: dict) -> dict:
    # Every feature of the requested transaction, exact as of its tx_datetime, from one
    # decoding of its histories; fraud_v1 serves a projection of it. The body delegates to
    # vigil.features: the code the flow, the backfill and scoring use.
    from vigil.features.feast_transform import transaction_features

    return transaction_features(inputs)


def _backfilled(name: str, schema: list[Field], source: Any = transaction_features_source) -> FeatureView:
    """An offline-only view on the backfilled table: every ingested transaction's features
    as of its own time, for point-in-time training sets (get_historical_features)."""
    return FeatureView(
        name=name,
        entities=[transaction],
        ttl=timedelta(0),
        schema=schema,
        source=source,
        online=False,
    )


# The same 14 features (plus the amount), computed by the backfill; then each later set's additions.
transaction_features_v1 = _backfilled(
    "transaction_features_v1", [Field(name="tx_amount", dtype=Float64), *FRAUD_V1_SCHEMA]
)
transaction_features_v2_offline = _backfilled("transaction_features_v2_offline", FRAUD_V2_EXTRA_SCHEMA)
transaction_features_v3_offline = _backfilled("transaction_features_v3_offline", FRAUD_V3_EXTRA_SCHEMA)

# Every training input in one view on the Spark source (Feast's Spark offline store).
transaction_features_spark = _backfilled(
    "transaction_features_spark",
    [Field(name="tx_amount", dtype=Float64), *FRAUD_V1_SCHEMA, *FRAUD_V2_EXTRA_SCHEMA, *FRAUD_V3_EXTRA_SCHEMA],
    transaction_features_spark_source,
)
