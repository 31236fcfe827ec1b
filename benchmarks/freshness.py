"""Freshness: how long an event takes from the stream to being readable for scoring.

    python -m benchmarks.freshness [--runs 5] [--rate 2000] [--seconds 10] [--api | --declared]

The feature flow (`vigil ingest --source`), the producer and the probe run as separate
processes, so the harness does not share an interpreter (or its pauses) with what it
measures. The producer sends transactions to a Redis stream at `rate` a second; every
tenth is a probe, whose send time goes to the prober; the prober polls the customer's
stored history until the probe's id is in it. With `--api`, a `vigil serve` runs too and
the prober asks it instead: `/v1/score?explain=true` for a later transaction of the same
customer, until its 1-day count includes the probe (what a fraud check sees). With
`--declared`, each run measures the hand-written flow and then the declared handbook's flow
(`vigil repo ingest --repo feature_repo --source ...`, probed on its customer's facts),
the same events at the same rate: bench-results/freshness_declared.json.

Prints p50 / p99 / max per run against the targets, draws the latency histogram
(bench-results/freshness.png) and writes bench-results/freshness.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import describe, stalls

TARGETS = {"p99_ms": 10.0, "max_ms": 50.0}
API_TARGET_P99_MS = 15.0
# The prober's pause between polls: polling without one kept a core busy (and Redis, or the
# service, with it), which on 2 cores took CPU from the flow it measures (p99 19-97 ms in
# five runs without it, 13-20 ms with it, same machine and hour). It adds at most this much.
POLL_SECONDS = 0.0005
PROBE_CUSTOMERS = 1_000_000_000  # ids of the API probes' own customers, far from the world's


def produce(
    url: str, stream: str, rows: list[dict[str, Any]], keys: list[tuple[int, int, str]], rate: float, probes: Any
) -> None:
    """Sends `rows` (stream entries) at `rate` a second; every tenth's (id, customer, time),
    from `keys`, goes to `probes`."""
    from vigil.online.connection import connect

    client = connect(url)
    started = time.perf_counter()
    for i, row in enumerate(rows):
        due = started + i / rate
        while (wait := due - time.perf_counter()) > 0:
            time.sleep(min(wait, 0.0005))
        sent = time.perf_counter()
        client.xadd(stream, row)
        if i % 10 == 0:
            probes.put((*keys[i], sent))
    probes.put(None)
    client.close()


def poll(client: Any, probes: Any, results: Any, key_of: Any, holds: Any) -> None:
    """Polls the store until each probe is in its customer's stored history: `key_of(customer)`
    the Redis command's arguments to read it, `holds(reply, transaction id)` whether it is in."""
    client.ping()
    results.put("ready")  # imports done: the producer may start
    waiting: dict[int, tuple[int, float]] = {}
    finished = False
    latencies: list[float] = []
    sent_at: list[float] = []
    deadline = None
    while not (finished and not waiting):
        while not probes.empty():
            item = probes.get()
            if item is None:
                finished, deadline = True, time.perf_counter() + 10
            else:
                waiting[item[0]] = (item[1], item[3])
        if not waiting:
            time.sleep(0.0002)
            continue
        items = list(waiting.items())
        with client.pipeline(transaction=False) as pipe:
            for _, (customer, _) in items:
                pipe.execute_command(*key_of(customer))
            replies = pipe.execute()
        now = time.perf_counter()
        for (tx, (_, sent)), raw in zip(items, replies, strict=True):
            if raw is not None and holds(raw, tx):
                latencies.append((now - sent) * 1000)
                sent_at.append(sent)
                waiting.pop(tx)
        if deadline is not None and now > deadline:
            break
        time.sleep(POLL_SECONDS)
    results.put({"latencies_ms": latencies, "sent": sent_at, "unseen": len(waiting)})


def probe_store(url: str, project: str, probes: Any, results: Any) -> None:
    """Polls the online store until each probe's transaction is in its customer's history."""
    from feast.protos.feast.types.Value_pb2 import Value

    from vigil.online.connection import connect
    from vigil.online.layout import OnlineLayout

    view = OnlineLayout.for_project(project).customer
    field = view.field_keys[1]  # transaction ids
    poll(
        connect(url), probes, results,
        lambda customer: ("HGET", view.redis_key(customer), field),
        lambda raw, tx: tx in Value.FromString(raw).int64_list_val.val,
    )  # fmt: skip


