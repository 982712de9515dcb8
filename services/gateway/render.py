"""Proto messages → the contract's JSON shapes.

Timestamps travel as unix seconds (0 = not yet) and render as RFC 3339 UTC;
`*_json` fields travel as JSON text and render as the JSON values they hold.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2

from services.common.limits import lane_scope

JOB_STATUSES = ("PENDING", "PROCESSING", "DONE", "FAILED", "CANCELED")
ITEM_STATUSES = JOB_STATUSES
TERMINAL_JOB = frozenset({"DONE", "FAILED", "CANCELED"})
# A tenant whose oldest queued item waited longer than this makes the queue unhealthy.
QUEUE_STALL_S = 300.0


def timestamp(seconds: float) -> str | None:
    if not seconds:
        return None
    # Whole milliseconds, rounded: a double holds .123 as .12299999.
    millis = round(seconds * 1000)
    moment = datetime.fromtimestamp(millis // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def json_value(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        # Stored by something that did not write JSON: show it rather than fail the request.
        return text


def job_status(value: scheduler_pb2.JobStatus.ValueType) -> str:
    """The contract's name; an unset status (a scheduler that said nothing) reads as PENDING."""
    name = scheduler_pb2.JobStatus.Name(value) if value in scheduler_pb2.JobStatus.values() else ""
    bare = name.removeprefix("JOB_")
    return bare if bare in JOB_STATUSES else "PENDING"


def item_status(value: scheduler_pb2.ItemStatus.ValueType) -> str:
    name = scheduler_pb2.ItemStatus.Name(value) if value in scheduler_pb2.ItemStatus.values() else ""
    return name if name in ITEM_STATUSES else "PENDING"


def job_status_value(status: str | None) -> scheduler_pb2.JobStatus.ValueType:
    return scheduler_pb2.JobStatus.Value("JOB_" + status if status else "JOB_STATUS_UNSPECIFIED")


def item_status_value(status: str | None) -> scheduler_pb2.ItemStatus.ValueType:
    return scheduler_pb2.ItemStatus.Value(status or "ITEM_STATUS_UNSPECIFIED")


def tenant(t: scheduler_pb2.Tenant, *, with_key: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": t.id,
        "weight": t.weight,
        "max_concurrency": t.max_concurrency if t.HasField("max_concurrency") else None,
        "max_queued": t.max_queued,
        "credits": t.credits if t.HasField("credits") else None,
        "queued": t.queued,
        "processing": t.processing,
    }
    if with_key:
        out["api_key"] = t.api_key
    return out


def job(j: scheduler_pb2.Job) -> dict[str, Any]:
    c = j.counts
    return {
        "id": j.id,
        "tenant": j.tenant,
        "provider": j.provider,
        "model": j.model,
        "operation": j.operation,
        "status": job_status(j.status),
        "priority": j.priority,
        "items_total": j.items_total,
        "counts": {
            "PENDING": c.pending,
            "PROCESSING": c.processing,
            "DONE": c.done,
            "FAILED": c.failed,
            "CANCELED": c.canceled,
        },
        "metadata": json_value(j.metadata_json),
        "created_at": timestamp(j.created_at),
        "updated_at": timestamp(j.updated_at),
        "finished_at": timestamp(j.finished_at),
    }


def item(i: scheduler_pb2.Item) -> dict[str, Any]:
    return {
        "id": i.id,
        "job_id": i.job_id,
        "ref": i.ref,
        "status": item_status(i.status),
        "attempts": i.attempts,
        "output": json_value(i.output_json),
        "error": i.error or None,
        "usage": json_value(i.usage_json),
        "created_at": timestamp(i.created_at),
        "started_at": timestamp(i.started_at),
        "finished_at": timestamp(i.finished_at),
    }


def queue_stats(q: scheduler_pb2.QueueStats) -> dict[str, Any]:
    tenants = [
        {
            "tenant": t.tenant,
            "queued": t.queued,
            "processing": t.processing,
            "oldest_queued_age_s": round(t.oldest_queued_age_s, 3),
            "dispatched_last_minute": t.dispatched_last_minute,
        }
        for t in q.tenants
    ]
    lanes = [
        {"lane": lane.lane, "provider": provider, "model": model, "queued": lane.queued,
         "processing": lane.processing, "tenants": lane.tenants}
        for lane in q.lanes
        for provider, model in [lane_scope(lane.lane)]
    ]
    return {
        "tenants": tenants,
        "lanes": lanes,
        "totals": {
            "queued": sum(t.queued for t in q.tenants),
            "processing": sum(t.processing for t in q.tenants),
        },
    }


def _queue_length(budget: str, lanes: dict[str, int]) -> int:
    if budget in lanes:
        return lanes[budget]
    # Replicate work waits on its create budget whatever the model, so it counts there.
    if budget == "replicate:create":
        return sum(n for name, n in lanes.items() if name.startswith("replicate:") and name != "replicate:read")
    return 0


def ratelimiter_stats(
    stats: ratelimiter_pb2.GetStatsResponse, queue: scheduler_pb2.QueueStats | None, now: float
) -> dict[str, Any]:
    """The `/v1/stats/ratelimiter` document; `queue` is None when the scheduler did not answer."""
    lanes = {lane.lane: int(lane.queued) for lane in (queue.lanes if queue is not None else ())}
    buckets = []
    rpm_healthy = True
    for b in stats.budgets:
        usage = b.rpm_usage_percent
        if not usage and b.limit_rpm > 0:
            usage = 100.0 * b.requests_last_minute / b.limit_rpm
        bucket: dict[str, Any] = {
            "name": b.name,
            "limit_rpm": b.limit_rpm,
            "requests_last_minute": b.requests_last_minute,
            "rpm_usage_percent": round(usage, 1),
        }
        if b.limit_tpm > 0:
            bucket["limit_tpm"] = b.limit_tpm
            bucket["tokens_last_minute"] = b.tokens_last_minute
            bucket["tpm_usage_percent"] = round(b.tpm_usage_percent, 1)
        bucket["queue_length"] = _queue_length(b.name, lanes)
        cooling = b.cooldown_until > now
        if cooling:
            bucket["cooldown_until"] = timestamp(b.cooldown_until)
        if b.max_in_flight:
            bucket["in_flight"] = b.in_flight
            bucket["max_in_flight"] = b.max_in_flight
        bucket["denied_last_minute"] = b.denied_last_minute
        bucket["rate_factor"] = b.rate_factor
        buckets.append(bucket)
        if usage > 100.0 or cooling:
            rpm_healthy = False
    queue_healthy = queue is not None and all(t.oldest_queued_age_s < QUEUE_STALL_S for t in queue.tenants)
    return {
        "status": "ok",
        "timestamp": timestamp(stats.timestamp or now),
        "buckets": buckets,
        "health": {"queue_healthy": queue_healthy, "rpm_healthy": rpm_healthy},
    }


def event(e: scheduler_pb2.JobEvent) -> tuple[str, dict[str, Any]]:
    """An SSE event name and its data."""
    if e.WhichOneof("event") == "item":
        return "item", item(e.item)
    return "job", job(e.job)
