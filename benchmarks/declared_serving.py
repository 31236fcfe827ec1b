"""`make bench` for the scoring service of a declared repo, beside the hand-written handbook
service, same run, same world, same load generator:

- the hand-written service (`feature_repo/`, fraud_v1's 14 inputs, an XGBoost champion);
- the declared service (`feature_repo`, fraud_v1 with Feast's objects alone, an XGBoost
  champion with the same parameters), its facts written by the repo's own flow;

each under `vigil serve` with 2 workers: one event per request, open loop at 500 and 1,000
requests/s (p50/p99, errors, fallback answers), the batch endpoint, 1,000 events per
call, 4 clients (events/s), and the CPU time one worker spends per request, one at a time
(`/proc/<pid>/stat`). The target: the declared service's p99 and batch throughput
within 10 % of the hand-written one's. Writes bench-results/declared-serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from benchmarks.features import HANDBOOK, RESULTS, bench_settings, cleanup
from benchmarks.machine import describe, stalls
from benchmarks.serving import bodies, env_for, load, prepare, warm_up
from flows.declared import DeclaredReplaySource, build_flow, default_sinks, run_to_end
from vigil.declared import load_declared
from vigil.declared.training import default_split, logged_events, training_set, version_params
from vigil.lifecycle.training import train_and_register
from vigil.service_process import events_body, serve_process
from vigil.settings import PROJECT_ROOT, Settings

REPO = PROJECT_ROOT / "feature_repo"
TARGET = 1.10


def prepare_declared(settings: Settings, world: Path) -> None:
    """The world replayed through the repo's flow, an XGBoost champion trained on fraud_v1."""
    declared = load_declared(REPO)
    run_to_end(
        build_flow(DeclaredReplaySource(world, declared, 7.0), default_sinks(settings, declared), settings, declared)
    )
    data = training_set(declared, logged_events(declared, settings.event_log), "fraud_v1")
    params = version_params(data.service, "xgboost")
    train_and_register(settings, data.frame, "xgboost", params=params, split=default_split(data), show_progress=False)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_request(settings: Settings, single: list[dict[str, Any]], count: int = 2_000) -> float | None:
    """Milliseconds of one worker's CPU per request, `count` requests one at a time (None
    where /proc does not say)."""
    with serve_process(env_for(settings), workers=1) as url:
        port = url.rsplit(":", 1)[1]
        pids = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and f"--port\0{port}\0".encode() in _cmdline(p)
        ]
        if len(pids) != 1:
            return None
        with httpx.Client(base_url=url, timeout=10) as client:
            for body in single[:200]:
                client.post("/v1/score", json=body)
            before = cpu_seconds(pids[0])
            for i in range(count):
                client.post("/v1/score", json=single[i % len(single)])
            return round((cpu_seconds(pids[0]) - before) / count * 1000, 3)


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


def measure(
    settings: Settings, single: list[dict[str, Any]], batches: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    with serve_process(env_for(settings), workers=2) as url:
        chains = [[{"url": f"{url}/v1/score", "body": b}] for b in single]
        warm_up(chains)
        out: dict[str, Any] = {
            str(rate): load({"mode": "open", "chains": chains, "rate": rate, "seconds": seconds})
            for rate in (500, 1000)
        }
        out["batch_1000"] = load(
            {
                "mode": "closed",
                "chains": [[{"url": f"{url}/v1/score/batch", "body": b}] for b in batches],
                "clients": 4,
                "seconds": 8,
                "rows_per_call": 1000,
                "fresh_connections": True,
            }
        )
    out["cpu_ms_per_request"] = cpu_per_request(settings, single)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of each open-loop run")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    hand = bench_settings("shand")
    ours = bench_settings("sdecl").model_copy(update={"feature_repo": REPO})
    try:
        asked = prepare(hand)  # the handbook's last weeks (or a simulated world), ingested and trained
        prepare_declared(ours, hand.data_dir / "world.parquet")
        schema = load_declared(REPO).events
        declared_single = events_body(list(schema.fields), asked)["events"]
        results: dict[str, Any] = {"machine": stalls(), "source": "handbook" if HANDBOOK.is_dir() else "simulated"}
        results["hand_written"] = measure(
            hand,
            bodies(asked),
            [{"transactions": bodies(asked.iloc[i : i + 1000])} for i in range(0, len(asked), 1000)],
            args.seconds,
        )
        results["declared"] = measure(
            ours,
            declared_single,
            [{schema.batch: declared_single[i : i + 1000]} for i in range(0, len(declared_single), 1000)],
            args.seconds,
        )
    finally:
        cleanup(hand)
        cleanup(ours)
    verdicts = {}
    for rate in ("500", "1000"):
        theirs, mine = results["hand_written"][rate], results["declared"][rate]
        verdicts[f"p99_at_{rate}"] = mine["p99_ms"] <= TARGET * theirs["p99_ms"] and not mine["fallback_answers"]
    batch_theirs = results["hand_written"]["batch_1000"]["rows_per_s"]
    verdicts["batch"] = results["declared"]["batch_1000"]["rows_per_s"] >= batch_theirs / TARGET
    results["within_10_percent"] = verdicts
    (RESULTS / "declared-serving.json").write_text(json.dumps(results, indent=2))
    rows = []
    for name in ("hand_written", "declared"):
        r = results[name]
        rows.append(
            {
                "service": name,
                **{
                    f"p50/p99 @{rate} (ms)": f"{r[rate]['p50_ms']:.2f} / {r[rate]['p99_ms']:.2f}"
                    for rate in ("500", "1000")
                },
                "fallbacks": sum(r[rate]["fallback_answers"] for rate in ("500", "1000")),
                "batch events/s": f"{r['batch_1000']['rows_per_s']:,.0f}",
                "CPU ms/request": r["cpu_ms_per_request"],
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    print("within 10 %:", verdicts)
    print(describe(results["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
