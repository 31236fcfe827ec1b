"""MLflow set-up: tracking URI from Settings, the experiment, and the registered model name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from vigil.settings import Settings

REGISTERED_MODEL = "fraud-detector"
EXPERIMENT = "fraud-detector"
CHAMPION = "champion"
CHALLENGER = "challenger"
# The baseline logged in every training run, next to the model (the scoring fallback).
FALLBACK_ARTIFACT = "fallback"


def hush_mlflow_store() -> None:
    """MLflow's SQL store configures a relationship that SQLAlchemy 2.1 deprecates (MLflow's to
    fix): hidden by its message. Applied again before each use, because Feast's modules reset
    DeprecationWarning to "once" when they are imported."""
    import warnings

    warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")


def configure(settings: Settings) -> str:
    """Points MLflow at the configured store and makes sure the experiment exists.

    The default store is SQLite under mlflow/ with artifacts beside it; any
    MLFLOW_TRACKING_URI (a PostgreSQL database, a tracking server) works instead.
    Returns the experiment id.
    """
    import os

    hush_mlflow_store()
    # No network beyond the tracking store: MLflow's usage telemetry stays off.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(urlsplit(uri).path).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifacts = None
    if not urlsplit(uri).scheme.startswith("http"):
        root = (
            Path(settings.mlflow_artifacts_dir)
            if settings.mlflow_artifacts_dir
            else settings.registry_dir / "artifacts"
        )
        root.mkdir(parents=True, exist_ok=True)
        artifacts = root.resolve().as_uri()
    return str(mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts))
