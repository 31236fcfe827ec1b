"""From a Feast repo's objects to `DeclaredFeatures`, or every mistake that stops it.

Each mistake names the object, the field and why, so that a data scientist can mend the
repo without reading Vigil's code. Feast itself checks what its constructors check (a
stream view's aggregations need a `timestamp_field`, say); what Feast registers without
computing (aggregations, tags) is checked here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

from vigil.declared.model import (
    FUNCTIONS,
    DeclaredFeatures,
    DerivedView,
    EventSchema,
    Kind,
    LabelSchema,
    Service,
    WindowAggregation,
    WindowFunction,
)

ROLE, EVENT_ID, LABEL, DELAY, DEFAULT = "vigil.role", "vigil.event_id", "vigil.label", "vigil.delay", "vigil.default"
BATCH = "vigil.batch"
BOUNDS = ("vigil.min", "vigil.max")
ROLES = ("events", "labels")
_KINDS: dict[str, Kind] = {
    "INT64": "integer",
    "INT32": "integer",
    "FLOAT64": "number",
    "FLOAT32": "number",
    "STRING": "string",
    "BOOL": "boolean",
    "UNIX_TIMESTAMP": "time",
}
_KEY_KINDS = ("integer", "string")
_DELAY = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RepoMistakes(ValueError):
    """A repo that cannot be compiled: one line per mistake."""

    def __init__(self, repo: Path | str, mistakes: list[str]) -> None:
        self.repo, self.mistakes = repo, mistakes
        lines = "\n".join(f"  - {m}" for m in mistakes)
        super().__init__(f"the feature repo {repo} cannot be compiled:\n{lines}")


def parse_delay(text: str) -> int | None:
    """Seconds of a `vigil.delay` tag ("7d", "36h", "0s"), or None when malformed."""
    match = _DELAY.match(text.strip())
    return None if match is None else int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _kind(dtype: Any) -> Kind | None:
    return _KINDS.get(getattr(dtype, "name", ""))


def window_function_mistake(function: WindowFunction) -> str | None:
    """Why a repo's window function cannot run, tried on an empty window and on one fact."""
    import numpy as np

    empty_f, empty_i = np.zeros(0), np.zeros(0, np.int64)
    one_f, one_i = np.ones(1), np.array([1_500_000_000 * 10**9], np.int64)
    for what, args in (
        ("an empty window", (empty_f, empty_i, empty_i)),
        ("a window of one fact", (one_f, one_i, one_i)),
    ):
        try:
            value = function.function(*args, int(one_i[0]), 1)
            float(value)
        except Exception as error:
            return f"fails on {what}: {type(error).__name__}: {error}"
    return None


