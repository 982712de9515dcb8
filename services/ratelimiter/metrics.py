"""Prometheus metrics of the ratelimiter (served by services.common.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

GRANTS = Counter("fairway_ratelimiter_grants_total", "Grants issued", ["budget"])
DENIALS = Counter("fairway_ratelimiter_denials_total", "Grants asked for but not issued", ["budget", "limited_by"])
WAIT = Histogram(
    "fairway_ratelimiter_retry_after_seconds",
    "Wait advised with a denial",
    ["budget"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)
LATENCY = Histogram(
    "fairway_ratelimiter_acquire_seconds",
    "Time to decide one Acquire",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25),
)
USAGE_RATIO = Gauge("fairway_ratelimiter_usage_ratio", "Requests in the last minute / planned limit", ["budget"])
RATE_FACTOR = Gauge("fairway_ratelimiter_rate_factor", "Upstream-feedback rate factor", ["budget"])
REDIS_UP = Gauge("fairway_ratelimiter_redis_up", "1 while the shared budget store answers")


class BudgetMeters:
    """One budget's children of the labelled metrics, looked up once rather than per call."""

    def __init__(self, budget: str) -> None:
        self._budget = budget
        self.latency = LATENCY
        self.grants = GRANTS.labels(budget)
        self.wait = WAIT.labels(budget)
        self._denials: dict[str, Counter] = {}

    def denials(self, limited_by: str) -> Counter:
        child = self._denials.get(limited_by)
        if child is None:
            child = self._denials[limited_by] = DENIALS.labels(self._budget, limited_by)
        return child
