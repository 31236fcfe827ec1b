"""The monitor's pure parts: drift parsing and measuring, daily performance, retraining reasons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vigil.features import spec
from vigil.monitoring.drift import WindowDrift, _parse, drift_columns, measure_drift
from vigil.monitoring.monitor import MonitorResult
from vigil.monitoring.performance import DayPerformance, daily_performance
from vigil.monitoring.retrain import retrain_reasons


def frame(rng: np.random.Generator, n: int, amount_scale: float = 1.0) -> pd.DataFrame:
    data = {name: rng.gamma(2.0, 10.0, n) for name in spec.SERVED_INPUTS}
    data["tx_amount"] = data["tx_amount"] * amount_scale
    data[spec.WEEKEND] = rng.integers(0, 2, n)
    data[spec.NIGHT] = (rng.uniform(size=n) < 0.15).astype(int)
    data["score"] = rng.beta(1, 30, n)
    return pd.DataFrame(data)


def test_weekend_flag_is_left_out_of_windows_shorter_than_a_week() -> None:
    assert spec.WEEKEND not in drift_columns(86_400)
    assert spec.WEEKEND in drift_columns(7 * 86_400)
    assert "score" in drift_columns(86_400)


def test_a_shifted_column_drifts_and_a_stable_sample_does_not() -> None:
    rng = np.random.default_rng(0)
    reference = frame(rng, 5_000)
    columns = drift_columns(86_400)
    share, stable, _ = measure_drift(reference, frame(rng, 2_000), columns)
    assert share == 0.0 and not any(c.drifted for c in stable)
    share, shifted, compared = measure_drift(reference, frame(rng, 30_000, amount_scale=2.0), columns, max_rows=5_000)
    assert compared == 5_000  # large windows are sampled
    assert [c.column for c in shifted if c.drifted] == ["tx_amount"]
    assert share == 1 / len(columns)


def test_parse_reads_evidently_tests_for_the_drift_verdict() -> None:
    result = {
        "metrics": [
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1, "share": 0.5}},
            {
                "config": {"type": "evidently:metric_v2:ValueDrift", "column": "a", "method": "W", "threshold": 0.1},
                "value": 0.4,
            },
            {
                "config": {"type": "evidently:metric_v2:ValueDrift", "column": "b", "method": "W", "threshold": 0.1},
                "value": 0.01,
            },
        ],
        "tests": [
            {"id": "drift", "status": "FAIL", "metric_config": {"params": {"column": "a"}}},
            {"id": "drift", "status": "SUCCESS", "metric_config": {"params": {"column": "b"}}},
        ],
    }
    share, columns = _parse(result, ["a", "b"])
    assert share == 0.5
    assert [(c.column, c.drifted) for c in columns] == [("a", True), ("b", False)]
    window = WindowDrift("2018-01-01", "2018-01-02", "3", 10, 10, share, columns, "drift/x.html")
    assert WindowDrift.from_dict(window.as_dict()) == window


def predictions(rng: np.random.Generator, days: int, good: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = 400 * days
    fraud = (rng.uniform(size=n) < 0.05).astype(int)
    score = np.where(fraud == 1, rng.uniform(0.5, 1, n), rng.uniform(0, 0.6, n)) if good else rng.uniform(0, 1, n)
    frame = pd.DataFrame(
        {
            "transaction_id": np.arange(n),
            "tx_datetime": pd.Timestamp("2018-05-01") + pd.to_timedelta(np.arange(n) * (86_400 * days // n), unit="s"),
            "customer_id": rng.integers(0, 300, n),
            "score": score,
            "version": "2",
            "fallback": False,
        }
    )
    return frame, pd.DataFrame({"transaction_id": np.arange(n), "tx_fraud": fraud})


def test_daily_performance_alerts_when_ap_drops_below_the_expected_level() -> None:
    rng = np.random.default_rng(1)
    good, labels = predictions(rng, 2, good=True)
    days = daily_performance(good, labels, {"2": 0.6})
    assert len(days) == 2 and not any(d.alert for d in days)
    assert all(d.ap > 0.5 for d in days)
    bad, labels = predictions(rng, 2, good=False)
    assert all(d.alert for d in daily_performance(bad, labels, {"2": 0.6}))
    assert not any(d.alert for d in daily_performance(bad, labels, {"2": 0.6}, min_frauds=10_000))
    assert daily_performance(bad.assign(fallback=True), labels, {"2": 0.6}) == []  # a fallback is not the model


def test_retraining_reasons_name_their_trigger() -> None:
    result = MonitorResult(newest=pd.Timestamp("2018-06-30"))
    assert retrain_reasons(result, pd.Timestamp("2018-06-20"), every_days=30) == []
    assert retrain_reasons(result, pd.Timestamp("2018-05-01"), every_days=30)[0].startswith("schedule:")
    result.drift_alerts = [WindowDrift("2018-06-29", "2018-06-30", "1", 500, 500, 0.4)]
    result.performance_alerts = [DayPerformance("2018-06-22", "1", 500, 20, 0.8, 0.2, 0.1, 0.7, True)]
    reasons = retrain_reasons(result, None, None)
    assert [r.split(":")[0] for r in reasons] == ["drift", "performance"]


def test_prediction_log_entries_decode_to_the_answers() -> None:
    from scoring.metrics import ServiceMetrics
    from scoring.prediction_log import ENTRY_ROWS, PredictionLog
    from vigil.monitoring.predictions import decode_entries

    rng = np.random.default_rng(2)
    n = ENTRY_ROWS + 5  # two entries
    results = [
        {
            "transaction_id": i,
            "score": float(rng.uniform()),
            "model": {"version": "4"},
            "fallback": i % 7 == 0,
            "fallback_reason": "timeout" if i % 7 == 0 else None,
            "latency_ms": 1.25,
        }
        for i in range(n)
    ]
    matrix = rng.normal(size=(n, len(spec.SERVED_INPUTS))).astype(np.float32)
    context = np.column_stack([1_530_000_000 + np.arange(n), np.arange(n) % 50, np.arange(n) % 90]).astype(np.int64)
    half = n // 2
    log = PredictionLog(None, "predictions", ServiceMetrics())
    entries = log.entries(
        [(results[:half], matrix[:half], context[:half], None), (results[half:], matrix[half:], context[half:], None)]
    )
    assert [e["rows"] for e in entries] == [ENTRY_ROWS, 5]
    frame = decode_entries(
        [
            (f"1-{i}".encode(), {k.encode(): str(v).encode() if not isinstance(v, bytes) else v for k, v in e.items()})
            for i, e in enumerate(entries)
        ]
    )
    assert frame["transaction_id"].tolist() == list(range(n))
    assert frame["fallback"].tolist() == [i % 7 == 0 for i in range(n)]
    assert frame["reason"].tolist()[:2] == ["timeout", ""]
    assert frame["ts"].tolist() == context[:, 0].tolist()
    assert frame["terminal_id"].tolist() == context[:, 2].tolist()
    np.testing.assert_allclose(frame[list(spec.SERVED_INPUTS)].to_numpy(), matrix, rtol=1e-6)
    assert frame["stream_id"].is_unique


def as_fields(entries: list[dict[str, object]]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [
        (f"1-{i}".encode(), {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in e.items()})
        for i, e in enumerate(entries)
    ]


def test_declared_answers_are_logged_with_their_inputs_by_name() -> None:
    """A declared repo's versions log their own inputs, named in each entry: a champion on one
    service, then one on another, decode to one column per input (NaN where a version has none)."""
    from scoring.metrics import ServiceMetrics
    from scoring.prediction_log import PredictionLog
    from vigil.monitoring.drift import drift_columns
    from vigil.monitoring.predictions import decode_entries

    def answers(ids: range, version: str) -> list[dict[str, object]]:
        return [
            {"payment_id": i, "score": 0.1, "model": {"version": version}, "fallback": False,
             "fallback_reason": None, "latency_ms": 1.0, "decision": "allow", "reasons": []}
            for i in ids
        ]  # fmt: skip

    context = np.array([[1_770_000_000, 7, -1]] * 3, np.int64)
    log = PredictionLog(None, "predictions", ServiceMetrics(), event_id="payment_id")
    first, second = ("card_payments_1h", "amount"), ("card_payments_1h", "merchant_rate", "in_app")
    entries = log.entries(
        [
            (answers(range(3), "1"), np.full((3, 2), 1.0), context, first),
            (answers(range(3, 6), "1"), np.full((3, 2), 2.0), context, first),
            (answers(range(6, 9), "2"), np.full((3, 3), 3.0), context, second),
        ]
    )
    assert [e["rows"] for e in entries] == [6, 3]
    frame = decode_entries(as_fields(entries))
    assert frame["transaction_id"].tolist() == list(range(9))
    assert list(frame.columns[-4:]) == ["card_payments_1h", "amount", "merchant_rate", "in_app"]
    assert frame["card_payments_1h"].tolist() == [1.0] * 3 + [2.0] * 3 + [3.0] * 3
    assert frame["amount"].isna().tolist() == [False] * 6 + [True] * 3
    reference = pd.DataFrame(columns=["card_payments_1h", "merchant_rate", "score", "tx_fraud", "tx_datetime"])
    assert drift_columns(86_400, reference) == ["card_payments_1h", "merchant_rate", "score"]


def test_another_repo_has_its_own_folders_and_streams(tmp_path: Path) -> None:
    from vigil.settings import PROJECT_ROOT, Settings

    handbook = Settings(key_prefix="t")
    assert handbook.repo_scope is None and handbook.events_stream == "t:events"
    payments = Settings(key_prefix="t", feature_repo=PROJECT_ROOT / "examples" / "payments")
    assert payments.repo_scope == "payments"
    assert (payments.events_stream, payments.prediction_stream) == ("t:payments:events", "t:payments:predictions")
    assert payments.data_dir == PROJECT_ROOT / "data" / "repos" / "payments"
    assert payments.reports_dir == PROJECT_ROOT / "reports" / "repos" / "payments"
    assert payments.registry_dir == PROJECT_ROOT / "mlflow" / "repos" / "payments"
    chosen = Settings(feature_repo=PROJECT_ROOT / "examples" / "payments", data_dir=tmp_path)
    assert chosen.data_dir == tmp_path and chosen.event_log == tmp_path / "offline"
