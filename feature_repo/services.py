"""What models are trained on and ask for, in order."""

from feast import FeatureService
from features import (
    amount_against_habit,
    customer_habits,
    customer_spending,
    payment_amount,
    payment_calendar,
    terminal_risk,
    terminal_streaks,
)

fraud_v1 = FeatureService(
    name="fraud_v1",
    features=[payment_amount, payment_calendar, customer_spending, terminal_risk],
    description="The payment's amount and the handbook's 14 features, exact as of each payment's own time",
    tags={"vigil.default": "true"},
)

_V2_HABITS = [
    "customer_id_nb_high_amount_7day_window",
    "customer_id_nb_high_amount_14day_window",
    "customer_id_max_amount_over_median_7day_window",
]
_V2_STREAKS = ["terminal_id_fraud_streak", "terminal_id_fraud_streak_age_days", "terminal_id_last_fraud_age_days"]

fraud_v2 = FeatureService(
    name="fraud_v2",
    features=[
        payment_amount,
        payment_calendar,
        customer_spending,
        terminal_risk,
        amount_against_habit,
        customer_habits[_V2_HABITS],
        terminal_streaks[_V2_STREAKS],
    ],
    description="fraud_v1 plus the amount against the customer's habit and fraud streaks on the terminal",
)

fraud_v3 = FeatureService(
    name="fraud_v3",
    features=[
        payment_amount,
        payment_calendar,
        customer_spending,
        terminal_risk,
        amount_against_habit,
        customer_habits[_V2_HABITS],
        terminal_streaks,
    ],
    description="fraud_v2 plus the days since the terminal's newest label",
)
