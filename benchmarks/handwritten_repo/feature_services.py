"""Feature services: what models ask for, by name and version."""

from feast import FeatureService
from features import (
    FRAUD_V1_SCHEMA,
    FRAUD_V2_EXTRA_SCHEMA,
    transaction_features,
    transaction_features_spark,
    transaction_features_v1,
    transaction_features_v2_offline,
    transaction_features_v3_offline,
)

# Version 1: the 14 handbook features (serving adds tx_amount from the request).
fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[transaction_features[[field.name for field in FRAUD_V1_SCHEMA]]],
    description="The Fraud Detection Handbook's 14 baseline features, exact as of the transaction's time",
    tags={"version": "1"},
)

# Version 1 for training: the same features, per transaction, from the offline store
# (point-in-time: each transaction's features as of its own time), plus tx_amount.
fraud_v1_training = FeatureService(
    name="fraud_v1_training",
    features=[transaction_features_v1],
    description="fraud_v1's features (and tx_amount) for point-in-time training sets",
    tags={"version": "1", "serves": "fraud_v1"},
)

# Version 2: version 1 plus the customer-habit and terminal-streak features. Version 1's
# features come first, in the same order.
fraud_v2 = FeatureService(
    name="fraud_v2",
    features=[transaction_features[[field.name for field in (*FRAUD_V1_SCHEMA, *FRAUD_V2_EXTRA_SCHEMA)]]],
    description="fraud_v1 plus the amount against the customer's habit and fraud streaks on the terminal",
    tags={"version": "2"},
)

fraud_v2_training = FeatureService(
    name="fraud_v2_training",
    features=[transaction_features_v1, transaction_features_v2_offline],
    description="fraud_v2's features (and tx_amount) for point-in-time training sets",
    tags={"version": "2", "serves": "fraud_v2"},
)

# Version 3: version 2 plus how long the terminal has gone unobserved; what the default
# XGBoost model is trained on.
fraud_v3 = FeatureService(
    name="fraud_v3",
    features=[transaction_features],
    description="fraud_v2 plus the days since the terminal's newest label",
    tags={"version": "3"},
)

fraud_v3_training = FeatureService(
    name="fraud_v3_training",
    features=[transaction_features_v1, transaction_features_v2_offline, transaction_features_v3_offline],
    description="fraud_v3's features (and tx_amount) for point-in-time training sets",
    tags={"version": "3", "serves": "fraud_v3"},
)

# fraud_v3_training on Feast's Spark offline store (`vigil train --engine spark`).
fraud_v3_training_spark = FeatureService(
    name="fraud_v3_training_spark",
    features=[transaction_features_spark],
    description="fraud_v3_training's features through Feast's Spark offline store",
    tags={"version": "3", "serves": "fraud_v3"},
)
