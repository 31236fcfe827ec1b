"""Names, windows and horizons of the handbook features: the single source of truth.

Everything that computes or stores a feature (the streaming flow, the batch backfill,
the request-time rollup, the Feast repo) reads its constants from here.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_SECONDS = 86_400
WINDOW_DAYS: tuple[int, ...] = (1, 7, 30)
# Labels reach the terminal features one week late (handbook definition).
TERMINAL_DELAY_DAYS = 7
# How far back each entity's state reaches, relative to its newest fact: the longest
# window the features read, plus the one-week label delay. Customers: 30-day windows
# + 7 days. Terminals: windows reach back 30 + 7 days from t, + 7 days, because the
# newest label can be a week newer than the transaction being scored (labels that
# arrive late, or that a replay delivers at the end of its file).
CUSTOMER_HORIZON_SECONDS = (max(WINDOW_DAYS) + TERMINAL_DELAY_DAYS) * DAY_SECONDS
TERMINAL_HORIZON_SECONDS = (max(WINDOW_DAYS) + 2 * TERMINAL_DELAY_DAYS) * DAY_SECONDS
HORIZON_SECONDS = max(CUSTOMER_HORIZON_SECONDS, TERMINAL_HORIZON_SECONDS)
# How far ahead of the others one fact may be without evicting a fact a window still needs:
# histories keep their horizon before their newest fact, windows need 30 (+7) days of it.
HORIZON_SLACK_SECONDS = TERMINAL_DELAY_DAYS * DAY_SECONDS

# Calendar features.
WEEKEND = "tx_during_weekend"
NIGHT = "tx_during_night"
NIGHT_LAST_HOUR = 6  # hours 0..6 inclusive are "night"


def customer_count_name(days: int) -> str:
    return f"customer_id_nb_tx_{days}day_window"


def customer_avg_name(days: int) -> str:
    return f"customer_id_avg_amount_{days}day_window"


def terminal_count_name(days: int) -> str:
    return f"terminal_id_nb_tx_{days}day_window"


def terminal_risk_name(days: int) -> str:
    return f"terminal_id_risk_{days}day_window"


CUSTOMER_FEATURES: tuple[str, ...] = tuple(
    name for d in WINDOW_DAYS for name in (customer_count_name(d), customer_avg_name(d))
)
TERMINAL_FEATURES: tuple[str, ...] = tuple(
    name for d in WINDOW_DAYS for name in (terminal_count_name(d), terminal_risk_name(d))
)
# The 14 features in the handbook's column order.
FEATURE_NAMES: tuple[str, ...] = (WEEKEND, NIGHT, *CUSTOMER_FEATURES, *TERMINAL_FEATURES)
# The 15 model inputs: the features plus the amount itself.
MODEL_INPUTS: tuple[str, ...] = ("tx_amount", *FEATURE_NAMES)

# fraud_v2 adds what the 14 handbook features cannot say (vigil.features.windows.habits
# and .streaks define them). A customer's habit is the median of its amounts over the
# 30 days before the transaction; a compromised card repeats amounts far above it.
HIGH_AMOUNT_FACTOR = 3.0
HIGH_AMOUNT_DAYS: tuple[int, ...] = (7, 14)
HABIT_DAYS = 30
MAX_RATIO_DAYS = 7
AMOUNT_OVER_MEDIAN = "amount_over_customer_median_30day"
MAX_RATIO = "customer_id_max_amount_over_median_7day_window"


def customer_high_name(days: int) -> str:
    return f"customer_id_nb_high_amount_{days}day_window"


# A compromised terminal turns every transaction into fraud for weeks: the run of frauds
# at the end of its label window, how old that run is, and how old its newest fraud is.
FRAUD_STREAK = "terminal_id_fraud_streak"
STREAK_AGE = "terminal_id_fraud_streak_age_days"
LAST_FRAUD_AGE = "terminal_id_last_fraud_age_days"
HABIT_FEATURES: tuple[str, ...] = (AMOUNT_OVER_MEDIAN, *(customer_high_name(d) for d in HIGH_AMOUNT_DAYS), MAX_RATIO)
STREAK_FEATURES: tuple[str, ...] = (FRAUD_STREAK, STREAK_AGE, LAST_FRAUD_AGE)
V2_FEATURES: tuple[str, ...] = (*HABIT_FEATURES, *STREAK_FEATURES)

# fraud_v3 adds how long the terminal has gone unobserved: days from its newest label in
# the 30-day label window to t (the window's far end, delay + 30 days, when it holds none).
# A terminal compromised since its newest label is invisible to every other input, and
# the longer the gap, the likelier that is (a quiet terminal can hide a compromise for
# weeks). June validation of the default model: +0.0018 mean AUC at equal AP (README).
LABEL_AGE = "terminal_id_label_age_days"
NO_LABEL_AGE_DAYS = float(TERMINAL_DELAY_DAYS + max(WINDOW_DAYS))
V3_FEATURES: tuple[str, ...] = (LABEL_AGE,)

# Feast object names (feature_repo/ and the online layout must agree on them).
FEAST_PROJECT = "vigil"
CUSTOMER_VIEW = "customer_history"
TERMINAL_VIEW = "terminal_history"
CUSTOMER_FIELDS: tuple[str, str, str] = ("tx_ts_list", "tx_id_list", "tx_amount_list")
TERMINAL_FIELDS: tuple[str, str, str] = ("label_tx_ts_list", "label_tx_id_list", "label_fraud_list")


@dataclass(frozen=True)
class FeatureSet:
    """A feature service: what a model is trained on and asks for when it scores."""

    service: str
    version: int
    features: tuple[str, ...]
    training_service: str

    @property
    def model_inputs(self) -> tuple[str, ...]:
        return ("tx_amount", *self.features)


FRAUD_V1 = FeatureSet("fraud_v1", 1, FEATURE_NAMES, "fraud_v1_training")
FRAUD_V2 = FeatureSet("fraud_v2", 2, (*FEATURE_NAMES, *V2_FEATURES), "fraud_v2_training")
FRAUD_V3 = FeatureSet("fraud_v3", 3, (*FRAUD_V2.features, *V3_FEATURES), "fraud_v3_training")
FEATURE_SETS: dict[str, FeatureSet] = {s.service: s for s in (FRAUD_V1, FRAUD_V2, FRAUD_V3)}
# Each set's inputs begin with the ones of the set before, so one matrix of the newest
# set's inputs serves every model: a model takes the first len(its inputs) columns.
SERVED = FRAUD_V3
SERVED_INPUTS: tuple[str, ...] = SERVED.model_inputs
ALL_FEATURES: tuple[str, ...] = SERVED.features
# The handbook service (Feast's fraud_v1): what plain Feast clients and the parity checks ask for.
FEATURE_SERVICE = FRAUD_V1.service
