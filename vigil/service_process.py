"""A `vigil serve` process for the demo and notebooks, and a client that scores frames through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from vigil.monitoring.predictions import logged_answers
from vigil.online.connection import connect
from vigil.settings import PROJECT_ROOT, Settings


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a `vigil serve` process use `settings`' stores."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "VIGIL_FEAST_PROJECT": settings.feast_project,
        "VIGIL_KEY_PREFIX": settings.key_prefix,
        "VIGIL_DATA_DIR": str(settings.data_dir),
        "VIGIL_REPORTS_DIR": str(settings.reports_dir),
        "VIGIL_FEATURE_REPO": str(settings.feature_repo),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    if settings.mlflow_artifacts_dir:
        env["VIGIL_MLFLOW_ARTIFACTS"] = str(settings.mlflow_artifacts_dir)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_process(
    env: dict[str, str],
    workers: int = 1,
    ready_path: str = "/readyz",
    timeout: float = 120,
    stderr_to: Path | None = None,
) -> Iterator[str]:
    """Starts `vigil serve` on loopback with `env`, waits until `ready_path` answers 200,
    yields its base URL, stops it. Its stderr (its log) goes to `stderr_to` or a temporary
    file, quoted if it exits early."""
    port = free_port()
    with stderr_to.open("w+") if stderr_to else tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "serve", "--port", str(port), "--workers", str(workers)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    errors.seek(0)
                    raise RuntimeError(f"vigil serve exited with status {process.returncode}: {errors.read()[-3000:]}")
                try:
                    if httpx.get(f"{base}{ready_path}", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vigil serve did not answer {ready_path} in {timeout:.0f} s")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def background_service(settings: Settings, timeout: float = 120, **env: str) -> Iterator[str]:
    """`vigil serve` on `settings`' stores, ready (model loaded, store reachable)."""
    with serve_process(service_env(settings, **env), timeout=timeout) as base:
        yield base


def transaction_body(row: Any) -> dict[str, Any]:
    """A transaction as the HTTP API takes it, from a row (Series or itertuples) in handbook columns."""
    return {
        "transaction_id": int(row.transaction_id),
        "customer_id": int(row.customer_id),
        "terminal_id": int(row.terminal_id),
        "tx_amount": float(row.tx_amount),
        "tx_datetime": pd.Timestamp(row.tx_datetime).isoformat(),
    }


def transactions_body(part: pd.DataFrame) -> dict[str, Any]:
    return {"transactions": [transaction_body(r) for r in part.itertuples(index=False)]}


def events_body(fields: list[str], part: pd.DataFrame, batch: str = "events") -> dict[str, Any]:
    """A chunk of a declared repo's events (its `fields`) as the body of its `/v1/score/batch`
    (`batch`: the list's name, the repo's tag vigil.batch)."""
    return {batch: json.loads(part[fields].to_json(orient="records", date_format="iso"))}


def score_frame(
    base: str,
    frame: pd.DataFrame,
    chunk: int = 1_000,
    api_key: str | None = None,
    body_of: Callable[[pd.DataFrame], dict[str, Any]] = transactions_body,
) -> pd.DataFrame:
    """Scores every row of `frame` through `/v1/score/batch` (`body_of` a chunk: the handbook's
    transactions by default, a declared repo's `{BATCH: ...}`, its tag vigil.batch); adds score, version,
    fallback, reason, decision and reasons."""
    answers: list[dict[str, object]] = []
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=base, timeout=120, headers=headers) as client:
        for first in range(0, len(frame), chunk):
            response = client.post("/v1/score/batch", json=body_of(frame.iloc[first : first + chunk]))
            response.raise_for_status()
            answers += response.json()["results"]
    return frame.assign(
        score=[a["score"] for a in answers],
        version=[a["model"]["version"] for a in answers],  # type: ignore[index]
        fallback=[a["fallback"] for a in answers],
        reason=[a["fallback_reason"] for a in answers],
        decision=[a["decision"] for a in answers],
        reasons=[",".join(a["reasons"]) for a in answers],  # type: ignore[arg-type]
    )


def wait_for_prediction_log(settings: Settings, entries: int, timeout: float = 30) -> bool:
    """Waits until the service's background prediction log has logged `entries` answers."""
    client = connect(settings.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while logged_answers(settings, client) < entries:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True
    finally:
        client.close()


def serving_version(base: str) -> str | None:
    serving = httpx.get(f"{base}/v1/models", timeout=10).json().get("serving")
    return str(serving["version"]) if serving else None
