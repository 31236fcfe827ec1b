"""Prometheus metrics of one service instance (its own registry: no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, Info

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "vigil_score_stage_seconds",
            "Time per scoring stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "vigil_fallbacks_total", "Answers from the fallback model, by reason", ["reason"], registry=self.registry
        )
        self.scored = Counter("vigil_transactions_scored_total", "Transactions scored", registry=self.registry)
        self.batch_size = Histogram(
            "vigil_model_batch_size",
            "Rows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 8192),
            registry=self.registry,
        )
        self.model = Info("vigil_model", "The model version being served", registry=self.registry)
        self.reload_failures = Counter(
            "vigil_model_reload_failures_total",
            "Versions that failed to load or warm up (the old one kept serving)",
            registry=self.registry,
        )
        self.prediction_log_failures = Counter(
            "vigil_prediction_log_failures_total", "Predictions that could not be logged", registry=self.registry
        )
