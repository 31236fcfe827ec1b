"""`make bench` for the feature plane: replay throughput and Feast's stock paths (freshness:
benchmarks/freshness.py).

Writes bench-results/features.json and prints a table. Uses the handbook file when
../shared is present (and then also checks the whole file's features), otherwise a
simulated world of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from flows.sources import FileReplaySource
from flows.state import CUSTOMER, EntityEvents, PartitionState, apply_events
from vigil.features import spec
from vigil.features.backfill import compute_features, epoch_seconds
from vigil.features.history import EntityHistory
from vigil.features.online import max_differences, online_features
from vigil.ingest import run_ingest
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo
from vigil.online.store import OnlineHistoryStore, delete_namespace
from vigil.settings import PROJECT_ROOT, Settings
from vigil.simulate import SimulationConfig, simulate

HANDBOOK = PROJECT_ROOT.parent / "shared" / "data" / "handbook"
RESULTS = PROJECT_ROOT / "bench-results"
# The hand-written handbook (its features coded in vigil/features/): the baseline each
# benchmark measures beside the declared default repo, feature_repo/.
HANDWRITTEN_REPO = PROJECT_ROOT / "benchmarks" / "handwritten_repo"


def bench_settings(tag: str) -> Settings:
    name = f"bench{tag}{uuid.uuid4().hex[:6]}"
    return Settings(
        feature_repo=HANDWRITTEN_REPO,
        feast_project=name,
        key_prefix=name,
        data_dir=PROJECT_ROOT / "data" / "bench" / name,
    )


def cleanup(settings: Settings) -> None:
    delete_namespace(settings.redis_url, settings.feast_project, settings.key_prefix)


def replay(path: Path, processes: int) -> tuple[dict[str, float], Settings]:
    settings = bench_settings(f"r{processes}")
    apply_repo(settings)
    result = run_ingest(settings, lambda n: FileReplaySource(path, 7.0, shards=n), processes, show_progress=False)
    return {
        "workers": processes,
        "transactions": result.transactions,
        "label_events": result.labels,
        "seconds": round(result.seconds, 2),
        "transactions_per_s": round(result.transactions / result.seconds),
        "label_events_per_s": round(result.labels / result.seconds),
    }, settings


def stock_feast_paths(frame: pd.DataFrame, rows: int = 1_000) -> dict[str, float]:
    """Feast's own write paths for the same history updates: push() per event, and
    write_to_online_store() in batches."""
    settings = bench_settings("stock")
    store = apply_repo(settings)
    events = frame.iloc[:rows]
    state = PartitionState()
    updates: list[tuple[int, EntityHistory]] = []
    for row in events.itertuples():
        batch = EntityEvents(
            CUSTOMER,
            np.array([row.customer_id]),
            epoch_seconds(pd.Series([row.tx_datetime])),
            np.array([row.transaction_id]),
            np.array([row.tx_amount]),
        )
        update = apply_events(state, batch, lambda kind, ids: [EntityHistory.empty() for _ in ids]).updates[0]
        updates.append((update.entity, update.history))

    def row_frame(items: list[tuple[int, EntityHistory]]) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": [e for e, _ in items],
                "tx_ts_list": [h.ts.tolist() for _, h in items],
                "tx_id_list": [h.tx_id.tolist() for _, h in items],
                "tx_amount_list": [h.value.tolist() for _, h in items],
                "event_timestamp": [datetime.fromtimestamp(int(h.ts[-1]), tz=UTC) for _, h in items],
            }
        )

    started = time.perf_counter()
    for item in updates:
        store.push("customer_history_push", row_frame([item]))
    push_rate = len(updates) / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(0, len(updates), 500):
        store.write_to_online_store(spec.CUSTOMER_VIEW, row_frame(updates[i : i + 500]))
    batch_rate = len(updates) / (time.perf_counter() - started)
    ours = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    started = time.perf_counter()
    for i in range(0, len(updates), 500):
        ours.write([(CUSTOMER, e, h) for e, h in updates[i : i + 500]])
    our_rate = len(updates) / (time.perf_counter() - started)
    cleanup(settings)
    return {
        "feast_push_rows_per_s": round(push_rate),
        "feast_write_to_online_store_rows_per_s": round(batch_rate),
        "vigil_pipelined_writer_rows_per_s": round(our_rate),
        "rows": len(updates),
    }


def whole_file_check(frame: pd.DataFrame, settings: Settings, reference: pd.DataFrame | None) -> dict[str, object]:
    """After the full replay: every transaction of the last week, as of its own time, equals the
    reference (earlier times need facts past the state horizon, which the flow drops by design)."""
    started = time.perf_counter()
    backfill = compute_features(frame)
    backfill_seconds = time.perf_counter() - started
    expected = reference if reference is not None else backfill
    backfill_diff = max(max_differences(backfill, expected).values()) if reference is not None else 0.0
    last_week = frame[frame["tx_datetime"] > frame["tx_datetime"].max() - pd.Timedelta(days=7)]
    store = OnlineHistoryStore(connect(settings.redis_url), settings.feast_project)
    started = time.perf_counter()
    served = online_features(last_week, store)
    rollup_seconds = time.perf_counter() - started
    checked = expected[expected["transaction_id"].isin(last_week["transaction_id"])]
    diff = max(max_differences(served, checked).values())
    return {
        "backfill_seconds": round(backfill_seconds, 2),
        "backfill_rows": len(frame),
        "backfill_max_abs_diff_vs_reference": backfill_diff,
        "online_checked_rows": len(last_week),
        "online_rollup_rows_per_s": round(len(last_week) / rollup_seconds),
        "online_max_abs_diff": diff,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()  # --help answers before minutes of work
    RESULTS.mkdir(exist_ok=True)
    if (HANDBOOK / "transactions.parquet").exists():
        path, label = HANDBOOK / "transactions.parquet", "handbook (1.17 M transactions)"
        reference: pd.DataFrame | None = pd.read_parquet(HANDBOOK / "features_reference.parquet")
    else:
        path = PROJECT_ROOT / "data" / "bench" / "world.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate(SimulationConfig(days=120, seed=1)).to_parquet(path)
        label, reference = "simulated world (120 days)", None
    frame = pd.read_parquet(path)
    print(f"data: {label}")
    results: dict[str, object] = {
        "data": label,
        "machine_cores": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    replays = []
    for workers in (1, 2):
        row, settings = replay(path, workers)
        target = " (target >= 50,000 tx/s)" if workers == 2 else ""
        print(
            f"replay, {workers} worker(s): {row['transactions_per_s']:,} tx/s{target} + "
            f"{row['label_events_per_s']:,} label events/s ({row['seconds']} s)"
        )
        replays.append(row)
        if workers == 2:
            results["whole_file"] = whole_file_check(frame, settings, reference)
            print(f"whole file: {results['whole_file']}")
        cleanup(settings)
    results["replay"] = replays
    results["stock_feast"] = stock_feast_paths(frame)
    print(f"stock Feast: {results['stock_feast']}")
    out = RESULTS / "features.json"
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"results -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
