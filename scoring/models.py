"""The models the service serves: the champion (native flavor) and its fallback baseline,
loaded by alias, warmed up, and swapped atomically when the alias moves."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.features import spec
from vigil.lifecycle.policy import TAG, Policy, read_policy_file, with_overrides
from vigil.lifecycle.tracking import CHALLENGER, CHAMPION, FALLBACK_ARTIFACT, REGISTERED_MODEL, hush_mlflow_store
from vigil.models.base import FraudModel, resolve_device, top_contributions
from vigil.models.loading import load_native
from vigil.settings import Settings

log = logging.getLogger("vigil.scoring.models")

INLINE_MAX_SECONDS = 0.001
# A version registered without a policy (before decisions existed): a plain 0.5 line.
UNKNOWN_POLICY = Policy(0.5, None, 0.5, source="default: the version carries no policy")


WARM_BATCH_ROWS = 1_024


@dataclass(frozen=True)
class LoadedModel:
    """One registered version, ready to predict; replaced whole, never mutated."""

    primary: FraudModel
    fallback: FraudModel
    version: str
    alias: str
    run_id: str
    loaded_at: float
    # Fast enough (median single-row warm-up call) to run on the event loop without a thread
    # hop; slower models go through the thread pool, where the deadline can cut them off.
    inline: bool = False
    policy: Policy = field(default_factory=lambda: UNKNOWN_POLICY)

    def describe(self) -> dict[str, Any]:
        return {
            "name": REGISTERED_MODEL,
            "version": self.version,
            "alias": self.alias,
            "kind": self.primary.kind,
            "fallback": self.fallback.kind,
            "run_id": self.run_id,
            "inline": self.inline,
            "policy": self.policy.as_dict(),
        }


def version_policy(tags: dict[str, str], version: str, policy_file: str | None) -> Policy:
    """The version's policy (its `policy` tag), with a policy file's overrides."""
    policy = Policy.from_dict(json.loads(tags[TAG]), f"version {version}") if TAG in tags else UNKNOWN_POLICY
    if policy_file:
        overrides = read_policy_file(policy_file)
        policy = with_overrides(policy, overrides, f"{policy.source}, overridden by {policy_file}")
    return policy


class ModelUnavailableError(RuntimeError):
    """No version holds the alias, or it could not be loaded."""


class RegistryMissingError(RuntimeError):
    """The configured registry store does not exist."""


def missing_sqlite_store(uri: str) -> str | None:
    """The path of a sqlite:/// tracking store that does not exist (None otherwise)."""
    from pathlib import Path
    from urllib.parse import urlsplit

    if not uri.startswith("sqlite:///"):
        return None
    path = Path(urlsplit(uri).path)
    return None if path.exists() else str(path)


