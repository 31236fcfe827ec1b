"""`make demo`: the main job end to end on a simulated world, with a closing summary.

Today it covers the feature plane: simulate transactions, replay them through the
streaming flow into Feast's online store, and check the served features against the
batch backfill and Feast's own `get_online_features` on `fraud_v1`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
import redis

from vigil.features.backfill import compute_features
from vigil.features.online import max_differences, online_features
from vigil.ingest import run_ingest
from vigil.online.feast_store import apply_repo, feast_features
from vigil.online.store import OnlineHistoryStore
from vigil.settings import Settings
from vigil.simulate import SimulationConfig, simulate
from vigil.stream_out import write_file


def main() -> int:
    settings = Settings()
    started = time.perf_counter()
    world_path = settings.data_dir / "demo" / "transactions.parquet"
    print("1/4 simulating 28 days of card transactions (2,000 customers, 4,000 terminals)")
    world = simulate(SimulationConfig(customers=2_000, terminals=4_000, days=28, seed=42))
    write_file([world], world_path)
    print(f"    {len(world):,} transactions, {int(world['tx_fraud'].sum()):,} frauds -> {world_path}")

    print("2/4 registering the Feast repo and replaying through the feature flow (2 workers)")
    store = apply_repo(settings)
    from flows.sources import FileReplaySource

    result = run_ingest(
        settings, lambda n: FileReplaySource(world_path, 7.0, shards=n), processes=2, expected_events=2 * len(world)
    )

    print("3/4 checking served features against the batch backfill")
    online = OnlineHistoryStore(redis.Redis.from_url(settings.redis_url), settings.feast_project)
    ours = online_features(world, online)
    worst = max(max_differences(ours, compute_features(world)).values())

    print("4/4 asking Feast itself for fraud_v1 (get_online_features)")
    sample = world.sample(200, random_state=0)
    latencies = []
    feast_parts = []
    for i in range(len(sample)):
        t0 = time.perf_counter()
        feast_parts.append(feast_features(store, sample.iloc[i : i + 1]))
        latencies.append((time.perf_counter() - t0) * 1000)
    feast_frame = pd.concat(feast_parts, ignore_index=True)
    feast_worst = max(
        max_differences(feast_frame, ours[ours["transaction_id"].isin(sample["transaction_id"])]).values()
    )

    print("\n=== Vigil demo summary ===")
    print(
        f"  ingest: {result.transactions:,} transactions + {result.labels:,} label events in "
        f"{result.seconds:.1f} s ({result.transactions_per_second:,.0f} tx/s), {result.dead_letters} dead letters"
    )
    print(f"  features: served == backfill for all {len(world):,} transactions (max |diff| {worst:.2g})")
    print(
        f"  Feast fraud_v1: == served for {len(sample)} transactions (max |diff| {feast_worst:.2g}); "
        f"get_online_features p50 {np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms"
    )
    print(f"  data: {settings.data_dir}; dead letters: stream {settings.deadletter_stream}")
    print(f"  total {time.perf_counter() - started:.0f} s")
    return 0 if worst <= 1e-9 and feast_worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
