"""Prometheus metrics of one service instance (its own registry: no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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
            "vigil_prediction_log_failures_total",
            "Failed writes of the prediction log (answers kept in the buffer and retried)",
            registry=self.registry,
        )
        self.prediction_log_dropped = Counter(
            "vigil_prediction_log_dropped_total",
            "Answers dropped from the prediction log (the buffer was full while Redis was away)",
            registry=self.registry,
        )
        self.prediction_log_buffer = Gauge(
            "vigil_prediction_log_buffer_bytes",
            "Answers waiting to be written to the prediction log, in bytes",
            registry=self.registry,
        )
        self.prediction_log_pending = Gauge(
            "vigil_prediction_log_pending_entries",
            "Prediction log entries in Redis not yet persisted (`vigil predictions persist` trims them)",
            registry=self.registry,
        )
        self.ready = Gauge("vigil_ready", "1 when /readyz says ready", registry=self.registry)
        self.row_seconds = Gauge(
            "vigil_score_row_seconds",
            "Recent seconds per row of batch requests (their deadlines follow it)",
            registry=self.registry,
        )
        self.decisions = Counter(
            "vigil_decisions_total",
            "Decisions, by outcome (allow, review, block)",
            ["decision"],
            registry=self.registry,
        )
        self.rule_hits = Counter(
            "vigil_rule_hits_total", "Transactions a rule matched", ["rule", "action"], registry=self.registry
        )
        self.rule_errors = Counter(
            "vigil_rule_errors_total",
            "Rule evaluations that failed (counted as no match)",
            ["rule"],
            registry=self.registry,
        )
        self.rules_loaded = Gauge("vigil_rules_loaded", "Rules in force", registry=self.registry)
        self.rules_file_error = Gauge(
            "vigil_rules_file_error",
            "1 while the rules file on disk is refused (old rules serve)",
            registry=self.registry,
        )
        self.review_queue_length = Gauge(
            "vigil_review_queue_length", "Entries in the review stream", registry=self.registry
        )
        self.review_dropped = Counter(
            "vigil_review_dropped_total", "Review entries dropped (Redis away, buffer full)", registry=self.registry
        )
        self.labels_accepted = Counter(
            "vigil_labels_accepted_total", "Labels accepted through POST /v1/labels", registry=self.registry
        )