def probe_facts(url: str, prefix: str, probes: Any, results: Any) -> None:
    """Polls a declared repo's online store (feature_repo) until each probe is among its
    customer's facts."""
    from vigil.declared import load_declared
    from vigil.declared.online import DeclaredOnlineStore
    from vigil.online.connection import connect
    from vigil.settings import PROJECT_ROOT

    client = connect(url)
    store = DeclaredOnlineStore(client, prefix, load_declared(PROJECT_ROOT / "feature_repo"))
    dtype = store.dtypes[("events", "customer_id")]
    poll(
        client, probes, results,
        lambda customer: ("GET", store.key("events", "customer_id", customer)),
        lambda raw, tx: tx in np.frombuffer(raw, dtype)["id"],
    )  # fmt: skip


def probe_api(base: str, probes: Any, results: Any) -> None:
    """Asks the scoring service, for a later payment of the probe's customer (a customer of
    its own: no history before the probe), until its 1-day count includes the probe."""
    import httpx

    latencies: list[float] = []
    unseen = 0

    def day_count(customer: int, when: str, tx: int) -> int:
        later = {"transaction_id": 10**15 + tx, "customer_id": customer, "terminal_id": 0, "tx_amount": 1.0,
                 "tx_datetime": when}  # fmt: skip
        features = client.post("/v1/score?explain=true", json=later).json()["features"]
        return int(features["customer_id_nb_tx_1day_window"])

    with httpx.Client(base_url=base, timeout=5) as client:
        # What the count says for a customer with no history (the request itself, or not):
        # reading it before each probe could race with the probe already being readable.
        empty = day_count(PROBE_CUSTOMERS - 1, "2018-04-01T00:00:00", 0)
        results.put("ready")  # imports done: the producer may start
        while (item := probes.get()) is not None:
            tx, customer, when, sent = item
            give_up = sent + 5
            while (now := time.perf_counter()) <= give_up and day_count(customer, when, tx) <= empty:
                time.sleep(POLL_SECONDS)
            if now > give_up:
                unseen += 1
            else:
                latencies.append((time.perf_counter() - sent) * 1000)
            # Probes are taken one at a time: skip those sent while this one was watched.
            while not probes.empty():
                if probes.get() is None:
                    results.put({"latencies_ms": latencies, "unseen": unseen})
                    return
    results.put({"latencies_ms": latencies, "unseen": unseen})


