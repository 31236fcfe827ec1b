"""The training reference of a model version: what live traffic is compared with.

A sample of the version's evaluation week (the most recent labelled data it was judged
on, unseen in training, so its scores there are what live scores should look like),
or of its last training weeks when it had no evaluation week. Built once per version:
`vigil train` logs it with the run (`monitoring/reference.parquet`); the monitor
downloads it once and keeps a copy under `data/monitoring/reference/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vigil.features import spec
from vigil.models.base import FraudModel
from vigil.settings import Settings

ARTIFACT = "monitoring/reference.parquet"
SAMPLE_ROWS = 20_000
RECENT_DAYS = 14
MIN_TEST_ROWS = 1_000


def build_reference(train: pd.DataFrame, test: pd.DataFrame, model: FraudModel, seed: int = 0) -> pd.DataFrame:
    """Up to SAMPLE_ROWS rows of `test` (or, if it is small, of the last RECENT_DAYS
    training days): model inputs + the model's score + label."""
    if len(test) >= MIN_TEST_ROWS:
        recent = test
    else:
        day = pd.to_datetime(train["tx_datetime"]).dt.normalize()
        recent = train[day > day.max() - pd.Timedelta(days=RECENT_DAYS)]
    if len(recent) > SAMPLE_ROWS:
        recent = recent.sample(SAMPLE_ROWS, random_state=seed).sort_values("tx_datetime")
    # A handbook model's reference holds every served input; a declared one's, its own.
    inputs = model.inputs if model.params.get("inputs") else spec.SERVED_INPUTS
    reference = recent[list(inputs)].astype(np.float64).reset_index(drop=True)
    reference["score"] = model.predict_proba(recent).astype(np.float64)
    reference["tx_fraud"] = recent["tx_fraud"].to_numpy()
    reference["tx_datetime"] = pd.to_datetime(recent["tx_datetime"]).to_numpy()
    return reference


def _cache_path(settings: Settings, version: str) -> Path:
    return settings.data_dir / "monitoring" / "reference" / f"fraud-detector-v{version}.parquet"


def load_reference(settings: Settings, version: str, keep: bool = True) -> pd.DataFrame:
    """The reference of registered version `version` (downloaded from its run once; `keep`
    False: not kept in the local cache, for a run that must change nothing)."""
    cached = _cache_path(settings, version)
    if cached.exists():
        return pd.read_parquet(cached)
    import tempfile

    from mlflow.tracking import MlflowClient

    import mlflow
    from vigil.lifecycle.tracking import REGISTERED_MODEL, configure

    configure(settings)
    run_id = MlflowClient().get_model_version(REGISTERED_MODEL, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=tmp)
        except Exception as error:
            raise LookupError(
                f"version {version} has no training reference ({ARTIFACT}); it was registered before the "
                "monitor existed: train a new version with `vigil train`"
            ) from error
        reference = pd.read_parquet(local)
    if not keep:
        return reference
    cached.parent.mkdir(parents=True, exist_ok=True)
    reference.to_parquet(cached, index=False)
    return reference
