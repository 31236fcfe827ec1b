"""What the online state costs: bytes per customer and per terminal (Redis MEMORY USAGE),
bytes read per scoring request, and what that means at 100 M transactions a day.

    python -m benchmarks.capacity [--transactions FILE]    # default: a simulated world at the handbook's scale

Ingests the file into a namespace of its own on REDIS_URL (removed afterwards), samples
entity keys, and writes bench-results/capacity.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.features import HANDWRITTEN_REPO
from flows.sources import FileReplaySource
from vigil.ingest import run_ingest
from vigil.online.connection import connect
from vigil.online.layout import OnlineLayout
from vigil.online.store import delete_namespace
from vigil.settings import Settings
from vigil.simulate import SimulationConfig, simulate

SAMPLE = 2_000
DAILY = 100_000_000
NODE_BYTES = 25 * 1024**3  # memory a Redis primary is given for data (of a 32 GiB machine)


def measure(path: Path, settings: Settings) -> dict[str, Any]:
    frame = pd.read_parquet(path)
    days = (frame["tx_datetime"].max() - frame["tx_datetime"].min()).total_seconds() / 86_400
    run_ingest(settings, lambda n: FileReplaySource(path, shards=n), 2, show_progress=False)
    client = connect(settings.redis_url)
    layout = OnlineLayout.for_project(settings.feast_project)
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"transactions": len(frame), "days": round(days, 1)}
    for kind, column in (("customer", "customer_id"), ("terminal", "terminal_id")):
        view = layout.view(kind)
        ids = rng.choice(frame[column].unique(), size=min(SAMPLE, frame[column].nunique()), replace=False)
        keys = [view.redis_key(int(i)) for i in ids]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            memory = [m for m in pipe.execute() if m]
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, view.field_keys)
            replies = pipe.execute()
        read = [sum(len(v) for v in reply if v) for reply in replies]
        entities = frame[column].nunique()
        out[kind] = {
            "entities": int(entities),
            "memory_bytes_mean": float(np.mean(memory)),
            "memory_bytes_p99": float(np.percentile(memory, 99)),
            "read_bytes_mean": float(np.mean(read)),
            "read_bytes_max": float(np.max(read)),
            "events_per_entity_per_day": len(frame) / entities / days,
        }
    client.close()
    # At 100 M transactions a day, with the same activity per card and per terminal.
    tx_per_day = len(frame) / days
    scale = DAILY / tx_per_day
    customers = out["customer"]["entities"] * scale
    terminals = out["terminal"]["entities"] * scale
    total = customers * out["customer"]["memory_bytes_mean"] + terminals * out["terminal"]["memory_bytes_mean"]
    out["at_100m_a_day"] = {
        "customers": customers,
        "terminals": terminals,
        "online_state_bytes": total,
        "redis_primaries_at_25gib": int(np.ceil(total / NODE_BYTES)),
        "bytes_read_per_request": out["customer"]["read_bytes_mean"] + out["terminal"]["read_bytes_mean"],
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", metavar="FILE", help="a transactions file (default: simulated)")
    args = parser.parse_args()
    base = Settings(feature_repo=HANDWRITTEN_REPO)
    name = f"cap{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = base.model_copy(update={"feast_project": name, "key_prefix": name, "data_dir": Path(tmp)})
        path = Path(args.transactions) if args.transactions else Path(tmp) / "world.parquet"
        if not args.transactions:
            simulate(SimulationConfig(customers=5_000, terminals=10_000, days=60, seed=3)).to_parquet(path)
        try:
            result = measure(path, settings)
        finally:
            delete_namespace(settings.redis_url, name, name)
    print(json.dumps(result, indent=2))
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/capacity.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
