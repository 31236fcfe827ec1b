"""Prometheus metrics of the feature flow: freshness and lag, for operators rather than benches.

- `vigil_flow_event_to_online_seconds`: from an event's arrival in its stream (the Redis
  entry id's time, the Kafka message's timestamp) to the moment its update is readable in
  the online store (the sink's write returned).
- `vigil_flow_consumer_lag`: entries of the stream its consumer group has not read yet
  (Redis 7's XINFO GROUPS `lag`).
- `vigil_flow_events_total`: events written to the online store, by kind.
- `vigil_flow_store_retries_total`, `vigil_flow_store_unavailable`: Redis calls retried
  through a failover or a restart, and 1 while the flow waits for Redis (no progress).
- `vigil_flow_claimed_entries_total`: pending entries taken over from consumers that were
  gone (a worker or process that crashed or was not restarted).

`vigil ingest --metrics-port` serves them. Its flow processes are forked, so the values go
through prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set before the
first import of prometheus_client by `prepare_multiprocess`) and one endpoint serves all.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flows import stopping
from flows.acks import KafkaToken, RedisToken
from vigil.online.retry import Outage, retry_transient

T = TypeVar("T")

FRESHNESS_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class FlowMetrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.freshness = Histogram(
            "vigil_flow_event_to_online_seconds",
            "From an event's arrival in its stream to its update being readable in the online store",
            buckets=FRESHNESS_BUCKETS,
        )
        self.events = Counter("vigil_flow_events_total", "Events written to the online store", ["kind"])
        self.lag = Gauge(
            "vigil_flow_consumer_lag",
            "Stream entries the consumer group has not read yet",
            ["stream", "group"],
            multiprocess_mode="max",
        )
        self.store_retries = Counter(
            "vigil_flow_store_retries_total", "Redis calls retried while Redis was unavailable (failover, restart)"
        )
        self.store_unavailable = Gauge(
            "vigil_flow_store_unavailable",
            "1 while the flow waits for Redis to answer again (it makes no progress meanwhile)",
            multiprocess_mode="max",
        )
        self.claimed = Counter(
            "vigil_flow_claimed_entries_total",
            "Pending stream entries taken over from consumers that were gone",
            ["stream", "group"],
        )

    def observe_written(self, tokens: list[Any], now: float | None = None) -> None:
        """Freshness of the events just written (those that came from a stream)."""
        now_ms = (now if now is not None else time.time()) * 1000
        observe = self.freshness.observe
        for token in tokens:
            if isinstance(token, RedisToken):
                arrived = int(token.entry_id.split("-", 1)[0])
            elif isinstance(token, KafkaToken) and token.arrived_ms > 0:
                arrived = token.arrived_ms
            else:
                continue
            observe(max(now_ms - arrived, 0.0) / 1000)


@functools.lru_cache(maxsize=1)
def flow_outage() -> Outage:
    """This process's view of Redis interruptions (shared by its workers)."""
    return Outage()


def redis_call(call: Callable[[], T], what: str) -> T:
    """`call()` through Redis interruptions (`vigil.online.retry`), counted in the flow's metrics."""
    outage = flow_outage()
    retries = outage.retries
    try:
        return retry_transient(call, what, outage, give_up=stopping.requested)
    finally:
        metrics = flow_metrics()
        if outage.retries > retries:
            metrics.store_retries.inc(outage.retries - retries)
        metrics.store_unavailable.set(1 if outage.down else 0)


@functools.lru_cache(maxsize=1)
def flow_metrics() -> FlowMetrics:
    """This process's flow metrics (made once: Prometheus names are per process)."""
    return FlowMetrics()


def prepare_multiprocess() -> str:
    """Points prometheus_client at a fresh multiprocess folder (before its first import)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="vigil-flow-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


def serve(port: int, host: str) -> None:
    """Serves every flow process's metrics on one endpoint."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