def one_run(rate: float, seconds: float, api: bool, declared: bool = False) -> dict[str, Any]:
    import pandas as pd

    from benchmarks.features import HANDWRITTEN_REPO
    from vigil.online.store import delete_namespace
    from vigil.settings import PROJECT_ROOT, Settings
    from vigil.simulate import SimulationConfig, simulate
    from vigil.stream_out import event_fields

    name = f"fresh{uuid.uuid4().hex[:6]}"
    settings = Settings(
        feature_repo=HANDWRITTEN_REPO,
        feast_project=name,
        key_prefix=name,
        data_dir=PROJECT_ROOT / "data" / "bench" / name,
    )
    stream = f"{name}:events"
    env = {**os.environ, "VIGIL_FEAST_PROJECT": name, "VIGIL_KEY_PREFIX": name, "REDIS_URL": settings.redis_url,
           "VIGIL_FEATURE_REPO": str(HANDWRITTEN_REPO), "VIGIL_DATA_DIR": str(settings.data_dir)}  # fmt: skip
    source = f"{settings.redis_url.rsplit('/', 1)[0]}/{stream}"
    command = [sys.executable, "-m", "vigil.cli", "ingest", "--source", source, "--no-progress"]
    if declared:  # the declared handbook's own flow on the same stream
        command = [
            sys.executable,
            "-m",
            "vigil.cli",
            "repo",
            "ingest",
            "--repo",
            "feature_repo",
            "--source",
            source,
        ]
    flow = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    world = simulate(SimulationConfig(customers=5_000, terminals=10_000, days=30, seed=3))
    rows = world.iloc[: int(rate * seconds)]
    fields = event_fields(rows[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]])
    for f, when in zip(fields, rows["tx_datetime"], strict=True):
        f["tx_datetime"] = pd.Timestamp(when).isoformat()
    if api:  # each probe on a customer of its own (see probe_api)
        for i in range(0, len(fields), 10):
            fields[i]["customer_id"] = str(PROBE_CUSTOMERS + i)
    keys = [(int(f["transaction_id"]), int(f["customer_id"]), f["tx_datetime"]) for f in fields]
    if declared:  # the repo's typed record, one `json` field an entry
        typed = rows[["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_amount"]]
        fields = [
            {"json": json.dumps(record)} for record in json.loads(typed.to_json(orient="records", date_format="iso"))
        ]
    from vigil.online.connection import connect

    client = connect(settings.redis_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the flow's consumer group exists: it is up
        try:
            if client.exists(stream) and client.xinfo_groups(stream):
                break
        except Exception:
            pass
        time.sleep(0.1)
    ctx = mp.get_context("spawn")
    probes, results = ctx.Queue(), ctx.Queue()
    service = None
    try:
        if api:
            service, base = _service(settings)
            prober = ctx.Process(target=probe_api, args=(base, probes, results))
        elif declared:
            prober = ctx.Process(target=probe_facts, args=(settings.redis_url, name, probes, results))
        else:
            prober = ctx.Process(target=probe_store, args=(settings.redis_url, name, probes, results))
        prober.start()
        if results.get(timeout=120) != "ready":
            raise RuntimeError("the prober did not start")
        producer = ctx.Process(target=produce, args=(settings.redis_url, stream, fields, keys, rate, probes))
        started = time.perf_counter()
        producer.start()
        producer.join()
        achieved = len(fields) / (time.perf_counter() - started)
        outcome = results.get(timeout=60)
        prober.join(timeout=10)
    finally:
        if service is not None:
            service.__exit__(None, None, None)
        flow.send_signal(signal.SIGINT)
        try:
            flow.wait(timeout=20)
        except subprocess.TimeoutExpired:
            flow.kill()
        delete_namespace(settings.redis_url, name, name)
        client.close()
    seen = np.asarray(outcome["latencies_ms"])
    return {
        "achieved_events_per_s": round(achieved),
        "samples": int(seen.size),
        "unseen": outcome["unseen"],
        "p50_ms": round(float(np.percentile(seen, 50)), 2),
        "p99_ms": round(float(np.percentile(seen, 99)), 2),
        "max_ms": round(float(seen.max()), 2),
        "latencies_ms": seen.round(3).tolist(),
        "sent_s": _since_first(outcome.get("sent", [])),
    }


def _since_first(times: list[float]) -> list[float]:
    """Send times as seconds since the run's first probe (the timeline's x axis)."""
    sent = np.asarray(times)
    return (sent - sent.min()).round(4).tolist() if sent.size else []


def _service(settings: Any) -> tuple[Any, str]:
    """A `vigil serve` on the run's namespace, with a baseline model trained on a small world."""
    import tempfile

    from flows.sources import FileReplaySource
    from vigil.ingest import run_ingest
    from vigil.lifecycle.training import train_and_register
    from vigil.offline import training_set
    from vigil.online.feast_store import apply_repo
    from vigil.service_process import background_service
    from vigil.simulate import SimulationConfig, simulate

    tmp = Path(tempfile.mkdtemp())
    history = simulate(SimulationConfig(customers=500, terminals=1_000, days=28, seed=9))
    history.to_parquet(tmp / "h.parquet")
    local = settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{tmp}/mlflow.db",
                                        "mlflow_artifacts_dir": tmp / "artifacts"})  # fmt: skip
    run_ingest(local, lambda n: FileReplaySource(tmp / "h.parquet"), 1, show_progress=False)
    train_and_register(local, training_set(apply_repo(local), local), "baseline", show_progress=False)
    context = background_service(local)
    return context, context.__enter__()


