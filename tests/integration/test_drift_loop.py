"""The closed loop, end to end on a small simulated world with a live scoring service.

Eleven weeks of a world where, from day 56, a new fraud pattern starts (card testing:
bursts of small night payments). Seven weeks are history (the champion learns from
them); then, week by week, the new transactions are ingested through the feature flow
and scored over HTTP by `vigil serve`, and `vigil monitor` looks at the prediction log:
- the stable week raises no alarm;
- the change is detected within two daily windows;
- retraining registers challengers, the gate promotes one that wins, the service swaps
  it in without a restart, and the live AP of the last week recovers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from bytewax.testing import run_main
from sklearn.metrics import average_precision_score

from flows.features import build_flow, default_sinks
from flows.sources import FileReplaySource
from tests.integration.serving_helpers import running_server, server_env
from vigil.lifecycle.training import train_and_register
from vigil.monitoring.monitor import MonitorConfig, run_monitor
from vigil.monitoring.retrain import run_retraining
from vigil.offline import training_set
from vigil.online.feast_store import apply_repo
from vigil.service_process import score_frame, serving_version, wait_for_prediction_log
from vigil.settings import Settings
from vigil.simulate import SimulationConfig, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIFT_DAY = 56
WORLD = SimulationConfig(
    customers=1_000, terminals=2_000, days=77, seed=11, new_pattern_day=DRIFT_DAY, testing_cards_per_day=30
)

# The champion's size, for the challengers too (the retraining default, 500 trees, took twice as long).
TREES = {"n_estimators": 150}


def ingest(settings: Settings, frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path)
    run_main(build_flow(FileReplaySource(path), default_sinks(settings), settings))


def test_drift_is_detected_and_a_retrained_champion_restores_live_ap(settings: Settings, tmp_path: Path) -> None:
    world = simulate(WORLD)
    day = (world["tx_datetime"] - world["tx_datetime"].min().normalize()).dt.days
    weeks = [world[(day >= first) & (day < first + 7)] for first in range(49, 77, 7)]  # 49, 56, 63, 70
    ingest(settings, world[day < 49], tmp_path / "history.parquet")
    data = training_set(apply_repo(settings), settings)
    first = train_and_register(settings, data, "xgboost", params=TREES, show_progress=False)
    assert first.version == "1"
    config = MonitorConfig(window_hours=24, lookback_days=7)
    scored: list[pd.DataFrame] = []

    # Week-long batches: a budget for batches of 1,000, not for one transaction.
    with running_server(server_env(settings, VIGIL_SCORE_BUDGET_MS="5000")) as base:
        # A stable week: no alarm.
        ingest(settings, weeks[0], tmp_path / "week0.parquet")
        scored.append(score_frame(base, weeks[0]))
        assert wait_for_prediction_log(settings, sum(map(len, scored)))
        stable = run_monitor(settings, config)
        assert len(stable.windows) == 7
        assert not stable.drift_alerts, [(w.start, w.share, w.drifted_columns) for w in stable.windows]
        assert run_retraining(settings, stable, data, params=TREES, show_progress=False).action == "none"

        # The new pattern starts on day 56: detected within two windows.
        ingest(settings, weeks[1], tmp_path / "week1.parquet")
        scored.append(score_frame(base, weeks[1]))
        assert wait_for_prediction_log(settings, sum(map(len, scored)))
        drifting = run_monitor(settings, config)
        alerted = sorted(pd.Timestamp(w.start) for w in drifting.drift_alerts)
        drift_start = world["tx_datetime"].min().normalize() + pd.Timedelta(days=DRIFT_DAY)
        assert alerted and alerted[0] <= drift_start + pd.Timedelta(days=1), alerted
        assert (settings.reports_dir / "index.html").exists()
        assert all((settings.reports_dir / w.report).exists() for w in drifting.windows if w.report)
        assert "vigil_drift_alert 1.0" in (settings.reports_dir / "metrics.prom").read_text()

        # The loop: each week, retrain on the newest labelled data and let the gate decide.
        promoted: str | None = None
        for week in (2, 3):
            data = training_set(apply_repo(settings), settings)
            outcome = run_retraining(settings, drifting, data, params=TREES, show_progress=False)
            assert outcome.action == "retrained", outcome.detail
            assert outcome.decision is not None
            if outcome.decision.promoted:
                promoted = outcome.version
                deadline = time.monotonic() + 30
                while serving_version(base) != promoted and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert serving_version(base) == promoted  # hot reload, no restart
            ingest(settings, weeks[week], tmp_path / f"week{week}.parquet")
            scored.append(score_frame(base, weeks[week]))
            assert wait_for_prediction_log(settings, sum(map(len, scored)))
            drifting = run_monitor(settings, config)
        assert promoted is not None

    def live_ap(frame: pd.DataFrame) -> float:
        return float(average_precision_score(frame["tx_fraud"], frame["score"]))

    before, during, after = live_ap(scored[0]), live_ap(scored[1]), live_ap(scored[3])
    print(f"live AP: stable week {before:.3f}, first drift week {during:.3f}, after retraining {after:.3f}")
    assert set(scored[3]["version"]) == {promoted}
    assert not any(frame["fallback"].any() for frame in scored)
    assert during < before - 0.1  # the change hurt
    assert after > during + 0.1  # and the retrained champion recovered
