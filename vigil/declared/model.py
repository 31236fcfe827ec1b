"""What a declared feature repo compiles to: plain, frozen descriptions that the
executions (the backfill here; the flow and the scoring service read the same objects)
run without going back to Feast's objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# The JSON kinds of Feast's types (the contract's mapping).
Kind = Literal["integer", "number", "string", "boolean", "time"]
# Feast's six aggregation functions.
FUNCTIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "count_distinct")


@dataclass(frozen=True)
class EventSchema:
    """The fields every event carries (the `RequestSource` tagged vigil.role=events)."""

    source: str
    fields: dict[str, Kind]
    event_id: str
    time: str
    batch: str = "events"  # the batch body's list of events (tag vigil.batch)
    # The least and greatest value of a number or integer field (its tags vigil.min, vigil.max).
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LabelSchema:
    """How labels are told: the labelled event's id and time, and the label column."""

    source: str
    event_id: str
    time: str
    label: str


class WindowFunction:
    """A repo's own aggregation: `function(values, times, ids, t, event_id) -> float`, called
    for each event with the window's facts of its entity, oldest first.

    - `values`: the aggregated column (float64; labels: the label), `times`: the facts'
      times (int64 nanoseconds since the epoch, UTC), `ids`: their event ids; facts of one
      time come in id order. On the events, the last fact is the event itself.
    - `t`, `event_id`: the event's own time (nanoseconds) and id: on the labels the window
      ends `vigil.delay` before `t`, so an age is `t - times[k]`.
    - The window may be empty (an entity with no facts yet): return what that means.

    Vigil compiles it with numba when its code allows (plain numpy and arithmetic), and
    calls it from Python otherwise. Declared with `@vigil.declared.window_function` in any
    Python file of the repo, and used by name: `Aggregation(function="its_name", ...)`.
    """

    def __init__(self, function: Callable[..., float], name: str | None = None) -> None:
        self.function = function
        self.name = name or function.__name__
        self.compiled: Any = None  # numba's dispatcher, made on first use
        self.compilable = True

    def __call__(self, values: Any, times: Any, ids: Any, t: int, event_id: int) -> float:
        return float(self.function(values, times, ids, t, event_id))

    def __getstate__(self) -> dict[str, Any]:  # shipped to Spark's workers without the compiled code
        return {"function": self.function, "name": self.name, "compiled": None, "compilable": self.compilable}

    def __repr__(self) -> str:
        return f"WindowFunction({self.name!r})"


def window_function(function: Callable[..., float], name: str | None = None) -> WindowFunction:
    """Declares a repo's own aggregation function (see `WindowFunction`); `Aggregation(function=...)`
    uses its name (the function's own, or `name`)."""
    return WindowFunction(function, name)


@dataclass(frozen=True)
class WindowAggregation:
    """One declared `Aggregation`: for an event of the view's entity at time t, `function`
    of `column` over the entity's facts with time in (t - delay - window, t - delay].

    Facts are the events (`on == "events"`; the delay is 0; of two events at one time the
    one with the lower id comes first, and an event's window holds itself) or the
    labelled events (`on == "labels"`), at their events' own times.
    """

    name: str
    view: str
    entity: str
    key: str
    on: Literal["events", "labels"]
    column: str
    function: str
    window_seconds: int
    delay_seconds: int = 0
    custom: WindowFunction | None = None  # `function` is the repo's own

    @property
    def computed_by(self) -> str | WindowFunction:
        return self.custom if self.custom is not None else self.function


@dataclass(frozen=True)
class DerivedView:
    """An `OnDemandFeatureView` in python mode: `transform` takes a dict of lists (the
    features of `inputs` and the request fields) and returns a dict of lists (`outputs`)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    transform: Callable[[dict[str, list[Any]]], dict[str, list[Any]]]
    wants_request: bool


@dataclass(frozen=True)
class Service:
    """A `FeatureService`: a model's inputs, in order."""

    name: str
    features: tuple[str, ...]
    default: bool = False


@dataclass(frozen=True)
class DeclaredFeatures:
    """A compiled repo: everything needed to compute its features anywhere."""

    project: str
    events: EventSchema
    labels: LabelSchema | None
    entities: dict[str, str]  # entity name -> its join key
    aggregations: tuple[WindowAggregation, ...]
    derived: tuple[DerivedView, ...]
    services: dict[str, Service] = field(default_factory=dict)
    # What a set of features needs computed, worked out once per set (`compute.feature_plan`).
    plans: dict[tuple[str, ...], Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def default_service(self) -> Service:
        defaults = [s for s in self.services.values() if s.default]
        return defaults[0] if defaults else next(iter(self.services.values()))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*(a.name for a in self.aggregations), *(o for d in self.derived for o in d.outputs))

    @property
    def horizon_seconds(self) -> int:
        """How far back of an entity's newest fact the windows reach."""
        return max((a.window_seconds + a.delay_seconds for a in self.aggregations), default=0)

    def service(self, name: str | None) -> Service:
        if name is None:
            return self.default_service
        if name not in self.services:
            known = ", ".join(sorted(self.services)) or "none"
            raise KeyError(f"no feature service named {name!r} (the repo declares: {known})")
        return self.services[name]
