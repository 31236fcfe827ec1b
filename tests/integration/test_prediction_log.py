"""Every answer persisted exactly once: under load with the persister killed, and across a
Redis outage (the service buffers what it could not write). Real servers, real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.serving_helpers import HANDBOOK_REPO, ingest_and_train, running_server, server_env, vigil
from vigil.local_redis import LocalRedis
from vigil.monitoring.predictions import logged_answers
from vigil.online.connection import connect
from vigil.service_process import transaction_body
from vigil.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

ANSWERS = 200_000
BATCH = 1_000


def world_on(settings: Settings, url: str, world: pd.DataFrame, tmp: Path) -> Settings:
    local = Settings(
        **{**settings.model_dump(), "redis_url": url, "data_dir": tmp / "data", "feature_repo": HANDBOOK_REPO}
    )
    history = world[world["tx_datetime"] < world["tx_datetime"].min() + pd.Timedelta(days=28)]
    ingest_and_train(local, history, "baseline")
    return local


def bodies(world: pd.DataFrame, count: int, first_id: int) -> list[dict[str, object]]:
    rows = [transaction_body(r) for r in world.tail(BATCH).itertuples()]
    out = []
    for i in range(count):
        body = dict(rows[i % len(rows)])
        body["transaction_id"] = first_id + i
        out.append(body)
    return out


def persister(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "vigil.cli", "predictions", "persist", "--interval", "0.2"]
    return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_logged(settings: Settings, count: int, timeout: float = 60) -> None:
    client = connect(settings.redis_url)
    deadline = time.monotonic() + timeout
    while logged_answers(settings, client) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged_answers(settings, client) >= count
    client.close()


def test_every_answer_is_exported_exactly_once_with_the_persister_killed(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    with LocalRedis(tmp_path / "redis") as server:
        local = world_on(settings, server.url, small_world, tmp_path)
        env = server_env(local, VIGIL_MAX_BATCH="1000")
        sent = bodies(small_world, ANSWERS, 10**9)
        batches = [{"transactions": sent[i : i + BATCH]} for i in range(0, ANSWERS, BATCH)]
        running = persister(env)
        with running_server(env) as base, httpx.Client(base_url=base, timeout=60) as client:

            def post(body: dict[str, object]) -> int:
                return client.post("/v1/score/batch", json=body).status_code

            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(post, batches[: len(batches) // 2]))
                os.kill(running.pid, signal.SIGKILL)  # mid-stream, whatever it was doing
                running.wait(timeout=10)
                running = persister(env)
                statuses += list(pool.map(post, batches[len(batches) // 2 :]))
            assert statuses == [200] * len(batches)
            wait_logged(local, ANSWERS)
        running.send_signal(signal.SIGTERM)  # a clean stop drains what is there
        _, errors = running.communicate(timeout=120)
        assert running.returncode == 0, errors.decode()[-2000:]
        drained = vigil("predictions", "persist", "--once", env=env)
        assert drained.returncode == 0, drained.stderr
        out = tmp_path / "answers.parquet"
        exported = vigil("predictions", "export", "--out", str(out), env=env)
        assert exported.returncode == 0, exported.stderr
    answers = pd.read_parquet(out)
    assert len(answers) == ANSWERS
    assert answers["transaction_id"].is_unique
    assert set(answers["transaction_id"]) == {b["transaction_id"] for b in sent}
    assert answers["decision"].isin(["allow", "review", "block"]).all()


def test_answers_given_while_redis_is_away_are_kept(
    settings: Settings, small_world: pd.DataFrame, tmp_path: Path
) -> None:
    with LocalRedis(tmp_path / "redis") as server:
        local = world_on(settings, server.url, small_world, tmp_path)
        env = server_env(local)
        before, during = bodies(small_world, 300, 10**9), bodies(small_world, 500, 2 * 10**9)
        with running_server(env) as base:
            for body in before:
                assert httpx.post(f"{base}/v1/score", json=body).status_code == 200
            wait_logged(local, len(before))
            assert vigil("predictions", "persist", "--once", env=env).returncode == 0
            server.kill()
            for body in during:  # answered (from the fallback), logged in memory
                answer = httpx.post(f"{base}/v1/score", json=body, timeout=10)
                assert answer.status_code == 200 and answer.json()["fallback"] is True
            server.start()  # back, empty: the buffered answers are written to it
            wait_logged(local, len(during))
            assert vigil("predictions", "persist", "--once", env=env).returncode == 0
            metrics = httpx.get(f"{base}/metrics").text
        exported = vigil("predictions", "export", "--out", str(tmp_path / "all.parquet"), env=env)
        assert exported.returncode == 0, exported.stderr
    answers = pd.read_parquet(tmp_path / "all.parquet")
    assert sorted(answers["transaction_id"]) == sorted(b["transaction_id"] for b in before + during)
    assert "vigil_prediction_log_dropped_total 0.0" in metrics


def test_the_review_queue_is_trimmed_after_its_retention_once_persisted(settings: Settings) -> None:
    """Entries older than VIGIL_REVIEW_RETENTION_DAYS (30) go, judged or not, with their
    verdicts, but never one whose answer the prediction log has not persisted yet."""
    import json

    from vigil.monitoring.predictions import persisted_key
    from vigil.monitoring.review import trim_review, verdicts_key

    client = connect(settings.redis_url)
    now, day = 1_800_000_000_000, 86_400_000
    for ms, tx in ((now - 40 * day, 1), (now - 35 * day, 2), (now - 31 * day, 3), (now - 5 * day, 4)):
        client.xadd(settings.review_stream, {"json": json.dumps({"transaction_id": tx})}, id=f"{ms}-0")
    client.hset(verdicts_key(settings), mapping={"1": "{}", "4": "{}"})
    assert trim_review(settings, client, now) == 0  # nothing persisted: nothing is durable downstream
    client.set(persisted_key(settings), f"{now - 36 * day}-0")
    assert trim_review(settings, client, now) == 1  # only what the persisted log already holds
    client.set(persisted_key(settings), f"{now - 1_000}-0")
    assert trim_review(settings, client, now) == 2
    left = [json.loads(fields[b"json"])["transaction_id"] for _, fields in client.xrange(settings.review_stream)]
    assert left == [4] and client.hkeys(verdicts_key(settings)) == [b"4"]
