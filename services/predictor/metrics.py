"""The predictor's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# One HTTP call to a provider. outcome: ok, 429, 4xx, 5xx, timeout, reset, unsent (never left), canceled.
CALLS = Counter(
    "fairway_predictor_calls_total", "Upstream HTTP calls by provider, endpoint and outcome",
    ["provider", "endpoint", "outcome"],
)
CALL_SECONDS = Histogram(
    "fairway_predictor_call_seconds", "Latency of one upstream HTTP call", ["provider", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CALLS_IN_FLIGHT = Gauge("fairway_predictor_calls_in_flight", "Upstream HTTP calls in flight")
# One item from assignment to outcome. outcome: done, failed, retry, lost, handed_back, error.
ITEMS = Counter("fairway_predictor_items_total", "Items by provider and outcome", ["provider", "outcome"])
ITEM_SECONDS = Histogram(
    "fairway_predictor_item_seconds", "Time from assignment to outcome", ["provider"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
)
IN_FLIGHT = Gauge("fairway_predictor_in_flight", "Items holding a slot (calling a provider)")
PARKED = Gauge("fairway_predictor_parked", "Items accepted upstream and waiting for their result, slot returned")
READS_PER_ITEM = Histogram(
    "fairway_predictor_reads_per_item", "Status reads a Replicate prediction needed", buckets=(0, 1, 2, 3, 5, 8, 13),
)
# A Replicate prediction created again because the provider answered 404 for the recorded one
# (it forgot it, e.g. across its restart). when: resume (first read of a resumed item), read.
RECREATED = Counter(
    "fairway_predictor_predictions_recreated_total",
    "Replicate predictions created again after the provider no longer knew the recorded one", ["when"],
)
