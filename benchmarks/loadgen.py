"""Open-loop and closed-loop HTTP load on loopback (aiohttp), run in its own process.

Open loop: request i is due at start + i / rate whatever happened before, and its
latency counts from that due time (no coordinated omission). A "call" may be a chain
of HTTP requests made in sequence (the stock Feast -> MLflow path).
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading
import time
from collections import Counter
from typing import Any

import aiohttp
import numpy as np
import orjson

_WARM_CONNECTIONS = 16  # concurrent calls made before the clock starts (not measured)
Step = tuple[str, Any]  # (url, json body or a callable turning the previous answer into one)
_JSON = {"Content-Type": "application/json"}


def encode_bodies(chains: list[list[dict[str, Any]]]) -> None:
    """Each step's body encoded once, before the clock starts, as wrk and vegeta send
    prepared bytes: the client shares the machine's cores with the server it measures,
    and re-encoding the same bodies on every call (a 1,000-row batch: ~3 ms) took them
    from it."""
    for chain in chains:
        for step in chain:
            step["encoded"] = orjson.dumps(step["body"])


async def _call(
    session: aiohttp.ClientSession, chain: list[dict[str, Any]], transform: str | None, reasons: Counter[str]
) -> int:
    """Makes the chain's requests in sequence; returns how many answers came from a fallback
    (Vigil says so in each answer, and why: a fast fallback must not pass for a fast
    service), and counts their reasons in `reasons`."""
    previous: Any = None
    for step in chain:
        data = step["encoded"]
        if transform == "feast_to_mlflow" and previous is not None:
            data = orjson.dumps(feast_to_mlflow(previous, step["columns"], step.get("extra", {})))
        async with session.post(step["url"], data=data, headers=_JSON) as response:
            previous = orjson.loads(await response.read())
            if response.status != 200:
                raise RuntimeError(f"{step['url']}: {response.status} {str(previous)[:200]}")
    answers = previous.get("results", [previous]) if isinstance(previous, dict) else []
    fell_back = [a for a in answers if isinstance(a, dict) and a.get("fallback")]
    reasons.update(str(a.get("fallback_reason")) for a in fell_back)
    return len(fell_back)


def feast_to_mlflow(answer: dict[str, Any], columns: list[str], extra: dict[str, list[Any]]) -> dict[str, Any]:
    """Feast's answer (plus request fields it does not echo, e.g. tx_amount) as MLflow's input."""
    names = answer["metadata"]["feature_names"]
    values = {name: result["values"] for name, result in zip(names, answer["results"], strict=True)}
    values.update(extra)
    rows = len(next(iter(values.values())))
    return {"dataframe_split": {"columns": columns, "data": [[values[c][i] for c in columns] for i in range(rows)]}}


async def open_loop(
    chains: list[list[dict[str, Any]]], rate: float, seconds: float, transform: str | None, over_ms: float = 25.0
) -> dict[str, float]:
    """Request i is sent at start + i / rate by a clock thread, and its latency counts from
    that due time.

    Why a thread: an asyncio timer wakes up to 1 ms late (epoll timeouts are whole
    milliseconds), and creating every request's task up front makes the first ones late
    while the loop works through them; both were the client's own error added to the
    server's latency (a Starlette app answering a constant measured p50 1.3 ms / p99 2.1 ms
    at 500 requests/s that way, 0.85 / 1.25 ms with the clock thread). Connections are
    opened before the clock starts, as wrk does.
    """
    connector = aiohttp.TCPConnector(limit=256)
    latencies: list[float] = []
    errors = fallbacks = 0
    reasons: Counter[str] = Counter()
    total = int(rate * seconds)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = (_call(session, chains[i % len(chains)], transform, Counter()) for i in range(_WARM_CONNECTIONS))
        await asyncio.gather(*warm)
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        sent_all = asyncio.Event()

        async def one(i: int, due: float) -> None:
            nonlocal errors, fallbacks
            try:
                call = _call(session, chains[i % len(chains)], transform, reasons)
                # Awaited first: `fallbacks += await …` reads the count before the await, and
                # calls finishing meanwhile were lost (1 fallback counted where 15 came back).
                fell_back = await asyncio.wait_for(call, timeout=10)
                fallbacks += fell_back
                latencies.append(time.perf_counter() - due)
            except Exception:
                errors += 1

        def launch(i: int, due: float) -> None:
            task = loop.create_task(one(i, due))
            running.add(task)
            task.add_done_callback(running.discard)

        def clock(start: float) -> None:
            for i in range(total):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                loop.call_soon_threadsafe(launch, i, due)
            loop.call_soon_threadsafe(sent_all.set)

        start = time.perf_counter() + 0.05
        threading.Thread(target=clock, args=(start,), daemon=True).start()
        await sent_all.wait()
        while running:
            await asyncio.wait(set(running))
        elapsed = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "rate": rate,
        "requests": total,
        "errors": errors,
        "fallback_answers": fallbacks,
        "fallback_reasons": dict(reasons),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if ms.size else None,
        "max_ms": round(float(ms.max()), 3) if ms.size else None,
        f"over_{over_ms:g}_ms": int((ms > over_ms).sum()),
    }


async def closed_loop(
    chains: list[list[dict[str, Any]]],
    clients: int,
    seconds: float,
    transform: str | None,
    rows_per_call: int = 1,
    fresh_connections: bool = False,
) -> dict[str, float]:
    """`clients` callers, each making its next call when the previous one is answered.

    `fresh_connections`: a new connection per call. With a few long calls (batches) on
    kept-alive connections, which server worker accepted each connection decides the
    result (two connections on one worker measure one worker).
    """
    done = errors = fallbacks = 0
    reasons: Counter[str] = Counter()
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=fresh_connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(k: int) -> None:
            nonlocal done, errors, fallbacks
            i = k
            while time.perf_counter() < stop:
                try:
                    fell_back = await _call(session, chains[i % len(chains)], transform, reasons)
                    fallbacks += fell_back
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
        "fallback_answers": fallbacks,
        "fallback_reasons": dict(reasons),
    }


def main() -> None:
    job = json.loads(sys.stdin.read())
    encode_bodies(job["chains"])
    # The clock thread must get the interpreter promptly when it wakes (default: up to 5 ms),
    # and the collector need not walk the request bodies loaded above.
    sys.setswitchinterval(0.0002)
    gc.freeze()
    if job["mode"] == "open":
        result = asyncio.run(
            open_loop(job["chains"], job["rate"], job["seconds"], job.get("transform"), job.get("over_ms", 25.0))
        )
    else:
        result = asyncio.run(
            closed_loop(
                job["chains"],
                job["clients"],
                job["seconds"],
                job.get("transform"),
                job.get("rows_per_call", 1),
                job.get("fresh_connections", False),
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
