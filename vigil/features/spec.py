"""Names, windows and horizons of the handbook features: the single source of truth.

Everything that computes or stores a feature (the streaming flow, the batch backfill,
the request-time rollup, the Feast repo) reads its constants from here.
"""

from __future__ import annotations

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

# Feast object names (feature_repo/ and the online layout must agree on them).
FEAST_PROJECT = "vigil"
CUSTOMER_VIEW = "customer_history"
TERMINAL_VIEW = "terminal_history"
CUSTOMER_FIELDS: tuple[str, str, str] = ("tx_ts_list", "tx_id_list", "tx_amount_list")
TERMINAL_FIELDS: tuple[str, str, str] = ("label_tx_ts_list", "label_tx_id_list", "label_fraud_list")
FEATURE_SERVICE = "fraud_v1"
FEATURE_SERVICE_VERSION = 1
