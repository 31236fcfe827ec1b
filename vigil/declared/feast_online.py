"""Stock Feast's `get_online_features` on a declared repo, with the values `explain` returns.

Feast's online read (`OnlineStore.online_read`) is given entity keys only, never the time
of the event being scored, so no read of stored rows can answer "as of this event's own
time". Feast hands the whole request to the online store's `get_online_features`, though:
the entity rows, with the request fields a client passes beside the join keys (the event's
id, time and other fields, as the contract asks). Vigil's online store
(`vigil.online.feast_redis`) answers it here for a declared repo: the rows are typed as
the scoring service types events, and their features are computed from the entities'
facts in Redis by the same compiled code the service runs (`DeclaredOnlineStore.features`),
an event already recorded counting once.

The answer is Feast's own `OnlineResponse`: the join keys and the requested features,
named as Feast names them (`view__feature` with `full_feature_names=True`), each value
stamped with its event's time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from feast import FeatureService
from feast.online_response import OnlineResponse
from feast.protos.feast.serving.ServingService_pb2 import FieldStatus, GetOnlineFeaturesResponse
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from vigil.declared.events import check_records, plain_events
from vigil.declared.model import DeclaredFeatures
from vigil.declared.online import DeclaredOnlineStore

# Reads may ask about any time: the clock check that keeps a bad fact out of the store
# (`check_records`' `ahead_seconds`) does not apply to a question.
ANY_TIME_SECONDS = 100 * 365 * 86_400


def entity_records(entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Feast's entity rows (a list of dicts, or a dict of columns) as one dict per row, times
    as ISO 8601 (a naive datetime is UTC, as Feast reads it)."""
    if isinstance(entity_rows, Mapping):
        columns = {k: list(v) for k, v in entity_rows.items()}
        count = len(next(iter(columns.values()), []))
        rows: list[dict[str, Any]] = [{k: v[i] for k, v in columns.items()} for i in range(count)]
    else:
        rows = [dict(row) for row in entity_rows]
    for row in rows:
        for name, value in row.items():
            if isinstance(value, dt.datetime | pd.Timestamp):
                row[name] = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
    return rows


def typed_events(declared: DeclaredFeatures, records: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as the scoring service types events, or a ValueError naming each bad field."""
    plain = plain_events(declared, records, ANY_TIME_SECONDS)
    if plain is not None:
        return plain
    frame = pd.DataFrame.from_records(records, columns=list(declared.events.fields)).astype(object)
    frame = frame.where(frame.notna(), None)
    checked = check_records(declared, frame, "feast", list(range(len(frame))), ANY_TIME_SECONDS)
    if checked.dead:
        why = "; ".join(f"entity row {dead.token}: {dead.reason}" for dead in checked.dead)
        raise ValueError(f"entity rows of project {declared.project!r} need every event field: {why}")
    return checked.events


def requested(features: list[str] | FeatureService, full_feature_names: bool) -> list[tuple[str, str]]:
    """(the declared feature, the name Feast answers it under) for each requested feature."""
    if isinstance(features, FeatureService):
        return [
            (f.name, f"{p.name_to_use()}__{f.name}" if full_feature_names else f.name)
            for p in features.feature_view_projections
            for f in p.features
        ]
    pairs = []
    for ref in features:
        view, _, name = ref.rpartition(":")
        pairs.append((name, f"{view.split('@')[0]}__{name}" if full_feature_names else name))
    return pairs


def online_response(
    store: DeclaredOnlineStore,
    features: list[str] | FeatureService,
    entity_rows: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    full_feature_names: bool = False,
) -> OnlineResponse:
    """Feast's answer to `get_online_features` for a declared repo (see the module's text)."""
    declared = store.declared
    records = entity_records(entity_rows)
    events = typed_events(declared, records)
    wanted = requested(features, full_feature_names)
    unknown = sorted({name for name, _ in wanted} - set(declared.feature_names))
    if unknown:
        raise ValueError(f"project {declared.project!r} declares no feature {', '.join(map(repr, unknown))}")
    values = store.features(events, features=list(dict.fromkeys(name for name, _ in wanted)))
    stamps = []
    for moment in pd.DatetimeIndex(events[declared.events.time]).to_pydatetime():
        stamp = Timestamp()
        stamp.FromDatetime(moment)
        stamps.append(stamp)
    response = GetOnlineFeaturesResponse(results=[])
    join_keys = [name for name in (records[0] if records else {}) if name in set(declared.entities.values())]
    columns: list[tuple[str, list[Any], ValueType]] = [
        (key, events[key].tolist(), _value_type(declared.events.fields[key])) for key in join_keys
    ]
    columns += [(shown, values[name].tolist(), ValueType.DOUBLE) for name, shown in wanted]
    for shown, column, kind in columns:
        response.metadata.feature_names.val.append(shown)
        response.results.append(
            GetOnlineFeaturesResponse.FeatureVector(
                values=python_values_to_proto_values(column, kind),
                statuses=[FieldStatus.PRESENT] * len(column),
                event_timestamps=stamps,
            )
        )
    return OnlineResponse(response, feature_types={shown: kind for shown, _, kind in columns})


def _value_type(kind: str) -> ValueType:
    return ValueType.INT64 if kind == "integer" else ValueType.STRING
