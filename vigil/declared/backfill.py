"""A declared repo's features for every event of a table, each as of its own time: the
events and their labels are the facts (`vigil.declared.compute`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vigil.declared.compute import ID, KEY, TS, FactTable, feature_names, features_of, nanoseconds
from vigil.declared.model import DeclaredFeatures


def _labelled(declared: DeclaredFeatures, events: pd.DataFrame, labels: pd.DataFrame | None) -> pd.DataFrame:
    """The labels (event id, time, keys, label): given, or the label column of `events`."""
    schema = declared.labels
    assert schema is not None
    if labels is None:
        if schema.label not in events.columns:
            raise ValueError(f"views on the labels need the label column {schema.label!r} or a labels table")
        return events[events[schema.label].notna()].rename(
            columns={declared.events.event_id: schema.event_id, declared.events.time: schema.time}
        )
    return labels


def fact_table(frame: pd.DataFrame, key: str, event_id: str, time: str, columns: list[str]) -> FactTable:
    table = {KEY: frame[key].to_numpy(), TS: nanoseconds(frame[time]), ID: frame[event_id].to_numpy(np.int64)}
    return table | {column: frame[column].to_numpy() for column in columns}


def compute_declared(
    declared: DeclaredFeatures,
    events: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    service: str | None = None,
    features: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The event id and the features of `service` (or `features`, or all) for each event."""
    schema = declared.events

    def load(on: str, key: str, columns: list[str]) -> FactTable:
        if on == "events":
            return fact_table(events, key, schema.event_id, schema.time, columns)
        assert declared.labels is not None
        table = _labelled(declared, events, labels)
        return fact_table(table, key, declared.labels.event_id, declared.labels.time, columns)

    return features_of(declared, events, load, feature_names(declared, service, features))
