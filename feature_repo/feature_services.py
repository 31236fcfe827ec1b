"""Feature services: what models ask for, by name and version."""

from feast import FeatureService
from features import transaction_features, transaction_features_v1

# Version 1: the 14 handbook features (serving adds tx_amount from the request).
fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[transaction_features],
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
