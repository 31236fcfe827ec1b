"""Features declared in a Feast repo, compiled once: `load_declared(path)` reads the repo
with Feast's own loader and returns what every execution runs (`DeclaredFeatures`), or
raises `RepoMistakes` naming each object, field and why."""

from vigil.declared.compiler import RepoMistakes, compile_contents
from vigil.declared.loading import load_declared, parse_feast_repo
from vigil.declared.model import (
    DeclaredFeatures,
    DerivedView,
    EventSchema,
    LabelSchema,
    Service,
    WindowAggregation,
    WindowFunction,
    window_function,
)

__all__ = [
    "DeclaredFeatures",
    "DerivedView",
    "EventSchema",
    "LabelSchema",
    "RepoMistakes",
    "Service",
    "WindowAggregation",
    "WindowFunction",
    "compile_contents",
    "load_declared",
    "parse_feast_repo",
    "window_function",
]
