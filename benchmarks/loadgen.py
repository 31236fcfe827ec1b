"""Open-loop and closed-loop HTTP load on loopback (aiohttp), run in its own process.

Open loop: request i is due at start + i / rate whatever happened before, and its
latency counts from that due time (no coordinated omission). A "call" may be a chain
of HTTP requests made in sequence (the stock Feast -> MLflow path).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import numpy as np

Step = tuple[str, Any]  # (url, json body or a callable turning the previous answer into one)


async def _call(session: aiohttp.ClientSession, chain: list[dict[str, Any]], transform: str | None) -> None:
    previous: Any = None
    for step in chain:
        body = step["body"]
        if transform == "feast_to_mlflow" and previous is not None:
            body = feast_to_mlflow(previous, step["columns"], step.get("extra", {}))
        async with session.post(step["url"], json=body) as response:
            previous = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"{step['url']}: {response.status} {str(previous)[:200]}")


def feast_to_mlflow(answer: dict[str, Any], columns: list[str], extra: dict[str, list[Any]]) -> dict[str, Any]:
    """Feast's answer (plus request fields it does not echo, e.g. tx_amount) as MLflow's input."""
    names = answer["metadata"]["feature_names"]
    values = {name: result["values"] for name, result in zip(names, answer["results"], strict=True)}
    values.update(extra)
    rows = len(next(iter(values.values())))
    return {"dataframe_split": {"columns": columns, "data": [[values[c][i] for c in columns] for i in range(rows)]}}


async def open_loop(
    chains: list[list[dict[str, Any]]], rate: float, seconds: float, transform: str | None
) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=256)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter() + 0.05
        total = int(rate * seconds)

        async def one(i: int) -> None:
            nonlocal errors
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await asyncio.wait_for(_call(session, chains[i % len(chains)], transform), timeout=10)
                latencies.append(time.perf_counter() - due)
            except Exception:
                errors += 1

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "rate": rate,
        "requests": total,
        "errors": errors,
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms.size else None,
    }


async def closed_loop(
    chains: list[list[dict[str, Any]]], clients: int, seconds: float, transform: str | None, rows_per_call: int = 1
) -> dict[str, float]:
    done = 0
    errors = 0
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def worker(k: int) -> None:
            nonlocal done, errors
            i = k
            while time.perf_counter() < stop:
                try:
                    await _call(session, chains[i % len(chains)], transform)
                    done += 1
                except Exception:
                    errors += 1
                i += clients

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "calls_per_s": round(done / elapsed, 1),
        "rows_per_s": round(done * rows_per_call / elapsed, 1),
        "errors": errors,
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job["mode"] == "open":
        result = asyncio.run(open_loop(job["chains"], job["rate"], job["seconds"], job.get("transform")))
    else:
        result = asyncio.run(
            closed_loop(
                job["chains"], job["clients"], job["seconds"], job.get("transform"), job.get("rows_per_call", 1)
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
