"""The `vigil` command line as a user runs it: help, clear errors, ingest in two processes, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import redis

from tests.conftest import HANDWRITTEN_REPO
from tests.integration.serving_helpers import vigil, worst_from_backfill
from vigil.declared import load_declared
from vigil.declared.training import logged_events
from vigil.service_process import service_env
from vigil.settings import Settings
from vigil.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.integration


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "VIGIL_FEAST_PROJECT": settings.feast_project,
        "VIGIL_KEY_PREFIX": settings.key_prefix,
        "VIGIL_DATA_DIR": str(settings.data_dir),
        "VIGIL_FEATURE_REPO": str(settings.feature_repo),
        **extra,
    }


COMMANDS = [
    "ingest", "simulate", "apply", "features", "redis", "train", "promote", "evaluate", "serve", "monitor",
    "predictions", "review",
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_examples_and_defaults(command: str) -> None:
    result = vigil(command, "--help")
    assert result.returncode == 0 and "usage: vigil" in result.stdout
    assert "examples:" in result.stdout and f"vigil {command}" in result.stdout.split("examples:")[1]
    options = [line for line in result.stdout.split("options:")[1].split("examples:")[0].splitlines() if line.strip()]
    assert all(not line.strip().startswith("--") or len(line.split()) > 1 for line in options)  # each says something


def test_help_imports_nothing_heavy() -> None:
    """Every --help answers at once: building the parsers imports none of the heavy packages."""
    probe = (
        "import sys; from vigil.cli import build_parser; build_parser(); "
        "print(','.join(m for m in ('pandas', 'feast', 'mlflow', 'bytewax', 'torch', 'xgboost', 'evidently') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout


def test_arguments_are_checked_before_any_work(settings: Settings) -> None:
    env = env_for(settings, REDIS_URL="redis://127.0.0.1:1/0")  # nothing answers there: never reached
    reversed_range = vigil("train", "--train-start", "2018-07-01", "--train-end", "2018-06-01", env=env)
    assert reversed_range.returncode == 2 and "is after the end" in reversed_range.stderr
    bad_date = vigil("train", "--train-end", "2018-13-01", env=env)
    assert bad_date.returncode == 2 and "is not a date" in bad_date.stderr
    bad_params = vigil("train", "--params", '{"max_depth": "4"}', env=env)
    assert bad_params.returncode == 2 and "max_depth must be a number" in bad_params.stderr
    bad_window = vigil("evaluate", "--windows", "2018-02-30", env={**env, "VIGIL_FEATURE_REPO": str(HANDWRITTEN_REPO)})
    assert bad_window.returncode == 2 and "not a date" in bad_window.stderr


def test_an_explicit_redis_url_that_does_not_answer_is_an_error(settings: Settings, tmp_path: Path) -> None:
    env = env_for(settings, REDIS_URL="redis://127.0.0.1:1/0")
    result = vigil("redis", env=env)
    assert result.returncode == 2 and "No Redis answers" in result.stderr and "started a local one" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give either --transactions PATH"),
        (("--transactions", "/nonexistent/tx.parquet"), "no such file"),
        (("--transactions", "notes.txt"), "unknown file type"),
        (("--source", "redis://127.0.0.1:6379/"), "name the stream"),
        (("--source", "kafka:///topic"), "use kafka://BROKER"),
    ],
)
def test_ingest_mistakes_get_a_clear_message(
    settings: Settings, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "vigil.cli", "ingest", *args],
        capture_output=True,
        text=True,
        env=env_for(settings),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "text", "message"),
    [
        ("VIGIL_RULES_FILE", "# all rules commented out\n", "write `rules: []` for no rules"),
        ("VIGIL_POLICY_FILE", "review_threshold: [0.5\n", "not valid YAML"),
    ],
)
def test_serve_refuses_a_broken_decision_file_in_one_line(
    settings: Settings, tmp_path: Path, variable: str, text: str, message: str
) -> None:
    (tmp_path / "mlflow.db").touch()
    (tmp_path / "file.yaml").write_text(text)
    env = env_for(
        settings, **{variable: str(tmp_path / "file.yaml"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    )
    result = vigil("serve", env=env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_stream_without_its_password_is_named(settings: Settings, tmp_path: Path) -> None:
    """The flow on a password-protected Redis with the password missing from --source (or
    wrong): one line saying what to put where, exit 2, not a panic of the dataflow."""
    from vigil.local_redis import LocalRedis

    with LocalRedis(tmp_path / "locked", password="s3cret") as server:
        env = env_for(settings, REDIS_URL=server.url)
        port = server.port
        for source, says in (
            (f"redis://127.0.0.1:{port}/vigil:events", "refused the credentials"),
            (f"redis://:wrong@127.0.0.1:{port}/vigil:events", "refused the credentials"),
        ):
            result = vigil("ingest", "--source", source, env=env)
            assert result.returncode == 2 and says in result.stderr, result.stderr
            assert "Traceback" not in result.stderr and "panic" not in result.stderr and "wrong" not in result.stderr


def test_bad_redis_url_is_explained(settings: Settings) -> None:
    result = vigil("redis", env=env_for(settings, REDIS_URL="http://:secret@nowhere"))
    assert result.returncode == 2 and "REDIS_URL must look like redis://" in result.stderr
    assert "secret" not in result.stderr


def test_simulate_then_ingest_with_two_processes(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "world.jsonl"
    made = vigil(
        "simulate", "--out", str(path), "--customers", "200", "--terminals", "400", "--days", "20", "--seed", "3"
    )
    assert made.returncode == 0, made.stderr
    result = vigil("ingest", "--transactions", str(path), "--workers", "2", "--no-progress", env=env_for(settings))
    assert result.returncode == 0, result.stderr
    frame = pd.read_json(path, lines=True)
    assert f"Ingested {len(frame):,} events and {len(frame):,} labels" in result.stdout, result.stdout
    assert "with 2 worker(s); dead letters: 0" in result.stdout, result.stdout
    assert worst_from_backfill(settings, frame) <= 1e-9


def test_kill_minus_nine_mid_replay_then_restart(settings: Settings, tmp_path: Path, redis_client: redis.Redis) -> None:
    """A replay killed mid-way, then run again from the start: every event counts once online
    (a fact delivered twice is read once) and in the offline event log."""
    path = tmp_path / "world.parquet"
    frame = simulate(SimulationConfig(customers=500, terminals=1000, days=21, seed=11))
    frame.to_parquet(path)
    env = env_for(settings)
    args = [sys.executable, "-m", "vigil.cli", "ingest", "--transactions", str(path), "--no-progress"]
    # Paced so that the kill lands mid-replay, whatever the machine's speed.
    victim = subprocess.Popen(
        [*args, "--speed", str(21 * 86_400 / 20)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    facts = f"{settings.key_prefix}:facts:*"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(redis_client.scan_iter(match=facts, count=1000))) < 200:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert list(redis_client.scan_iter(match=facts, count=1000)), "the replay never started writing"
    declared = load_declared(settings.feature_repo)
    assert len(logged_events(declared, settings.event_log)) < len(frame)
    restarted = vigil(*args[3:], env=env)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert worst_from_backfill(settings, frame) <= 1e-9
    logged = logged_events(declared, settings.event_log)
    assert sorted(logged["transaction_id"]) == sorted(frame["transaction_id"])
    assert int(logged["tx_fraud"].notna().sum()) == len(frame)


@pytest.mark.handwritten
def test_evaluate_on_fresh_simulated_worlds(settings: Settings) -> None:
    args = ("evaluate", "--worlds", "2", "--world-days", "60", "--world-customers", "300", "--weeks", "1")
    result = vigil(*args, "--world-seed", "5", env=service_env(settings))
    assert result.returncode == 0, result.stderr
    assert "over 2 worlds x 1 windows" in result.stdout and "every other model:" in result.stdout
    results = pd.read_csv(settings.reports_dir / "worlds.csv")
    assert sorted(results["world"].unique()) == [5, 6] and set(results["test_start"]) == {"2018-05-24"}
    assert len(results) == 2 * 3 and results[["auc", "ap", "cp_at_100"]].notna().all().all()
    summary = pd.read_csv(settings.reports_dir / "worlds_summary.csv")
    assert len(summary) == 3 and (summary["windows"] == 2).all()
    assert (settings.reports_dir / "worlds.png").stat().st_size > 0
    mistake = vigil("evaluate", "--worlds", "2", "--world-days", "30", env=service_env(settings))
    assert mistake.returncode == 2 and "--world-days at least 60" in mistake.stderr
    assert "Traceback" not in mistake.stderr
    no_data = vigil("evaluate", "--windows", "2019-01-01", "--bootstrap", "0", env=service_env(settings))
    assert no_data.returncode == 2 and "no ingested transactions under" in no_data.stderr
    assert "run `vigil ingest --transactions PATH` first" in no_data.stderr
    assert "Traceback" not in no_data.stderr
