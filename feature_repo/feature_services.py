"""Feature services: what models ask for, by name and version."""

from feast import FeatureService
from features import transaction_features

# Version 1: the 14 handbook features (serving adds tx_amount from the request).
fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[transaction_features],
    description="The Fraud Detection Handbook's 14 baseline features, exact as of the transaction's time",
    tags={"version": "1"},
)
