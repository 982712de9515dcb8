"""The predictor's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter("fairway_predictor_calls_total", "Upstream calls by provider and outcome", ["provider", "outcome"])
CALL_SECONDS = Histogram(
    "fairway_predictor_call_seconds", "Time from assignment to outcome", ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("fairway_predictor_in_flight", "Items being worked on")
