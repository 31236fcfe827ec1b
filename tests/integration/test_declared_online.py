"""A declared repo's online store on the real Redis: facts recorded in any order, twice
or compacted, give every event the features the backfill gives it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from tests.declared_cards import card_events, write_repo
from vigil.declared import DeclaredFeatures, load_declared
from vigil.declared import online as declared_online
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.settings import Settings


@pytest.fixture
def cards(tmp_path: Path) -> DeclaredFeatures:
    return load_declared(write_repo(tmp_path / "cards"))


def largest_difference(ours: pd.DataFrame, theirs: pd.DataFrame) -> float:
    joined = ours.merge(theirs, on="id", suffixes=("", "_expected"), validate="one_to_one")
    assert len(joined) == len(ours) == len(theirs)
    names = [c for c in ours.columns if c != "id"]
    return max(float(np.abs(joined[n] - joined[f"{n}_expected"]).max()) for n in names)


def record(store: DeclaredOnlineStore, events: pd.DataFrame, batch: int, seed: int) -> None:
    """Events and labels in shuffled batches, one batch of each delivered twice."""
    shuffled = events.sample(frac=1.0, random_state=seed)
    labels = shuffled[shuffled["fraud"].notna()][["id", "at", "merchant", "fraud"]]
    for start in range(0, len(shuffled), batch):
        store.record_events(shuffled.iloc[start : start + batch])
        store.record_labels(labels.iloc[start : start + batch])
    store.record_events(shuffled.iloc[:batch])
    store.record_labels(labels.iloc[:batch])


def test_online_features_equal_the_backfill_for_every_event(
    settings: Settings, redis_client: redis.Redis, cards: DeclaredFeatures
) -> None:
    events = card_events(3_000, seed=1)
    store = DeclaredOnlineStore(redis_client, settings.key_prefix, cards)
    record(store, events, batch=250, seed=2)
    expected = compute_declared(cards, events)
    assert largest_difference(store.features(events), expected) <= 1e-9
    # Asked in another order, in small batches: the same values.
    shuffled = events.sample(frac=1.0, random_state=5)
    parts = [store.features(shuffled.iloc[i::7]) for i in range(7)]
    assert largest_difference(pd.concat(parts, ignore_index=True), expected) <= 1e-9
    # One at a time, as a request asks (every built-in window of an entity in one compiled
    # call): the values of the batch read, to the last bit.
    sample = events.sample(300, random_state=6)
    one_by_one = pd.concat([store.features(sample.iloc[[i]]) for i in range(len(sample))], ignore_index=True)
    assert largest_difference(one_by_one, store.features(sample)) == 0.0


def test_an_event_not_yet_recorded_counts_once_as_of_its_time(
    settings: Settings, redis_client: redis.Redis, cards: DeclaredFeatures
) -> None:
    events = card_events(1_500, seed=3)
    recorded, new = events.iloc[:-20], events.iloc[-20:]
    store = DeclaredOnlineStore(redis_client, settings.key_prefix, cards)
    record(store, recorded, batch=300, seed=4)
    # Labels of the new events are unknown when they are scored: their facts are events only.
    expected = compute_declared(cards, events, labels=recorded[recorded["fraud"].notna()]).iloc[-20:]
    assert largest_difference(store.features(new), expected) <= 1e-9
    assert np.all(store.features(new)["card_amount_1h"] >= new["amount"].to_numpy() - 1e-9)


def test_compacted_facts_keep_what_the_windows_of_recent_events_read(
    settings: Settings, redis_client: redis.Redis, cards: DeclaredFeatures, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(declared_online, "COMPACT_BYTES", 2_048)
    events = card_events(4_000, seed=6, days=40)
    store = DeclaredOnlineStore(redis_client, settings.key_prefix, cards)
    record(store, events, batch=200, seed=7)
    # The card strings lost their duplicates and the facts older than every window needs.
    newest = events["at"].max()
    card = events["card"].iloc[0]
    kept = np.frombuffer(redis_client.get(store.key("events", "card", card)) or b"", store.dtypes[("events", "card")])
    assert len(np.unique(kept["id"])) >= len(kept) - 2_048 // kept.itemsize
    assert len(kept) < (events["card"] == card).sum()
    recent = events[events["at"] > newest - pd.Timedelta(days=1)]
    expected = compute_declared(cards, events).set_index("id").loc[recent["id"]].reset_index()
    assert largest_difference(store.features(recent), expected) <= 1e-9
