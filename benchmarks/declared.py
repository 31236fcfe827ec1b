"""`make bench` for declared features: the compiled definition of feature_repo
(fraud_v1 with Feast's objects alone) beside the hand-written handbook code, same run.

- backfill: every event's features as of its own time (declared: fraud_v1's 14, and
  fraud_v3's 22, 8 of them by the repo's window functions; hand-written: all 22 of fraud_v3);
- replay: a file through each one's Bytewax flow into Redis, one process;
- request time: one event's features read from the online store, p50/p99 over
  `--requests` events of the last week, fraud_v1 and fraud_v3 (the hand-written path:
  `online_features`, which computes all 22).

Writes bench-results/declared.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.features import HANDBOOK, RESULTS, bench_settings, cleanup
from flows.declared import DeclaredReplaySource, build_flow, default_sinks, run_to_end
from flows.sources import FileReplaySource
from vigil.declared import load_declared
from vigil.declared.backfill import compute_declared
from vigil.declared.online import DeclaredOnlineStore
from vigil.features.backfill import compute_features
from vigil.features.online import online_features
from vigil.ingest import run_ingest
from vigil.online.connection import connect
from vigil.online.feast_store import apply_repo
from vigil.online.store import OnlineHistoryStore
from vigil.settings import PROJECT_ROOT
from vigil.simulate import SimulationConfig, simulate

REPO = PROJECT_ROOT / "feature_repo"


def timed(work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - started


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replay-rows", type=int, default=300_000, help="rows of the file replayed by each flow")
    parser.add_argument("--requests", type=int, default=2_000, help="single-event reads timed on each path")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    declared = load_declared(REPO)
    path = HANDBOOK / "transactions.parquet"
    frame = pd.read_parquet(path) if path.is_file() else simulate(SimulationConfig(customers=5_000, days=183))
    results: dict[str, object] = {"events": len(frame), "source": str(path) if path.is_file() else "simulated"}

    compute_declared(declared, frame.head(1_000), service="fraud_v3")  # compiled once (numba), as a service would be
    results["backfill"] = {
        "declared_fraud_v1_s": round(timed(lambda: compute_declared(declared, frame)), 2),
        "declared_fraud_v3_s": round(timed(lambda: compute_declared(declared, frame, service="fraud_v3")), 2),
        "hand_written_fraud_v3_s": round(timed(lambda: compute_features(frame)), 2),
    }

    replayed = frame.sort_values("tx_datetime").head(args.replay_rows)
    file = RESULTS / "declared-replay.parquet"
    replayed.to_parquet(file)
    ours, theirs = bench_settings("decl"), bench_settings("hand")
    try:
        sinks = default_sinks(ours, declared)
        declared_s = timed(lambda: run_to_end(build_flow(DeclaredReplaySource(file, declared), sinks, ours, declared)))
        apply_repo(theirs)
        hand = run_ingest(theirs, lambda n: FileReplaySource(file, 7.0, shards=n), 1, show_progress=False)
        results["replay"] = {
            "rows": len(replayed),
            "declared_events_per_s": round(len(replayed) / declared_s),
            "hand_written_events_per_s": round(hand.transactions / hand.seconds),
        }
        recent = replayed[replayed["tx_datetime"] > replayed["tx_datetime"].max() - pd.Timedelta(days=7)]
        asked = recent.sample(min(args.requests, len(recent)), random_state=0)
        store = DeclaredOnlineStore(connect(ours.redis_url), ours.key_prefix, declared)
        history = OnlineHistoryStore(connect(theirs.redis_url), theirs.feast_project)
        declared_ms = [timed(lambda: store.features(asked.iloc[i : i + 1])) for i in range(len(asked))]  # noqa: B023
        v3_ms = [timed(lambda: store.features(asked.iloc[i : i + 1], "fraud_v3")) for i in range(len(asked))]  # noqa: B023
        hand_ms = [timed(lambda: online_features(asked.iloc[i : i + 1], history)) for i in range(len(asked))]  # noqa: B023
        results["request"] = {
            "declared": percentiles(declared_ms),
            "declared_fraud_v3": percentiles(v3_ms),
            "hand_written": percentiles(hand_ms),
        }
        same = store.features(asked, "fraud_v3").set_index("transaction_id")
        reference = online_features(asked, history).set_index("transaction_id")[same.columns]
        results["request"]["largest_difference"] = float(np.abs(same - reference.loc[same.index]).max().max())  # type: ignore[index]
    finally:
        cleanup(ours)
        cleanup(theirs)
        Path(file).unlink(missing_ok=True)
    (RESULTS / "declared.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
