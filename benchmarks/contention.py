"""Single requests while 10,000-row batches are scored by the same process.

    python -m benchmarks.contention            (part of `make bench`; about 2 minutes)

One `vigil serve` worker, the handbook's champion. Single requests arrive open-loop at
500/s for 8 s, twice: alone (the baseline), then beside a client sending 10,000-row batches
back to back. Reported: the singles' p50 / p99 / max, how many took longer than the 25 ms
deadline, fallbacks, and the batches' own latency. Results: bench-results/contention.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import httpx

from benchmarks.features import RESULTS, bench_settings, cleanup
from benchmarks.machine import describe, stalls
from benchmarks.serving import bodies, env_for, load, prepare, warm_up
from vigil.service_process import serve_process
from vigil.settings import Settings

RATE, SECONDS, BATCH_ROWS = 500, 8, 10_000


def batches_beside(url: str, body: dict[str, Any], stop: threading.Event, out: list[dict[str, float]]) -> None:
    """10,000-row batches back to back until `stop`; each one's seconds and fallbacks."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            answers = client.post(f"{url}/v1/score/batch", json=body).json()["results"]
            out.append({"seconds": time.perf_counter() - started, "fallbacks": sum(a["fallback"] for a in answers)})


def measure(settings: Settings, requests: list[dict[str, Any]]) -> dict[str, Any]:
    with serve_process(env_for(settings), workers=1) as url:
        single = [[{"url": f"{url}/v1/score", "body": b}] for b in requests]
        warm_up(single)
        result: dict[str, Any] = {"alone": load({"mode": "open", "chains": single, "rate": RATE, "seconds": SECONDS})}
        big = {"transactions": (requests * (BATCH_ROWS // len(requests) + 1))[:BATCH_ROWS]}
        stop, batches = threading.Event(), []
        sender = threading.Thread(target=batches_beside, args=(url, big, stop, batches), daemon=True)
        sender.start()
        time.sleep(0.5)  # the first batch is under way
        result["beside_batches"] = load({"mode": "open", "chains": single, "rate": RATE, "seconds": SECONDS})
        stop.set()
        sender.join(timeout=60)
        seconds = sorted(b["seconds"] for b in batches)
        result["batches"] = {
            "count": len(batches),
            "median_seconds": round(seconds[len(seconds) // 2], 3) if seconds else None,
            "max_seconds": round(seconds[-1], 3) if seconds else None,
            "fallback_answers": sum(b["fallbacks"] for b in batches),
        }
        return result


def row(name: str, r: dict[str, Any]) -> str:
    return (
        f"  {name:<34} p50 {r['p50_ms']:6.2f}  p99 {r['p99_ms']:7.2f}  max {r['max_ms']:7.2f} ms  "
        f"over 25 ms {r['over_25_ms']:>4} of {r['requests']:,}  fallbacks {r['fallback_answers']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    base = bench_settings("contention")
    settings = Settings(
        **{
            **base.model_dump(),
            "mlflow_tracking_uri": f"sqlite:///{base.data_dir}/mlflow.db",
            "mlflow_artifacts_dir": base.data_dir / "artifacts",
        }
    )
    try:
        print("preparing: ingest, train, register ...", flush=True)
        requests = bodies(prepare(settings))
        results = {"machine": stalls(), **measure(settings, requests)}
    finally:
        cleanup(settings)
    lines = [
        describe(results["machine"]),
        f"Single requests at {RATE}/s for {SECONDS} s, one worker; beside: {BATCH_ROWS:,}-row batches back to back",
        row("alone (baseline)", results["alone"]),
        row("beside batches", results["beside_batches"]),
        f"  the batches: {results['batches']}",
    ]
    results["summary"] = lines
    (RESULTS / "contention.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
