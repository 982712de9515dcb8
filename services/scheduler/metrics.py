"""The scheduler's Prometheus metrics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

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
TENANT_DISPATCHED = Counter(
    "fairway_scheduler_tenant_dispatched_total", "Items handed to predictors, per tenant", ["tenant"]
)
# The whole queue as the database counts it, the same on every replica (each reads all of
# `queue_counts` at its resync): aggregate replicas with max, not sum.
LANE_ITEMS = Gauge(
    "fairway_scheduler_lane_items", "Items of a lane queued or in flight (as of the last resync, every 5 s)",
    ["lane", "state"],
)


def export_lane_items(rows: Iterable[Mapping[str, Any]]) -> None:
    """Set the lane gauges from `queue_counts` rows (lane, tenant, pending, processing)."""
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for row in rows:
        totals[(row["lane"], "queued")] += row["pending"]
        totals[(row["lane"], "processing")] += row["processing"]
    for (lane, state), n in totals.items():
        LANE_ITEMS.labels(lane, state).set(n)
