"""`make demo`: the main job end to end on a simulated world, with a closing summary.

Simulate six weeks of card payments; replay five through the declared handbook repo's
feature flow (`feature_repo`: its features declared with Feast's objects) into the
online store and the offline event log; check the served features, and stock Feast's
get_online_features on the same repo, against the backfill;
train and register a model on the repo's `fraud_v3` service in MLflow and run the promotion
gate; start the scoring service; score the sixth week's payments over HTTP; monitor them;
print counts, latency percentiles, model metrics and where everything is.
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

from flows.declared import DeclaredReplaySource, build_flow, default_sinks, run_to_end
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.declared.training import default_split, logged_events, training_set, version_params
from vigil.lifecycle.promotion import promote
from vigil.lifecycle.training import train_and_register
from vigil.monitoring.monitor import MonitorConfig, run_monitor
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo
from vigil.online.store import delete_namespace
from vigil.service_process import background_service, events_body
from vigil.settings import PROJECT_ROOT, Settings
from vigil.simulate import SimulationConfig, simulate
from vigil.stream_out import write_file

REPO = PROJECT_ROOT / "feature_repo"
SERVICE = "fraud_v3"


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
    settings = base.model_copy(update={**updates, "feature_repo": REPO})
    delete_namespace(settings.redis_url, settings.feast_project, settings.key_prefix)  # a rerun starts clean
    for old in ("offline", "deadletter.jsonl", "predictions", "monitoring"):
        target = settings.data_dir / old
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    started = time.perf_counter()
    declared = load_declared(REPO)
    fields = list(declared.events.fields)
    world_path = settings.data_dir / "transactions.parquet"
    on_terminal = sys.stderr.isatty()  # progress bars on a terminal; a redirected log gets the lines only
    print("1/7 simulating 42 days of card payments (2,000 customers, 4,000 terminals)")
    world = simulate(SimulationConfig(customers=2_000, terminals=4_000, days=42, seed=42))
    cut = world["tx_datetime"].min() + pd.Timedelta(days=35)
    history, new = world[world["tx_datetime"] < cut], world[world["tx_datetime"] >= cut]
    write_file([history], world_path)
    print(f"    {len(world):,} payments, {int(world['tx_fraud'].sum()):,} frauds; the last week is new traffic")

    print(f"2/7 replaying 35 days through the feature flow of the declared repo {REPO.relative_to(PROJECT_ROOT)}")
    sinks = default_sinks(settings, declared)
    replay_started = time.perf_counter()
    run_to_end(build_flow(DeclaredReplaySource(world_path, declared, label_delay_days=7.0), sinks, settings, declared))
    replay_seconds = time.perf_counter() - replay_started

    print(f"3/7 checking the served features ({SERVICE}) against the backfill")
    store = DeclaredOnlineStore(connect(settings.redis_url), settings.key_prefix, declared)
    recent = history[history["tx_datetime"] >= cut - pd.Timedelta(days=7)]
    served = store.features(recent[fields], SERVICE).set_index("transaction_id")
    backfill = compute_declared(declared, history, service=SERVICE).set_index("transaction_id").loc[served.index]
    worst = float((served - backfill).abs().max().max())
    # Stock Feast's client on the same repo and store: the values as of each payment's own time.
    feast_store = apply_repo(settings)
    asked = recent.sample(min(500, len(recent)), random_state=0)
    answer = feast_store.get_online_features(
        features=feast_store.get_feature_service(SERVICE), entity_rows=asked[fields].to_dict("records")
    ).to_df()
    from_feast = answer.set_index(asked["transaction_id"].to_numpy())[backfill.columns]
    feast_worst = float((from_feast - backfill.loc[from_feast.index]).abs().max().max())

    print(f"4/7 training an XGBoost model on {SERVICE}, each payment as of its own time; MLflow registry and gate")
    data = training_set(declared, logged_events(declared, settings.event_log), SERVICE)
    params = {"n_estimators": 200, **version_params(data.service, "xgboost")}
    report = train_and_register(
        settings, data.frame, "xgboost", params=params, split=default_split(data), show_progress=on_terminal
    )
    decision = promote(
        settings, training_set(declared, logged_events(declared, settings.event_log), every_feature=True).frame
    )

    print("5/7 starting the scoring service and scoring the new week over HTTP")
    scored = new.head(3_000)
    latencies, scores, fallbacks = [], [], 0
    with background_service(settings) as url, httpx.Client(base_url=url, timeout=5) as client:
        # A bar on a terminal; a redirected log gets the summary only.
        for i in tqdm(range(len(scored)), desc="score", unit="payment", disable=not on_terminal):
            body = events_body(fields, scored.iloc[i : i + 1])["events"][0]
            t0 = time.perf_counter()
            answer = client.post("/v1/score", json=body).json()
            latencies.append((time.perf_counter() - t0) * 1000)
            scores.append(answer["score"])
            fallbacks += bool(answer["fallback"])

    print("6/7 monitoring the scored traffic against the model's reference (Evidently drift, live AP)")
    monitored = run_monitor(settings, MonitorConfig(lookback_days=7))

    print("7/7 summary")
    labels = scored["tx_fraud"].to_numpy()
    m = report.metrics
    stats = sinks.stats
    print("\n=== Vigil demo summary ===")
    print(
        f"  ingest: {stats.transactions:,} payments + {stats.labels:,} labels in {replay_seconds:.1f} s "
        f"({(stats.transactions + stats.labels) / replay_seconds:,.0f} events/s), {stats.dead_letters} dead letters"
    )
    print(f"  features: served == backfill ({SERVICE}, {len(served):,} payments, max |diff| {worst:.2g})")
    print(
        f"  Feast: get_online_features == backfill ({SERVICE}, {len(from_feast):,} payments, "
        f"max |diff| {feast_worst:.2g})"
    )
    if m is not None:
        print(
            f"  model: fraud-detector v{report.version} ({report.model_kind}, {SERVICE}), test week AUC {m.auc:.3f}, "
            f"AP {m.ap:.3f}, CP@100 {m.cp_at_100:.3f}; gate: {decision.reason}"
        )
    print(
        f"  scoring: {len(scored):,} new payments over HTTP, p50 {np.percentile(latencies, 50):.2f} ms, "
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
        f"  where: repo {REPO}; data {settings.data_dir}; MLflow {settings.tracking_uri}; predictions stream "
        f"{settings.prediction_stream}; dead letters {settings.deadletter_stream}"
    )
    print(f"  total {time.perf_counter() - started:.0f} s")
    return 0 if max(worst, feast_worst) <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
