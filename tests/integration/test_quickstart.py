"""The README's quick start, run as written (in a namespace of its own on the test Redis, and
on a free port instead of 8000): a newcomer's first ten minutes must work."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from vigil.online.store import delete_namespace
from vigil.service_process import free_port
from vigil.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def quickstart() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin -->\s*```bash\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert block, "README.md has no quick start block"
    return block.group(1)


def test_the_readme_quick_start_runs_as_written(redis_url: str, tmp_path: Path) -> None:
    script = quickstart()
    assert "vigil serve" in script and "curl" in script and "vigil monitor" in script
    port = str(free_port())
    # Whatever happens, the service started in the background goes when the script ends
    # (it would hold the output pipes open).
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script.replace("8000", port)
    name = f"q{uuid.uuid4().hex[:8]}"
    world = PROJECT_ROOT / "data" / "world.parquet"
    existed = world.exists()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "VIGIL_FEAST_PROJECT": name,
        "VIGIL_KEY_PREFIX": name,
        "VIGIL_DATA_DIR": str(tmp_path / "data"),
        "VIGIL_REPORTS_DIR": str(tmp_path / "reports"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "VIGIL_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
    }
    # Output to a file, the script in a session of its own: whatever it leaves behind cannot
    # hold a pipe open, goes with the session, and what it printed is shown if it fails.
    log = tmp_path / "quickstart.log"
    try:
        with log.open("w") as out:
            script_run = subprocess.Popen(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                code: int | None = script_run.wait(timeout=480)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(script_run.pid, signal.SIGKILL)
                script_run.wait()
    finally:
        delete_namespace(redis_url, name, name)
        if not existed and world.exists():
            world.unlink()
    output = log.read_text()
    assert code == 0, f"the quick start {'timed out' if code is None else f'exited {code}'}:\n{output[-6000:]}"
    assert '"decision"' in output and '"fallback":false' in output
    assert "Scored " in output and "Persisted " in output and "alerts:" in output
    assert (tmp_path / "reports" / "index.html").exists()
