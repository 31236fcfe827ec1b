"""What a payments model is trained on and asks for, in order."""

from feast import FeatureService
from features import card_velocity, device_velocity, merchant_risk, payment_context

payments_v1 = FeatureService(
    name="payments_v1",
    features=[card_velocity, device_velocity, merchant_risk, payment_context],
    description="Card and device velocity, merchant chargeback rate, amount against the card's habit",
    tags={"vigil.default": "true"},
)

# Velocity alone, without the merchants' chargebacks: a model on it needs no labels online.
payments_velocity = FeatureService(
    name="payments_velocity",
    features=[card_velocity, device_velocity, payment_context[["amount_over_card_mean_7d"]]],
    description="Card and device velocity and the amount against the card's habit",
)
