"""The offline side at scale: backfill throughput (local engine and Spark `local[2]`, same
days), and `vigil train` on its last 30 days with 60 and with 120 days of history in the
store, at four times the handbook's daily volume: wall time and peak memory.

    python -m benchmarks.offline [--scale 4] [--skip-spark]

Target: the peak memory of the two trainings within 20 % of each other (memory follows the
window, not the history). Writes bench-results/offline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.features import HANDWRITTEN_REPO
from flows.sources import FileReplaySource
from vigil.ingest import run_ingest
from vigil.offline.backfill import backfill_days
from vigil.online.store import delete_namespace
from vigil.settings import PROJECT_ROOT, Settings
from vigil.simulate import SimulationConfig, simulate

ROOT = PROJECT_ROOT / "data" / "bench" / "offline"


def store(name: str, frame: pd.DataFrame) -> Settings:
    folder = ROOT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    settings = Settings(
        feature_repo=HANDWRITTEN_REPO,
        feast_project=name,
        key_prefix=name,
        data_dir=folder,
        mlflow_tracking_uri=f"sqlite:///{folder}/mlflow.db",
        mlflow_artifacts_dir=folder / "artifacts",
    )
    path = folder / "world.parquet"
    frame.to_parquet(path)
    started = time.perf_counter()
    result = run_ingest(settings, lambda n: FileReplaySource(path, 7.0, shards=n), 2, show_progress=False)
    print(
        f"  {name}: ingested {result.transactions:,} transactions in {time.perf_counter() - started:.0f} s", flush=True
    )
    path.unlink()
    return settings


def train(settings: Settings, first: str, last: str) -> dict[str, Any]:
    """`vigil train` on days [first, last] (then its delay and test week): wall time, peak RSS."""
    from vigil.service_process import service_env

    env = service_env(settings)
    command = [str(Path(sys.executable).parent / "vigil"), "train", "--train-start", first, "--train-end", last]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    out, err = process.stdout.read() if process.stdout else "", process.stderr.read() if process.stderr else ""
    if status != 0:
        raise RuntimeError(f"vigil train failed: {err[-2000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024), "output": out.strip()[-600:]}


def backfill_throughput(settings: Settings, days: list[str], spark: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    engines = [("local", None), *([("spark", "local[2]")] if spark else [])]
    for engine, master in engines:
        folder = settings.data_dir / f"features-{engine}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        report = backfill_days(settings.event_log, folder, days[0], days[-1], engine=engine, spark_master=master)
        seconds = time.perf_counter() - started
        out[engine] = {"days": len(report.computed), "rows": report.rows, "seconds": round(seconds, 1),
                       "rows_per_s": round(report.rows / seconds)}  # fmt: skip
        print(f"  backfill {engine}: {report.rows:,} rows of {len(days)} days in {seconds:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=4, help="times the handbook's daily volume")
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:6]
    world = simulate(SimulationConfig(customers=5_000 * args.scale, terminals=10_000 * args.scale, days=120, seed=4))
    days = sorted(world["tx_datetime"].dt.strftime("%Y-%m-%d").unique())
    print(f"world: {len(world):,} transactions over {len(days)} days ({len(world) / len(days):,.0f} a day)")
    short = store(f"off60{tag}", world[world["tx_datetime"] < pd.Timestamp(days[60])])
    long = store(f"off120{tag}", world)
    results: dict[str, Any] = {"scale": args.scale, "transactions_per_day": round(len(world) / len(days))}
    try:
        results["backfill"] = backfill_throughput(long, days[60:67], not args.skip_spark)
        trainings: dict[str, Any] = {}
        for name, settings, last_day in (("60_days", short, days[59]), ("120_days", long, days[119])):
            # 30 training days, then the 7-day delay and the 7-day test week up to the last day.
            end = str((pd.Timestamp(last_day) - pd.Timedelta(days=14)).date())
            first = str((pd.Timestamp(end) - pd.Timedelta(days=29)).date())
            trainings[name] = train(settings, first, end)
            print(f"  train on {first}..{end} with {name} in the store: {trainings[name]['seconds']} s, "
                  f"peak {trainings[name]['peak_rss_mib']} MiB", flush=True)  # fmt: skip
        # A long-lived store: every day already in the feature table.
        backfill_days(long.event_log, long.offline_dir, days[0], days[-1])
        end = str((pd.Timestamp(days[119]) - pd.Timedelta(days=14)).date())
        trainings["120_days_all_backfilled"] = train(long, str((pd.Timestamp(end) - pd.Timedelta(days=29)).date()), end)
        print(f"  the same with all 120 days in the feature table: {trainings['120_days_all_backfilled']}", flush=True)
        results["train_last_30_days"] = trainings
        ratio = trainings["120_days"]["peak_rss_mib"] / trainings["60_days"]["peak_rss_mib"]
        results["peak_memory_ratio_120_over_60"] = round(ratio, 3)
        print(f"peak memory, 120 days over 60: {ratio:.2f} (target within 1.2)")
    finally:
        for settings in (short, long):
            delete_namespace(settings.redis_url, settings.feast_project, settings.key_prefix)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "offline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