class _Compiler:
    def __init__(self, contents: Any, project: str, functions: dict[str, WindowFunction] | None = None) -> None:
        self.contents, self.project = contents, project
        self.functions = functions or {}
        self.mistakes: list[str] = []
        for name, function in self.functions.items():
            if name in FUNCTIONS:
                self.wrong(f"window function {name!r}", "name", f"{name!r} is one of Feast's own functions")
            elif (why := window_function_mistake(function)) is not None:
                self.wrong(f"window function {name!r}", "code", why)

    def wrong(self, what: str, field: str, why: str) -> None:
        self.mistakes.append(f"{what}, {field}: {why}")

    def tagged(self, objects: Iterable[Any], role: str) -> list[Any]:
        return [o for o in objects if (o.tags or {}).get(ROLE) == role]

    def compile(self) -> DeclaredFeatures | None:
        from feast import PushSource, RequestSource

        sources = list(self.contents.data_sources)
        for source in sources:
            role = (source.tags or {}).get(ROLE)
            if role is not None and role not in ROLES:
                self.wrong(f"data source {source.name!r}", f"tag {ROLE}", f"{role!r} is not one of {', '.join(ROLES)}")
        requests = self.tagged([s for s in sources if isinstance(s, RequestSource)], "events")
        pushes = [s for s in sources if isinstance(s, PushSource)]
        events = self.event_schema(requests, self.tagged(pushes, "events"))
        if events is None:
            return None
        labels = self.label_schema(events, self.tagged(pushes, "labels"))
        entities = self.entities(events)
        roles = {s.name: (s.tags or {}).get(ROLE) for s in pushes}
        views = self.contents.stream_feature_views
        aggregations = [a for view in views for a in self.view(view, events, labels, entities, roles)]
        derived = [d for odfv in self.contents.on_demand_feature_views if (d := self.derived(odfv, events)) is not None]
        self.unique_names(aggregations, derived)
        known = {a.name for a in aggregations} | {o for d in derived for o in d.outputs}
        services = self.services(known)
        if self.mistakes:
            return None
        return DeclaredFeatures(self.project, events, labels, entities, tuple(aggregations), tuple(derived), services)

    def event_schema(self, requests: list[Any], pushes: list[Any]) -> EventSchema | None:
        if len(requests) != 1:
            found = ", ".join(repr(r.name) for r in requests) or "none"
            self.wrong("the repo", f"RequestSource tagged {ROLE}=events", f"exactly one is needed, found {found}")
            return None
        request = requests[0]
        what = f"request source {request.name!r}"
        fields: dict[str, Kind] = {}
        for f in request.schema:
            kind = _kind(f.dtype)
            if kind is None:
                why = f"type {f.dtype} is not one of Int64, Float64, String, Bool, UnixTimestamp"
                self.wrong(what, f"field {f.name!r}", why)
            else:
                fields[f.name] = kind
        if len(pushes) != 1:
            found = ", ".join(repr(p.name) for p in pushes) or "none"
            self.wrong("the repo", f"PushSource tagged {ROLE}=events", f"exactly one is needed, found {found}")
            return None
        push = pushes[0]
        event_id = self.column_tag(push, EVENT_ID, fields)
        time = self.time_field(push, fields)
        batch = (request.tags or {}).get(BATCH, "events")
        if not batch.isidentifier():
            self.wrong(what, f"tag {BATCH}", f"{batch!r} is not a name (letters, digits and underscores)")
            return None
        if event_id is None or time is None:
            return None
        return EventSchema(request.name, fields, event_id, time, batch, self.bounds(what, request.schema, fields))

    def bounds(self, what: str, schema: list[Any], fields: dict[str, Kind]) -> dict[str, tuple[float, float]]:
        """The bounds of number and integer fields (their tags vigil.min and vigil.max)."""
        bounds = {}
        for f in schema:
            tags = {tag: (f.tags or {}).get(tag) for tag in BOUNDS}
            if all(v is None for v in tags.values()):
                continue
            if fields.get(f.name) not in ("number", "integer"):
                self.wrong(what, f"field {f.name!r}", f"tags {' and '.join(BOUNDS)} bound a number or an integer")
                continue
            limits = []
            for tag, default in zip(BOUNDS, (-math.inf, math.inf), strict=True):
                text = tags[tag]
                try:
                    limits.append(default if text is None else float(text))
                except ValueError:
                    self.wrong(what, f"field {f.name!r}, tag {tag}", f"{tags[tag]!r} is not a number")
            if len(limits) == 2 and not limits[0] <= limits[1]:
                self.wrong(what, f"field {f.name!r}", f"vigil.min {limits[0]:g} is above vigil.max {limits[1]:g}")
            elif len(limits) == 2:
                bounds[f.name] = (limits[0], limits[1])
        return bounds

    def column_tag(self, source: Any, tag: str, fields: dict[str, Kind]) -> str | None:
        column = (source.tags or {}).get(tag)
        what = f"push source {source.name!r}"
        if not column:
            self.wrong(what, f"tag {tag}", "missing: it names a field of the events")
            return None
        if column not in fields and tag != LABEL:
            self.wrong(what, f"tag {tag}", f"{column!r} is not a field of the events ({', '.join(fields)})")
            return None
        if tag == EVENT_ID and fields[column] != "integer":
            # The event log, the prediction log and the facts' order key it as an int64.
            self.wrong(what, f"tag {tag}", f"{column!r} is a {fields[column]} field: an event id is an Int64")
            return None
        return str(column)

    def time_field(self, source: Any, fields: dict[str, Kind]) -> str | None:
        what = f"push source {source.name!r}"
        batch = source.batch_source
        time = getattr(batch, "timestamp_field", "") if batch is not None else ""
        if not time:
            self.wrong(what, "batch_source.timestamp_field", "missing: it names the events' time field")
            return None
        if fields.get(time) != "time":
            self.wrong(what, "batch_source.timestamp_field", f"{time!r} is not a UnixTimestamp field of the events")
            return None
        return str(time)

    def label_schema(self, events: EventSchema, pushes: list[Any]) -> LabelSchema | None:
        if not pushes:
            return None
        if len(pushes) > 1:
            names = ", ".join(repr(p.name) for p in pushes)
            self.wrong("the repo", f"PushSource tagged {ROLE}=labels", f"at most one, found {names}")
            return None
        push = pushes[0]
        event_id = self.column_tag(push, EVENT_ID, events.fields)
        label = self.column_tag(push, LABEL, events.fields)
        time = self.time_field(push, events.fields)
        if label is not None and label in events.fields:
            self.wrong(f"push source {push.name!r}", f"tag {LABEL}", f"{label!r} is already a field of the events")
            return None
        if event_id is None or label is None or time is None:
            return None
        return LabelSchema(push.name, event_id, time, label)

    def entities(self, events: EventSchema) -> dict[str, str]:
        keys: dict[str, str] = {}
        from feast.feature_view import DUMMY_ENTITY_NAME

        for entity in self.contents.entities:
            if entity.name == DUMMY_ENTITY_NAME:  # Feast's own, for entityless views
                continue
            what = f"entity {entity.name!r}"
            key = entity.join_key  # Feast takes one join key per entity
            if events.fields.get(key) not in _KEY_KINDS:
                why = "not a field of the events" if key not in events.fields else "not Int64 or String"
                self.wrong(what, "join_keys", f"{key!r} is {why}")
                continue
            keys[entity.name] = key
        return keys

    def view(
        self,
        view: Any,
        events: EventSchema,
        labels: LabelSchema | None,
        entities: dict[str, str],
        roles: dict[str, str | None],
    ) -> list[WindowAggregation]:
        what = f"stream feature view {view.name!r}"
        source = view.stream_source.name if view.stream_source is not None else None
        on = cast("Literal['events', 'labels']", roles.get(source or ""))
        if on not in ROLES:
            self.wrong(what, "source", f"{source!r} is not the push source tagged {ROLE}=events or {ROLE}=labels")
            return []
        if on == "labels" and labels is None:
            self.wrong(what, "source", "the labels source is not declared")
            return []
        if len(view.entities) != 1:
            self.wrong(what, "entities", f"exactly one entity is needed, found {len(view.entities)}")
            return []
        entity = view.entities[0]
        if entity not in entities:
            self.wrong(what, "entities", f"{entity!r} is not a usable entity of the repo")
            return []
        delay_tag = (view.tags or {}).get(DELAY, "0s")
        delay = parse_delay(delay_tag)
        if delay is None:
            self.wrong(what, f"tag {DELAY}", f"{delay_tag!r} is not an integer followed by s, m, h or d")
            return []
        if delay and on == "events":
            self.wrong(what, f"tag {DELAY}", "a delay applies to views on the labels source")
            return []
        if not view.aggregations:
            self.wrong(what, "aggregations", "none declared")
        # A label carries the event's id, time and keys, and the label: views on the labels
        # aggregate the label column.
        columns: dict[str, Kind] = dict(events.fields) if on == "events" else {labels.label: "integer"}  # type: ignore[union-attr]
        declared = {f.name for f in view.features}
        key = entities[entity]
        out = []
        for aggregation in view.aggregations:
            name = aggregation.name or aggregation.resolved_name(aggregation.time_window)
            why = self.aggregation_mistake(aggregation, name, columns, declared, on)
            if why is not None:
                self.wrong(f"{what}, aggregation {name!r}", *why)
                continue
            seconds = int(aggregation.time_window.total_seconds())
            custom = self.functions.get(aggregation.function)
            out.append(
                WindowAggregation(
                    name, view.name, entity, key, on, aggregation.column, aggregation.function, seconds, delay, custom
                )
            )
        return out

    def aggregation_mistake(
        self, aggregation: Any, name: str, columns: dict[str, Kind], declared: set[str], on: str
    ) -> tuple[str, str] | None:
        """(field, why) of what is wrong with one aggregation, or None."""
        window = aggregation.time_window.total_seconds() if aggregation.time_window is not None else 0
        if aggregation.function not in FUNCTIONS and aggregation.function not in self.functions:
            own = ", ".join(sorted(self.functions)) or "none"
            why = (
                f"{aggregation.function!r} is not one of {', '.join(FUNCTIONS)} or the repo's window functions ({own})"
            )
            return "function", why
        if aggregation.column not in columns:
            return "column", f"{aggregation.column!r} is not a field of the {on}"
        numeric = columns[aggregation.column] in ("integer", "number", "boolean")
        if not numeric and aggregation.function not in ("count", "count_distinct"):
            return "column", f"{aggregation.function} needs a numeric column"
        if window <= 0 or window != int(window):
            return "time_window", "a whole, positive number of seconds is needed"
        if name not in declared:
            return "schema", f"{name!r} is not in the view's schema (as a Float64 field)"
        return None

    def derived(self, odfv: Any, events: EventSchema) -> DerivedView | None:
        what = f"on-demand feature view {odfv.name!r}"
        mode = getattr(odfv.mode, "value", odfv.mode)
        if str(mode) != "python":
            self.wrong(what, "mode", f"{mode!r}: Vigil runs python mode (a dict of lists in and out)")
            return None
        requests = list(odfv.source_request_sources.values())
        if any(r.name != events.source for r in requests):
            self.wrong(what, "sources", f"request sources other than {events.source!r} are not events")
            return None
        inputs = tuple(f.name for p in odfv.source_feature_view_projections.values() for f in p.features)
        transform = odfv.feature_transformation.udf
        return DerivedView(odfv.name, inputs, tuple(f.name for f in odfv.features), transform, bool(requests))

    def unique_names(self, aggregations: list[WindowAggregation], derived: list[DerivedView]) -> None:
        seen: dict[str, str] = {}
        owners = [(a.name, f"stream feature view {a.view!r}") for a in aggregations]
        owners += [(o, f"on-demand feature view {d.name!r}") for d in derived for o in d.outputs]
        for name, owner in owners:
            if name in seen:
                self.wrong(owner, f"feature {name!r}", f"also declared by {seen[name]}: feature names are unique")
            seen.setdefault(name, owner)

    def services(self, known: set[str]) -> dict[str, Service]:
        services: dict[str, Service] = {}
        for service in self.contents.feature_services:
            what = f"feature service {service.name!r}"
            tag = (service.tags or {}).get(DEFAULT, "false")
            if tag not in ("true", "false"):
                self.wrong(what, f"tag {DEFAULT}", f"{tag!r} is not true or false")
            names = tuple(f.name for p in service.feature_view_projections for f in p.features)
            missing = [n for n in names if n not in known]
            if missing:
                self.wrong(what, "features", f"{', '.join(missing)}: not computed by a stream or on-demand view")
            services[service.name] = Service(service.name, names, tag == "true")
        if sum(s.default for s in services.values()) > 1:
            defaults = ", ".join(repr(s.name) for s in services.values() if s.default)
            self.wrong("the repo", f"tag {DEFAULT}", f"one default service at most, found {defaults}")
        if not services:
            self.wrong("the repo", "feature services", "none declared: a model needs one to name its inputs")
        return services


def compile_contents(
    contents: Any, project: str, repo: Path | str = "the repo", functions: dict[str, WindowFunction] | None = None
) -> DeclaredFeatures:
    """The compiled repo (with its window functions, by name), or `RepoMistakes` listing
    every mistake found."""
    compiler = _Compiler(contents, project, functions)
    declared = compiler.compile()
    if declared is None:
        raise RepoMistakes(repo, compiler.mistakes or ["nothing could be compiled"])
    return declared
