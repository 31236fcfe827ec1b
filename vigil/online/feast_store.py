"""Opens Vigil's Feast repo with values from Settings, and registers its objects."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from vigil.settings import Settings


def registry_path(settings: Settings) -> Path:
    """The Feast registry (feature_store.yaml names the default project's: ../data/vigil-registry.db)."""
    return settings.data_dir / f"{settings.feast_project}-registry.db"


def repo_config(settings: Settings, spark_master: str | None = None) -> RepoConfig:
    """feature_store.yaml with Vigil's settings: project, registry and Redis URL (and, given a
    `spark_master`, Feast's Spark offline store on that cluster instead of the file store)."""
    raw = yaml.safe_load((settings.feature_repo / "feature_store.yaml").read_text())
    raw["project"] = settings.feast_project
    raw["registry"] = {**raw.get("registry", {}), "path": str(registry_path(settings))}
    raw["online_store"] = {**raw.get("online_store", {}), "url": settings.redis_url, "key_prefix": settings.key_prefix}
    if spark_master is not None:
        raw["offline_store"] = {
            "type": "spark",
            "spark_conf": {
                "spark.master": spark_master,
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
            },
        }
    config = RepoConfig(**raw)
    config.repo_path = settings.feature_repo
    return config


def quiet_feast() -> None:
    """Feast warns that its Spark data source is experimental each time the registry
    deserializes one (the training views' Spark twin): said once, in the repo."""
    warnings.filterwarnings("ignore", message="The spark data source API is an experimental feature")


def open_feature_store(settings: Settings, spark_master: str | None = None) -> FeatureStore:
    """A Feast FeatureStore on Vigil's repo (run `vigil apply` once first)."""
    quiet_feast()
    return FeatureStore(repo_path=str(settings.feature_repo), config=repo_config(settings, spark_master))


def apply_repo(settings: Settings) -> FeatureStore:
    """Registers the repo's entities, views and services (what `feast apply` does)."""
    from vigil.declared.loading import parse_feast_repo

    registry_path(settings).parent.mkdir(parents=True, exist_ok=True)
    # The repo's modules read VIGIL_OFFLINE_DIR when imported (the loader imports them afresh).
    os.environ["VIGIL_OFFLINE_DIR"] = str(settings.offline_dir)
    contents = parse_feast_repo(settings.feature_repo)
    store = open_feature_store(settings)
    objects: list[Any] = [
        *contents.entities,
        *contents.data_sources,
        *contents.feature_views,
        *contents.on_demand_feature_views,
        *contents.feature_services,
    ]
    # A module that imports an object from another makes parse_repo see it twice.
    unique = list({(type(obj).__name__, obj.name): obj for obj in objects}.values())
    with warnings.catch_warnings():
        # Feast labels every on-demand view "experimental" on each apply.
        warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
        store.apply(unique)
    return store


def feast_features(store: FeatureStore, transactions: pd.DataFrame, service: str = "fraud_v1") -> pd.DataFrame:
    """The features of `service` for each row, asked of Feast itself (`get_online_features`).

    Any Feast client gets the same numbers this way; tests and the demo use it to check
    the serving path against Feast.
    """
    from vigil.features import spec

    rows = [
        {
            "customer_id": int(r.customer_id),
            "terminal_id": int(r.terminal_id),
            "transaction_id": int(r.transaction_id),
            "tx_datetime": pd.Timestamp(r.tx_datetime).to_pydatetime(),
            "tx_amount": float(r.tx_amount),
        }
        for r in transactions.itertuples()
    ]
    answer = store.get_online_features(features=store.get_feature_service(service), entity_rows=rows)
    frame = pd.DataFrame(answer.to_dict())[list(spec.FEATURE_SETS[service].features)]
    frame.insert(0, "transaction_id", transactions["transaction_id"].to_numpy())
    return frame