class ModelManager:
    """Holds the version behind an alias and follows the alias as it moves."""

    # A version that failed to load is tried again after this long (an artifact store that
    # was away), not on every poll of the alias.
    RETRY_FAILED_SECONDS = 60.0

    def __init__(self, settings: Settings, alias: str = CHAMPION, on_reload_failure: Any = None) -> None:
        self.settings = settings
        self.alias = alias
        self.device = resolve_device(settings.device)
        self.current: LoadedModel | None = None
        self._lock = threading.Lock()
        self._mlflow: Any = None
        self._on_reload_failure = on_reload_failure
        self._failed: tuple[str, float] | None = None  # a version that would not load, and when
        self.unavailable: str | None = None  # why no version is served (None: one is, or none is promoted)

    def check_store(self) -> None:
        """A local registry that does not exist is an error (never a new, empty one)."""
        missing = missing_sqlite_store(self.settings.tracking_uri)
        if missing is not None:
            raise RegistryMissingError(
                f"no MLflow store at {missing}: train a model first (`vigil train`), "
                "or point MLFLOW_TRACKING_URI at the registry"
            )

    def _client(self) -> Any:
        # Made once: the watcher asks every few seconds. Only reads: nothing is created.
        if self._mlflow is None:
            import os

            from mlflow.tracking import MlflowClient

            import mlflow

            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            hush_mlflow_store()
            uri = self.settings.tracking_uri
            # Loading `models:/…` goes through MLflow's global URIs: they must name this store
            # too, whatever MLFLOW_REGISTRY_URI the environment holds (MLflow exports it to
            # child processes; a stale one resolved version 1 in another registry).
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            self._mlflow = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return self._mlflow

    def alias_version(self, alias: str | None = None) -> tuple[str, str] | None:
        from mlflow.exceptions import MlflowException

        try:
            version = self._client().get_model_version_by_alias(REGISTERED_MODEL, alias or self.alias)
        except MlflowException:
            return None
        return str(version.version), str(version.run_id)

    def load_version(self, version: str, run_id: str) -> LoadedModel:
        tags = dict(self._client().get_model_version(REGISTERED_MODEL, version).tags)
        policy = version_policy(tags, version, self.settings.policy_file)
        primary = load_native(f"models:/{REGISTERED_MODEL}/{version}")
        fallback = load_native(f"runs:/{run_id}/{FALLBACK_ARTIFACT}")
        # Warm-up (and a check that the model answers) before it is ever served.
        primary.setup(self.device, threads=1)
        fallback.setup("cpu", threads=1)
        # What the scorer hands every model: the handbook's served inputs, or a declared service's.
        width = max(len(spec.SERVED_INPUTS), len(primary.inputs), len(fallback.inputs))
        row = np.zeros((1, width), dtype=np.float32)
        timings = []
        for _ in range(30):
            started = time.perf_counter()
            primary.predict_proba(row)
            timings.append(time.perf_counter() - started)
        # The median, not a high percentile: workers load side by side at start-up, and one
        # slow call then sent a worker's every request through the thread pool and the
        # micro-batcher's wait (~0.5 ms more per answer, seen as run-to-run swings).
        inline = float(np.median(timings)) < INLINE_MAX_SECONDS
        # And every path a request can take, before the version serves: a batch through both
        # models and an explained one. Cold, the first 600-row explained batch after a start
        # missed its deadline whole (600 fallbacks while /readyz said ready).
        batch = np.zeros((WARM_BATCH_ROWS, width), dtype=np.float32)
        primary.predict_proba(batch)
        fallback.predict_proba(batch)
        top_contributions(primary, batch[:64])
        return LoadedModel(primary, fallback, version, self.alias, run_id, time.time(), inline, policy)

    def load_if_present(self) -> LoadedModel | None:
        """Like `load`, but None when no version holds the alias (a challenger is optional)."""
        try:
            return self.load()
        except ModelUnavailableError as error:
            if error.__cause__ is not None:  # held by a version that does not load: say so
                log.error("%s; no %s is served", error, self.alias)
            return None

    def load(self) -> LoadedModel:
        """Loads the alias's version; `ModelUnavailableError` (saying why) when no version holds
        the alias or it cannot be loaded."""
        found = self.alias_version()
        if found is None:
            raise ModelUnavailableError(
                f"no version of {REGISTERED_MODEL!r} holds alias {self.alias!r}: run `vigil train` first"
            )
        self.current = self._load(*found)
        return self.current

    def _load(self, version: str, run_id: str) -> LoadedModel:
        try:
            loaded = self.load_version(version, run_id)
        except Exception as error:
            self._failed = (version, time.monotonic())
            if self._on_reload_failure is not None:
                self._on_reload_failure(version)
            failure = ModelUnavailableError(
                f"{REGISTERED_MODEL!r} version {version} ({self.alias}) could not be loaded: "
                f"{type(error).__name__}: {str(error)[:300]}; promote a version that loads"
            )
            if self.current is None:
                self.unavailable = (
                    f"{REGISTERED_MODEL!r} version {version} ({self.alias}) could not be loaded; "
                    "the service log says why: promote a version that loads (`vigil promote`)"
                )
            raise failure from error
        self._failed = self.unavailable = None
        return loaded

    def refresh(self) -> bool:
        """Loads the alias's version if it moved; returns True when it swapped models.

        A version that fails to load or warm up is not served: the old one stays (or none,
        and the service is not ready), the failure is logged and counted, and that version
        is tried again only after `RETRY_FAILED_SECONDS`.
        """
        found = self.alias_version()
        if found is None:
            self.unavailable = None  # nothing is promoted (any more): the plain 503 says so
            return False
        if self.current is not None and found[0] == self.current.version:
            return False
        failed = self._failed
        if failed is not None and failed[0] == found[0] and time.monotonic() - failed[1] < self.RETRY_FAILED_SECONDS:
            return False
        with self._lock:
            try:
                loaded = self._load(*found)
            except ModelUnavailableError as error:
                kept = self.current.version if self.current else None
                log.error("%s; keeping version %s", error, kept)
                return False
            self.current = loaded  # one reference assignment: requests see the old or the new model
        log.info("now serving %s version %s (%s)", REGISTERED_MODEL, loaded.version, self.alias)
        return True

    def registry_view(self) -> dict[str, Any]:
        view: dict[str, Any] = {}
        for alias in (CHAMPION, CHALLENGER):
            found = self.alias_version(alias)
            view[alias] = {"version": found[0], "run_id": found[1]} if found else None
        return view
