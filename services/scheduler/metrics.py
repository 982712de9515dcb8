"""The scheduler's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DISPATCHED = Counter("fairway_scheduler_dispatched_total", "Items handed to predictors", ["lane"])
GRANT_WAITS = Counter(
    "fairway_scheduler_budget_waits_total", "Dispatch rounds that found no upstream budget", ["lane"]
)
DISPATCH_SECONDS = Histogram(
    "fairway_scheduler_dispatch_seconds", "One dispatch round: grants, fair pick, claim",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
OUTCOMES = Counter("fairway_scheduler_outcomes_total", "Item outcomes recorded", ["outcome"])
SUBMITTED = Counter("fairway_scheduler_items_submitted_total", "Items accepted at submit")
