"""One request's feature read (a customer's and a terminal's HMGET) through Vigil's reader
(`read_fields`, as the scoring service reads) and through redis-py's asyncio clients, on
one node and on a 3-node cluster, same run.

    python -m benchmarks.cluster_read [--requests 3000]

Why the scoring service keeps its own reader (`vigil/online/resp.py`): the figures this
prints. Results also go to bench-results/cluster_read.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from vigil.local_redis import LocalRedis, LocalRedisCluster
from vigil.online.connection import connect, connect_async
from vigil.online.resp import ClusterReader, NodeReader, field_tail, hmget

FIELDS = [b"f1", b"f2", b"f3"]
ENTITIES = 2_000


def _fill(url: str) -> None:
    client = connect(url)
    with client.pipeline(transaction=False) as pipe:
        for kind in ("c", "t"):
            for i in range(ENTITIES):
                pipe.hset(f"{kind}:{i}", mapping={f: b"x" * 200 for f in FIELDS})  # type: ignore[misc]
        pipe.execute()
    client.close()


async def _time(read: Callable[[int], Awaitable[Any]], requests: int) -> dict[str, float]:
    for i in range(200):  # warm-up: connections, slot maps
        await read(i)
    timings = np.empty(requests)
    for i in range(requests):
        started = time.perf_counter()
        await read(i % ENTITIES)
        timings[i] = time.perf_counter() - started
    return {"p50_us": float(np.percentile(timings, 50) * 1e6), "p99_us": float(np.percentile(timings, 99) * 1e6)}


async def _measure(url: str, cluster: bool, requests: int) -> dict[str, dict[str, float]]:
    tail = field_tail(FIELDS)
    reader = ClusterReader(url) if cluster else NodeReader(url)

    async def ours(i: int) -> Any:
        keys = [f"c:{i}".encode(), f"t:{(i * 7) % ENTITIES}".encode()]
        return await reader.read_fields(keys, [hmget(k, tail, len(FIELDS)) for k in keys], len(FIELDS))

    client: Any = connect_async(url)

    async def redis_py(i: int) -> Any:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(f"c:{i}", FIELDS)
            pipe.hmget(f"t:{(i * 7) % ENTITIES}", FIELDS)
            return await pipe.execute()

    try:
        return {"vigil_reader": await _time(ours, requests), "redis_py_pipeline": await _time(redis_py, requests)}
    finally:
        reader.close()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with LocalRedis(Path(tmp) / "single") as single:
            _fill(single.url)
            results["one_node"] = asyncio.run(_measure(single.url, False, args.requests))
        with LocalRedisCluster(Path(tmp) / "cluster") as cluster:
            _fill(cluster.url)
            results["cluster_3_nodes"] = asyncio.run(_measure(cluster.url, True, args.requests))
    print(f"one request's two HMGETs, {args.requests} sequential requests (p50 / p99, microseconds)")
    for where, figures in results.items():
        for client, t in figures.items():
            print(f"  {where:<16} {client:<18} {t['p50_us']:7.0f} / {t['p99_us']:7.0f}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "cluster_read.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
