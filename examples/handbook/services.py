"""What models are trained on and ask for, in order."""

from feast import FeatureService
from features import customer_spending, payment_calendar, terminal_risk

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[payment_calendar, customer_spending, terminal_risk],
    description="The Fraud Detection Handbook's 14 features, exact as of each payment's own time",
    tags={"vigil.default": "true"},
)
