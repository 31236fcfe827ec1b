"""A small declared repo (cards and merchants, string keys, every kind of declaration)
and events for it, shared by the declared-features tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# The repo's files; the mistake tests change one line of them at a time.
REPO = {
    "feature_store.yaml": "project: cards\nprovider: local\nregistry: data/registry.db\n",
    "sources.py": """
from feast import Field, FileSource, PushSource, RequestSource
from feast.types import Float64, Int64, String, UnixTimestamp

event = RequestSource(name="event", schema=[
    Field(name="id", dtype=Int64), Field(name="at", dtype=UnixTimestamp), Field(name="card", dtype=String),
    Field(name="merchant", dtype=String), Field(name="amount", dtype=Float64)],
    tags={"vigil.role": "events"})
events = PushSource(name="events", batch_source=FileSource(name="events_log", path="data/e", timestamp_field="at"),
    tags={"vigil.role": "events", "vigil.event_id": "id"})
labels = PushSource(name="labels", batch_source=FileSource(name="labels_log", path="data/l", timestamp_field="at"),
    tags={"vigil.role": "labels", "vigil.event_id": "id", "vigil.label": "fraud"})
""",
    "features.py": """
from datetime import timedelta
from feast import Entity, FeatureService, Field, StreamFeatureView, ValueType
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64
from sources import event, events, labels

card = Entity(name="card", join_keys=["card"], value_type=ValueType.STRING)
merchant = Entity(name="merchant", join_keys=["merchant"], value_type=ValueType.STRING)
spending = StreamFeatureView(name="spending", source=events, entities=[card], timestamp_field="at",
    schema=[Field(name="card_amount_1h", dtype=Float64), Field(name="card_merchants_1d", dtype=Float64)],
    aggregations=[Aggregation(column="amount", function="sum", time_window=timedelta(hours=1), name="card_amount_1h"),
        Aggregation(column="merchant", function="count_distinct", time_window=timedelta(days=1),
            name="card_merchants_1d")])
risk = StreamFeatureView(name="risk", source=labels, entities=[merchant], timestamp_field="at",
    schema=[Field(name="merchant_fraud_rate_7d", dtype=Float64)], tags={"vigil.delay": "2d"},
    aggregations=[Aggregation(column="fraud", function="mean", time_window=timedelta(days=7),
        name="merchant_fraud_rate_7d")])

@on_demand_feature_view(sources=[spending, event], schema=[Field(name="amount_share", dtype=Float64)], mode="python")
def shares(inputs: dict) -> dict:
    return {"amount_share": [a / t if t else 0.0 for a, t in zip(inputs["amount"], inputs["card_amount_1h"])]}

model_v1 = FeatureService(name="model_v1", features=[spending, risk, shares], tags={"vigil.default": "true"})
""",
}


def write_repo(root: Path, changes: dict[str, tuple[str, str]] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in REPO.items():
        change = (changes or {}).get(name)
        if change is not None:
            old, new = change
            assert old in text, old
            text = text.replace(old, new)
        (root / name).write_text(text)
    return root


def card_events(n: int, seed: int = 0, days: int = 10) -> pd.DataFrame:
    """`n` payments by 40 cards at 25 merchants over `days` days (ties included), most labelled."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, days * 86_400 // 60, n)) * 60  # whole minutes: some share a time
    return pd.DataFrame(
        {
            "id": rng.permutation(n).astype(np.int64) + 1,
            "at": pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(seconds, unit="s"),
            "card": [f"card-{i}" for i in rng.integers(0, 40, n)],
            "merchant": [f"m{i:03d}" for i in rng.integers(0, 25, n)],
            "amount": np.round(rng.gamma(2.0, 30.0, n), 2),
            "fraud": np.where(rng.random(n) < 0.8, (rng.random(n) < 0.1).astype(float), np.nan),
        }
    )
