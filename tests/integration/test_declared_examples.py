"""The declared handbook (feature_repo): fraud_v1 with Feast's objects alone equals the
handbook's reference, fraud_v2/v3's window functions equal the hand-written features, and the
README's "Declaring features" commands run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.integration.readme_blocks import run, run_block
from vigil.declared import load_declared
from vigil.settings import PROJECT_ROOT, Settings


def test_the_declared_handbook_equals_the_reference(handbook: Path) -> None:
    """The README's command, as written (with the handbook's files where ../shared keeps them)."""
    done = run(
        sys.executable, "-m", "vigil.cli", "repo", "compute", "--repo", "feature_repo",
        "--events", str(handbook / "transactions.parquet"), "--reference", str(handbook / "features_reference.parquet"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MATCH: 1,169,723 events compared" in done.stdout, done.stdout


def test_the_declared_handbook_v3_equals_the_hand_written_features(handbook: Path, tmp_path: Path) -> None:
    """fraud_v2's and fraud_v3's features, declared with the repo's window functions, equal
    the hand-written ones: the local backfill and Spark's, on the handbook's first 45 days
    (every 30-day window full, then sliding) of a third of its cards: both compute on the
    same events, so any subset compares the code, and the terminals' windows still mix cards."""
    import pandas as pd

    from vigil.features.backfill import compute_features

    events = pd.read_parquet(handbook / "transactions.parquet")
    first = events["tx_datetime"] < events["tx_datetime"].min() + pd.Timedelta(days=45)
    events = events[first & (events["customer_id"] % 3 == 0)].reset_index(drop=True)
    events.to_parquet(tmp_path / "events.parquet")
    hand_written = compute_features(events)
    hand_written.to_parquet(tmp_path / "hand-written.parquet")
    service = load_declared(PROJECT_ROOT / "feature_repo").service("fraud_v3").features
    compute = [
        sys.executable, "-m", "vigil.cli", "repo", "compute", "--repo", "feature_repo", "--service", "fraud_v3",
        "--events", str(tmp_path / "events.parquet"), "--reference", str(tmp_path / "hand-written.parquet"),
    ]  # fmt: skip
    for engine in ("local", "spark"):
        done = run(*compute, "--engine", engine, "--spark-master", "local[2]")
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert f"MATCH: {len(events):,} events compared" in done.stdout, done.stdout
        compared = re.findall(r"^  (\w+) +max \|diff\|", done.stdout, re.M)
        # Every one of the 22 features (the amount is the payment's own), none missing from the reference.
        assert compared == [f for f in service if f in hand_written.columns] and len(compared) == 22, compared


def test_the_readme_declared_features_block_runs_as_written(settings: Settings) -> None:
    """README's "Declaring features" commands: the online features the flow stored equal the
    backfill's for every event of the world."""
    files = ["declared-world.parquet", "declared-features.parquet"]
    out = run_block(settings, PROJECT_ROOT / "README.md", "declared", files)
    assert "service fraud_v1 (default): 15 features" in out and "service fraud_v3: 23 features" in out


def test_apply_and_features_run_on_a_declared_repo(settings: Settings, tmp_path: Path) -> None:
    """`vigil apply` registers the repo with Feast; `vigil features` gives the default service's
    features of a file, by a backfill of it or from the online store."""
    import pandas as pd

    from tests.integration.serving_helpers import HANDBOOK_REPO, ingest, server_env, vigil
    from vigil.simulate import SimulationConfig, simulate

    settings = settings.model_copy(update={"feature_repo": HANDBOOK_REPO})
    env = server_env(settings)
    applied = vigil("apply", env=env)
    assert applied.returncode == 0, applied.stderr
    assert "services: " in applied.stdout and "fraud_v1" in applied.stdout
    world = simulate(SimulationConfig(customers=100, terminals=200, days=10, seed=4))
    world.to_parquet(tmp_path / "world.parquet")
    backfill = vigil("features", "--transactions", str(tmp_path / "world.parquet"), "--backfill",
                     "--out", str(tmp_path / "backfill.parquet"), env=env)  # fmt: skip
    assert backfill.returncode == 0, backfill.stderr
    assert f"Wrote 15 features of {len(world):,} events" in backfill.stdout
    ingest(settings, world)
    online = vigil("features", "--transactions", str(tmp_path / "world.parquet"),
                   "--reference", str(tmp_path / "backfill.parquet"), env=env)  # fmt: skip
    assert online.returncode == 0, online.stdout + online.stderr
    assert f"MATCH: {len(world):,} events compared" in online.stdout
    assert list(pd.read_parquet(tmp_path / "backfill.parquet").columns)[1] == "tx_amount"
