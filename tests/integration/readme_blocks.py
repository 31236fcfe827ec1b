"""Commands of the docs run as written: a README's marked bash block, and a command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.integration.serving_helpers import server_env
from vigil.service_process import free_port
from vigil.settings import PROJECT_ROOT, Settings


def run(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=600)


def run_block(settings: Settings, readme: Path, marker: str, files: list[str]) -> str:
    """A README's marked bash block, as written, in this test's namespace (its files removed;
    a service on a free port instead of 8000, stopped with the block)."""
    text = readme.read_text()
    block = re.search(rf"<!-- {marker}:begin -->\s*```bash\n(.*?)```\s*<!-- {marker}:end -->", text, re.S)
    assert block, f"{readme} has no {marker} block"
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + block.group(1).replace("8000", str(free_port()))
    # `vigil` and `python` as the README's reader has them: the environment's own.
    env = server_env(settings, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=600,
        )  # fmt: skip
    finally:
        for name in files:
            (PROJECT_ROOT / "data" / name).unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dead letters: 0" in done.stdout
    assert re.search(r"MATCH: [\d,]+ events compared", done.stdout), done.stdout[-3000:]
    return done.stdout
