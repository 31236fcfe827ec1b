"""`make demo`: the main job end to end on a simulated world, with a closing summary.

Simulate six weeks of card transactions; replay five through the streaming feature flow
into Feast's online store; check the served features against the batch backfill and
Feast's own `get_online_features`; train and register a model in MLflow and run the
promotion gate; start the scoring service; score the sixth week's transactions over
HTTP; print counts, latency percentiles, model metrics and where everything is.
"""

from __future__ import annotations

import shutil
import sys
import time

import httpx
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from tqdm import tqdm

from flows.sources import FileReplaySource
from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.ingest import run_ingest
from vigil.lifecycle.promotion import promote
from vigil.lifecycle.training import train_and_register
from vigil.monitoring.monitor import MonitorConfig, run_monitor
from vigil.offline import training_set
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo, feast_features
from vigil.online.store import OnlineHistoryStore, delete_namespace
from vigil.service_process import background_service, transaction_body
from vigil.settings import PROJECT_ROOT, Settings
from vigil.simulate import SimulationConfig, simulate
from vigil.stream_out import write_file


def main() -> int:
    base = Settings()
    # Its own Feast project, key prefix, data folder and (unless MLFLOW_TRACKING_URI names one)
    # MLflow registry, so the demo never mixes with the quick start's or real data: after it,
    # `vigil train` still registers version 1 in mlflow/mlflow.db.
    updates: dict[str, object] = {
        "feast_project": "demo",
        "key_prefix": "demo",
        "data_dir": base.data_dir / "demo",
        "reports_dir": base.reports_dir / "demo",
    }
    if base.mlflow_tracking_uri is None:
        registry = PROJECT_ROOT / "mlflow" / "demo"
        shutil.rmtree(registry, ignore_errors=True)  # a rerun starts clean
        registry.mkdir(parents=True)
        updates["mlflow_tracking_uri"] = f"sqlite:///{registry / 'mlflow.db'}"
        updates["mlflow_artifacts_dir"] = registry / "artifacts"
    settings = base.model_copy(update=updates)
    delete_namespace(settings.redis_url, settings.feast_project, settings.key_prefix)  # a rerun starts clean
    for old in ("offline", "deadletter.jsonl", "predictions", "monitoring"):
        target = settings.data_dir / old
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    started = time.perf_counter()
    world_path = settings.data_dir / "transactions.parquet"
    on_terminal = sys.stderr.isatty()  # progress bars on a terminal; a redirected log gets the lines only
    print("1/7 simulating 42 days of card transactions (2,000 customers, 4,000 terminals)")
    world = simulate(SimulationConfig(customers=2_000, terminals=4_000, days=42, seed=42))
    cut = world["tx_datetime"].min() + pd.Timedelta(days=35)
    history, new = world[world["tx_datetime"] < cut], world[world["tx_datetime"] >= cut]
    write_file([history], world_path)
    print(f"    {len(world):,} transactions, {int(world['tx_fraud'].sum()):,} frauds; the last week is new traffic")

    print("2/7 registering the Feast repo and replaying 35 days through the feature flow (2 workers)")
    store = apply_repo(settings)
    result = run_ingest(
        settings,
        lambda n: FileReplaySource(world_path, 7.0, shards=n),
        processes=2,
        expected_events=2 * len(history),
        show_progress=on_terminal,
    )

    print("3/7 checking served features against the batch backfill and Feast's get_online_features")
    online = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    recent = history[history["tx_datetime"] >= cut - pd.Timedelta(days=7)]
    ours = online_features(recent, online)
    worst = max(
        max_differences(
            ours, compute_features(history)[lambda f: f.transaction_id.isin(recent.transaction_id)]
        ).values()
    )
    sample = recent.sample(200, random_state=0)
    feast_worst = max(
        max_differences(
            feast_features(store, sample), ours[ours["transaction_id"].isin(sample["transaction_id"])]
        ).values()
    )

    print("4/7 training an XGBoost model on a point-in-time training set; MLflow registry and promotion gate")
    data = training_set(store, settings)
    report = train_and_register(settings, data, "xgboost", params={"n_estimators": 200}, show_progress=on_terminal)
    decision = promote(settings, data)

    print("5/7 starting the scoring service and scoring the new week over HTTP")
    scored = new.head(3_000)
    latencies, scores, fallbacks = [], [], 0
    with background_service(settings) as url, httpx.Client(base_url=url, timeout=5) as client:
        # A bar on a terminal; a redirected log gets the summary only.
        for row in tqdm(scored.itertuples(), total=len(scored), desc="score", unit="tx", disable=not on_terminal):
            t0 = time.perf_counter()
            answer = client.post("/v1/score", json=transaction_body(row)).json()
            latencies.append((time.perf_counter() - t0) * 1000)
            scores.append(answer["score"])
            fallbacks += bool(answer["fallback"])

    print("6/7 monitoring the scored traffic against the model's reference (Evidently drift, live AP)")
    monitored = run_monitor(settings, MonitorConfig(lookback_days=7))

    print("7/7 summary")
    labels = scored["tx_fraud"].to_numpy()
    m = report.metrics
    print("\n=== Vigil demo summary ===")
    print(
        f"  ingest: {result.transactions:,} transactions + {result.labels:,} label events in {result.seconds:.1f} s "
        f"({result.transactions_per_second:,.0f} tx/s), {result.dead_letters} dead letters"
    )
    print(
        f"  features: served == backfill (max |diff| {worst:.2g}); Feast fraud_v1 == served (max |diff| "
        f"{feast_worst:.2g})"
    )
    if m is not None:
        print(
            f"  model: fraud-detector v{report.version} ({report.model_kind}), test week AUC {m.auc:.3f}, "
            f"AP {m.ap:.3f}, CP@100 {m.cp_at_100:.3f}; gate: {decision.reason}"
        )
    print(
        f"  scoring: {len(scored):,} new transactions over HTTP, p50 {np.percentile(latencies, 50):.2f} ms, "
        f"p99 {np.percentile(latencies, 99):.2f} ms (client side, one at a time), {fallbacks} fallbacks"
    )
    if labels.sum() and labels.sum() < len(labels):
        print(
            f"  live quality on the new week: AUC {roc_auc_score(labels, scores):.3f}, "
            f"AP {average_precision_score(labels, scores):.3f} ({int(labels.sum())} frauds)"
        )
    for window in monitored.windows:
        print(
            f"  drift: window {window.start} ({window.rows:,} answers) drift share {window.share:.2f} "
            f"[{', '.join(window.drifted_columns) or 'no column drifted'}]; "
            f"{len(monitored.drift_alerts)} alert(s); report {settings.reports_dir / (window.report or '')}"
        )
    print(f"  monitoring index: {monitored.index}; gauges {monitored.metrics_file}")
    print(
        f"  where: data {settings.data_dir}; MLflow {settings.tracking_uri}; predictions stream "
        f"{settings.prediction_stream}; dead letters {settings.deadletter_stream}"
    )
    print(f"  total {time.perf_counter() - started:.0f} s")
    return 0 if worst <= 1e-9 and feast_worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
