"""The handbook's fraud_v1, declared with Feast's objects alone (examples/handbook):
compiled by Vigil, its features equal the handbook's reference; stock Feast reads it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.serving_helpers import server_env
from vigil.settings import PROJECT_ROOT, Settings


def run(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_the_declared_handbook_equals_the_reference(handbook: Path) -> None:
    """The README's command, as written (with the handbook's files where ../shared keeps them)."""
    done = run(
        sys.executable, "-m", "vigil.cli", "repo", "compute", "--repo", "examples/handbook",
        "--events", str(handbook / "transactions.parquet"), "--reference", str(handbook / "features_reference.parquet"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MATCH: 1,169,723 events compared" in done.stdout, done.stdout


def test_stock_feast_applies_and_lists_the_declared_repo(tmp_path: Path) -> None:
    repo = tmp_path / "handbook"
    shutil.copytree(PROJECT_ROOT / "examples" / "handbook", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    feast = str(Path(sys.executable).parent / "feast")
    applied = run(feast, "apply", cwd=repo)
    assert applied.returncode == 0, applied.stderr
    listed = run(feast, "feature-services", "list", cwd=repo)
    assert listed.returncode == 0, listed.stderr
    assert "fraud_v1" in listed.stdout and "terminal_risk:terminal_id_risk_30day_window" in listed.stdout
    checked = run(sys.executable, "-m", "vigil.cli", "repo", "check", "--repo", str(repo))
    assert checked.returncode == 0, checked.stderr
    assert "service fraud_v1 (default): 14 features" in checked.stdout


def test_the_readme_declared_features_block_runs_as_written(settings: Settings) -> None:
    """README's "Declaring features" commands, as written, in this test's namespace: the
    online features the flow stored equal the backfill's for every event of the world."""
    text = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"<!-- declared:begin -->\s*```bash\n(.*?)```\s*<!-- declared:end -->", text, re.S)
    assert block, "README.md has no declared-features block"
    # `vigil` as the README's reader has it: the environment's own (make setup installs it).
    env = server_env(settings, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    files = [PROJECT_ROOT / "data" / name for name in ("declared-world.parquet", "declared-features.parquet")]
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.group(1)],
            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600,
        )  # fmt: skip
    finally:
        for file in files:
            file.unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "service fraud_v1 (default): 14 features" in done.stdout
    assert "dead letters: 0" in done.stdout
    assert re.search(r"MATCH: [\d,]+ events compared", done.stdout), done.stdout[-3000:]
