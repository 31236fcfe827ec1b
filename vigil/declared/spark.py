"""A declared repo's backfill on Spark: the same compiled definition and the same code as the
local backfill (`vigil.declared.compute`), run where the data is.

    events --groupBy(bucket of the key).applyInPandas--> one view kind's windows (events)
    events + labels --cogroup(bucket of the key).applyInPandas--> one view kind's windows (labels)
    join on the event id --mapInPandas--> the on-demand views (Feast's python mode, per chunk)

A bucket is `hash(key) % buckets` (Spark's Murmur3, strings and integers alike), so a call
holds many entities, each with all of its facts. The repo's own Python (on-demand functions,
window functions) travels to the workers by value: they need not have the repo on their path.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np
import pandas as pd

from vigil.declared.backfill import fact_table
from vigil.declared.compute import feature_names, request_lists, window_values
from vigil.declared.model import DeclaredFeatures, WindowAggregation

BUCKETS = 64
_SPARK_TYPES = {"integer": "long", "number": "double", "string": "string", "boolean": "boolean", "time": "timestamp"}


def _windows_schema(event_id: str, aggregations: list[WindowAggregation]) -> str:
    return ", ".join([f"`{event_id}` long", *(f"`{a.name}` double" for a in aggregations)])


def _group_windows(declared: DeclaredFeatures, aggregations: list[WindowAggregation]) -> Any:
    """The pandas function of one kind of facts: (queries[, labels]) -> event id + windows."""
    schema = declared.events
    bare = dataclasses.replace(declared, derived=(), services={})  # no repo code needed here

    def on_events(queries: pd.DataFrame) -> pd.DataFrame:
        def load(on: str, key: str, columns: list[str]) -> Any:
            return fact_table(queries, key, schema.event_id, schema.time, columns)

        values = window_values(bare, queries, load, aggregations)
        return pd.DataFrame({schema.event_id: queries[schema.event_id].to_numpy(np.int64), **values})

    def on_labels(queries: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
        assert bare.labels is not None
        label_schema = bare.labels

        def load(on: str, key: str, columns: list[str]) -> Any:
            return fact_table(labels, key, label_schema.event_id, label_schema.time, columns)

        values = window_values(bare, queries, load, aggregations)
        return pd.DataFrame({schema.event_id: queries[schema.event_id].to_numpy(np.int64), **values})

    return on_events if aggregations[0].on == "events" else on_labels


def _ship_repo_code(declared: DeclaredFeatures) -> None:
    """The modules of the repo's own code (on-demand views, window functions) are pickled by
    value: the workers lack the repo."""
    from pyspark import cloudpickle

    modules = {view.transform.__module__ for view in declared.derived}
    modules |= {a.custom.function.__module__ for a in declared.aggregations if a.custom is not None}
    for name in modules:
        module = sys.modules.get(name)
        if module is not None and not name.startswith(("vigil", "feast")):
            cloudpickle.register_pickle_by_value(module)


def compute_declared_spark(
    declared: DeclaredFeatures,
    events: Any,
    labels: Any | None = None,
    service: str | None = None,
    features: list[str] | None = None,
    buckets: int = BUCKETS,
) -> Any:
    """A Spark DataFrame of the event id and the features of `service` for each event of
    `events` (a Spark DataFrame of the events' fields; labels: the label column of `events`,
    or a DataFrame of labels)."""
    from pyspark.sql import functions as F

    schema = declared.events
    names = feature_names(declared, service, features)
    derived = [d for d in declared.derived if set(d.outputs) & set(names)]
    needed = set(names) | {i for d in derived for i in d.inputs}
    groups: dict[tuple[str, str], list[WindowAggregation]] = {}
    for a in declared.aggregations:
        if a.name in needed:
            groups.setdefault((a.on, a.key), []).append(a)
    if declared.labels is not None and labels is None:
        label_schema = declared.labels
        labels = events.where(F.col(label_schema.label).isNotNull()).select(
            F.col(schema.event_id).alias(label_schema.event_id),
            F.col(schema.time).alias(label_schema.time),
            *[F.col(k) for k in dict.fromkeys(a.key for a in declared.aggregations if a.on == "labels")],
            F.col(label_schema.label),
        )
        labels = labels.dropDuplicates([label_schema.event_id])
    table = events.select(schema.event_id)
    _ship_repo_code(declared)
    for (on, key), aggregations in groups.items():
        # Spark reads a pandas function's arity (a key first, or not): plain one- and two-frame
        # functions, the bucket column dropped in Spark.
        bucketed = events.withColumn("__bucket", F.abs(F.hash(key)) % buckets)
        function = _group_windows(declared, aggregations)
        out = _windows_schema(schema.event_id, aggregations)
        if on == "events":
            part = bucketed.groupBy("__bucket").applyInPandas(function, out)
        else:
            assert labels is not None  # a view on the labels compiles only with a labels source
            known = labels.withColumn("__bucket", F.abs(F.hash(key)) % buckets)
            part = bucketed.groupBy("__bucket").cogroup(known.groupBy("__bucket")).applyInPandas(function, out)
        table = table.join(part, schema.event_id)
    if derived:
        fields = [f for f in schema.fields if f != schema.event_id]
        table = table.join(events.select(schema.event_id, *fields), schema.event_id)
        bare = dataclasses.replace(declared, aggregations=(), services={})
        outputs = [o for d in derived for o in d.outputs]
        kept = [c for c in table.columns if c not in fields]

        def add_derived(chunks: Any) -> Any:
            for chunk in chunks:
                request = request_lists(chunk, bare)
                for view in derived:
                    inputs = {**{i: chunk[i].tolist() for i in view.inputs}, **(request if view.wants_request else {})}
                    result = view.transform(inputs)
                    for output in view.outputs:
                        chunk[output] = np.asarray(result[output], dtype=np.float64)
                yield chunk[[*kept, *outputs]]

        out_schema = ", ".join([f"`{schema.event_id}` long", *(f"`{c}` double" for c in kept[1:] + outputs)])
        table = table.mapInPandas(add_derived, out_schema)
    return table.select(schema.event_id, *names)