def histogram(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4))
    ax, timeline = fig.subplots(1, 2)
    bins = np.logspace(np.log10(0.5), np.log10(500), 60)
    for i, run in enumerate(runs):
        ax.hist(run["latencies_ms"], bins=bins, histtype="step", label=f"run {i + 1}: p99 {run['p99_ms']} ms")
    ax.axvline(TARGETS["p99_ms"], color="tab:red", linestyle="--", label="p99 target 10 ms")
    ax.set_xscale("log")
    ax.set_xlabel("stream to readable (ms)")
    ax.set_ylabel("probes")
    ax.set_title(title)
    ax.legend(fontsize=8)
    # When the slow probes were sent: a start-up burst, a periodic pause (a flush, a
    # snapshot) or spread evenly tell different stories.
    for i, run in enumerate(runs):
        if run.get("sent_s"):
            timeline.scatter(run["sent_s"], run["latencies_ms"], s=3, label=f"run {i + 1}")
    timeline.axhline(TARGETS["p99_ms"], color="tab:red", linestyle="--")
    timeline.set_yscale("log")
    timeline.set_xlabel("probe sent (s since the first)")
    timeline.set_ylabel("stream to readable (ms)")
    timeline.set_title("latency over the run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


NAMES = ("hand_written", "declared")


def side_by_side(runs: int, rate: float, seconds: float, machine: dict[str, Any]) -> None:
    """Each run the hand-written flow and then the declared handbook's, same events and rate."""
    pairs = [(one_run(rate, seconds, False), one_run(rate, seconds, False, declared=True)) for _ in range(runs)]
    print(f"freshness at {rate:,.0f} events/s, stream to online store: hand-written, then declared (feature_repo)")
    print(f"  {describe(machine)}")
    for i, pair in enumerate(pairs):
        for name, run in zip(("hand-written", "declared"), pair, strict=True):
            print(f"  run {i + 1}, {name:<12}: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                  f"max {run['max_ms']} ms ({run['samples']} probes, {run['unseen']} unseen, "
                  f"{run['achieved_events_per_s']} events/s)")  # fmt: skip
    p99 = {name: float(np.median([pair[k]["p99_ms"] for pair in pairs])) for k, name in enumerate(("hand", "declared"))}
    print(f"  median p99: declared {p99['declared']} ms against {p99['hand']} ms hand-written "
          f"({'within' if p99['declared'] <= 1.1 * p99['hand'] else 'not within'} 10 %)")  # fmt: skip
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    strip = ("latencies_ms", "sent_s")
    summary = [
        {name: {k: v for k, v in run.items() if k not in strip} for name, run in zip(NAMES, pair, strict=True)}
        for pair in pairs
    ]
    (out / "freshness_declared.json").write_text(
        json.dumps({"rate": rate, "machine": machine, "runs": summary, "median_p99_ms": p99}, indent=2)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--api", action="store_true", help="measure through the scoring service")
    parser.add_argument(
        "--declared", action="store_true", help="each run: the hand-written flow, then the declared handbook's"
    )
    args = parser.parse_args()
    if args.api and args.declared:
        parser.error("--declared measures the flows into the online store: leave out --api")
    machine = stalls()
    if args.declared:
        side_by_side(args.runs, args.rate, args.seconds, machine)
        return
    runs = [one_run(args.rate, args.seconds, args.api) for _ in range(args.runs)]
    target = API_TARGET_P99_MS if args.api else TARGETS["p99_ms"]
    what = "through the API" if args.api else "stream to online store"
    print(f"freshness at {args.rate:,.0f} events/s, {what} (target p99 <= {target} ms" +
          ("" if args.api else f", max <= {TARGETS['max_ms']} ms") + ")")  # fmt: skip
    print(f"  {describe(machine)}")
    for i, run in enumerate(runs):
        ok = run["p99_ms"] <= target and (args.api or run["max_ms"] <= TARGETS["max_ms"])
        print(f"  run {i + 1}: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, max {run['max_ms']} ms "
              f"({run['samples']} probes, {run['unseen']} unseen, {run['achieved_events_per_s']} events/s) "
              f"{'OK' if ok else 'MISSED'}")  # fmt: skip
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    name = "freshness_api" if args.api else "freshness"
    histogram(runs, out / f"{name}.png", f"freshness at {args.rate:,.0f} events/s, {what}")
    summary = [{k: v for k, v in run.items() if k not in ("latencies_ms", "sent_s")} for run in runs]
    (out / f"{name}.json").write_text(
        json.dumps({"rate": args.rate, "target_p99_ms": target, "machine": machine, "runs": summary}, indent=2)
    )


if __name__ == "__main__":
    main()
