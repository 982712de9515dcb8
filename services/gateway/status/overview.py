"""What the status page shows, gathered from the scheduler and the ratelimiter.

One `Overview` per gateway process gathers at most once a second whoever asks: ten operators
watching cost what one does, and nothing is gathered while nobody watches. A gathering is
GetStats, GetQueueStats and ListTenants (the first `LISTED_TENANTS` in id order, with their
credits), then for each tenant active in the last `RECENT_S` (at most `MAX_TENANTS`, busiest
first) ListJobs (its newest `JOBS_PER_TENANT` jobs, read on the tenant's index, never a scan of
every job) and GetTenant for one not on the listed page, GetJob for an unfinished job seen before that fell out of
those, and ListItems(FAILED) for jobs whose failures grew since the last look.

The charts' history lives in this process for `WINDOW_S`:
- budgets: the ratelimiter's own per-second counts of its last minute, merged second by
  second, so the history is exact wherever someone watched at least once a minute;
- tenants: each gathering's `dispatched_last_minute`, the scheduler's rolling count.
Tenants active, jobs and failures seen are remembered for `RECENT_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.logging import get_logger
from services.gateway import render
from services.gateway.upstreams import Upstreams

log = get_logger(__name__)
T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

MIN_INTERVAL_S = 1.0  # a gathering serves every viewer for this long
WINDOW_S = 300  # the charts' span
RATE_WINDOW_S = 10  # "now": the last complete seconds the current rate is taken over
RECENT_S = 900.0
MAX_TENANTS = 25
LISTED_TENANTS = 100
JOBS_PER_TENANT = 8
MAX_JOBS_KEPT = 300
JOBS_SHOWN = 40
REFRESH_JOBS = 20  # unfinished jobs re-read by id at most, per gathering
FAILURE_JOBS = 5  # jobs whose new failures are read, per gathering
FAILURE_PAGE = 20
FAILURES_KEPT = 200
FAILURES_SHOWN = 50


class Overview:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        self._seconds: dict[str, dict[int, tuple[int, int]]] = {}  # budget -> second -> (requests, tokens)
        self._dispatch: deque[tuple[float, dict[str, int]]] = deque()
        self._active: dict[str, float] = {}  # tenant -> when it last had work queued, in flight or dispatched
        self._jobs: dict[str, tuple[dict[str, Any], float]] = {}  # id -> (job, last seen unfinished or finished at)
        self._failed_read: dict[str, int] = {}  # job id -> failed items already read
        self._failure_after: dict[str, str] = {}  # job id -> ListItems cursor past them
        self._failures: dict[str, dict[str, Any]] = {}  # item id -> failure, oldest first

    async def snapshot(self, up: Upstreams, metadata: Metadata) -> dict[str, Any]:
        """The overview; `metadata` names the admin on the scheduler calls."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._last_at >= MIN_INTERVAL_S:
                self._last = await self._gather(up, metadata, time.time())
                self._last_at = time.monotonic()
            return self._last

    async def _gather(self, up: Upstreams, metadata: Metadata, now: float) -> dict[str, Any]:
        problems: list[str] = []
        call = _Calls(up, metadata, problems)
        stats, queue, listing = await asyncio.gather(
            call.ratelimiter(up.ratelimiter.GetStats(ratelimiter_pb2.GetStatsRequest(), timeout=up.timeout_s)),
            call.scheduler(up.scheduler.GetQueueStats(pb.GetQueueStatsRequest(), **call.opts)),
            call.scheduler(up.scheduler.ListTenants(pb.ListTenantsRequest(limit=LISTED_TENANTS), **call.opts)),
        )
        queued = {t.tenant: t for t in queue.tenants} if queue is not None else {}
        records = {t.id: render.tenant(t) for t in listing.tenants} if listing is not None else {}
        self._active.update(dict.fromkeys(queued, now))
        if queue is not None:
            self._dispatch.append((now, {t.tenant: int(t.dispatched_last_minute) for t in queue.tenants}))
        while self._dispatch and self._dispatch[0][0] < now - WINDOW_S:
            self._dispatch.popleft()
        if stats is not None:
            self._merge_seconds(stats)

        # Busiest first, then those active lately: their jobs are read. Then the listed page's others.
        busy = sorted(queued.values(), key=lambda t: (-(t.queued + t.processing), -t.dispatched_last_minute, t.tenant))
        recent = sorted(t for t, at in self._active.items() if at > now - RECENT_S and t not in queued)
        watched = [t.tenant for t in busy] + recent
        read = watched[:MAX_TENANTS] if queue is not None else []
        answers = await asyncio.gather(*(self._read_tenant(call, name, name not in records) for name in read))
        for name, (tenant, jobs) in zip(read, answers, strict=True):
            if tenant is not None:
                records[name] = render.tenant(tenant)
            for job in jobs:
                self._keep(job, now)
        names = watched + sorted(t for t in records if t not in set(watched))
        if queue is not None:
            await self._refresh_unfinished(call, {job.id for _, jobs in answers for job in jobs}, now)
            await self._read_failures(call)
        self._forget(now)

        doc: dict[str, Any] = {"timestamp": render.timestamp(now), "problems": problems}
        if stats is not None:
            doc.update(render.ratelimiter_stats(stats, queue, now))
            doc["buckets"] = [_with_rate_now(b, s) for b, s in zip(doc["buckets"], stats.budgets, strict=True)]
        else:
            moving = queue is not None and all(t.oldest_queued_age_s < render.QUEUE_STALL_S for t in queue.tenants)
            doc["buckets"], doc["health"] = [], {"queue_healthy": moving, "rpm_healthy": False}
        doc["status"] = "ok" if not problems else "degraded"
        doc["tenants"] = _tenant_rows(names, queued, records)
        doc["tenants_not_read"] = max(0, len(watched) - MAX_TENANTS)
        doc["more_tenants"] = bool(listing is not None and listing.next)
        doc["lanes"] = render.queue_stats(queue)["lanes"] if queue is not None else []
        doc["totals"] = {
            "queued": sum(t.queued for t in queued.values()),
            "processing": sum(t.processing for t in queued.values()),
            "dispatched_last_minute": sum(t.dispatched_last_minute for t in queued.values()),
        }
        doc["predictors"] = _predictors(queue)
        doc["jobs"] = self._job_rows()
        doc["failures"] = sorted(self._failures.values(), key=lambda f: f["finished_at"] or "", reverse=True)[
            :FAILURES_SHOWN
        ]
        doc["charts"] = self._charts(stats)
        return doc

    async def _read_tenant(self, call: _Calls, name: str, unlisted: bool) -> tuple[pb.Tenant | None, list[pb.Job]]:
        """The tenant's newest jobs, and its record when the listed page did not hold it."""
        up = call.up
        tenant = up.scheduler.GetTenant(pb.GetTenantRequest(id=name), **call.opts) if unlisted else _none()
        found, listing = await asyncio.gather(
            call.scheduler(tenant),
            call.scheduler(
                up.scheduler.ListJobs(pb.ListJobsRequest(tenant=name, limit=JOBS_PER_TENANT), **call.opts)
            ),
        )
        return found, list(listing.jobs) if listing is not None else []

    async def _refresh_unfinished(self, call: _Calls, listed: set[str], now: float) -> None:
        stale = [job for job, _ in self._jobs.values() if job["id"] not in listed and not job["finished_at"]]
        stale.sort(key=lambda j: j["updated_at"] or "", reverse=True)
        up = call.up
        found = await asyncio.gather(*(
            call.scheduler(up.scheduler.GetJob(pb.GetJobRequest(tenant=j["tenant"], job_id=j["id"]), **call.opts))
            for j in stale[:REFRESH_JOBS]
        ))
        for job in found:
            if job is not None:
                self._keep(job, now)

    def _keep(self, job: pb.Job, now: float) -> None:
        # A finished job is remembered from when it finished, an unfinished one from when it was seen.
        self._jobs[job.id] = (render.job(job), job.finished_at or now)

    async def _read_failures(self, call: _Calls) -> None:
        grown = [job for job, _ in self._jobs.values() if job["counts"]["FAILED"] > self._failed_read.get(job["id"], 0)]
        grown.sort(key=lambda j: j["updated_at"] or "", reverse=True)
        await asyncio.gather(*(self._read_failures_of(call, job) for job in grown[:FAILURE_JOBS]))
        while len(self._failures) > FAILURES_KEPT:
            del self._failures[next(iter(self._failures))]

    async def _read_failures_of(self, call: _Calls, job: dict[str, Any]) -> None:
        job_id = job["id"]
        request = pb.ListItemsRequest(
            tenant=job["tenant"], job_id=job_id, status=pb.FAILED, limit=FAILURE_PAGE,
            after=self._failure_after.get(job_id, ""),
        )
        reply = await call.scheduler(call.up.scheduler.ListItems(request, **call.opts))
        if reply is None:
            return
        for item in reply.items:
            self._failures[item.id] = {
                "item_id": item.id, "ref": item.ref, "error": item.error, "attempts": item.attempts,
                "finished_at": render.timestamp(item.finished_at), "job_id": job_id, "tenant": job["tenant"],
                "provider": job["provider"], "model": job["model"],
            }
        if reply.next:
            self._failure_after[job_id] = reply.next
            self._failed_read[job_id] = self._failed_read.get(job_id, 0) + len(reply.items)
        else:
            self._failed_read[job_id] = job["counts"]["FAILED"]

    def _merge_seconds(self, stats: ratelimiter_pb2.GetStatsResponse) -> None:
        end = int(stats.timestamp)  # the series' last (current) second
        for b in stats.budgets:
            seconds = self._seconds.setdefault(b.name, {})
            tokens = list(b.tokens_by_second) or [0] * len(b.requests_by_second)
            count = len(b.requests_by_second)
            for i, (r, t) in enumerate(zip(b.requests_by_second, tokens, strict=True)):
                seconds[end - count + 1 + i] = (int(r), int(t))
            for old in [s for s in seconds if s <= end - WINDOW_S - 1]:
                del seconds[old]

    def _charts(self, stats: ratelimiter_pb2.GetStatsResponse | None) -> dict[str, Any]:
        # Complete seconds only: the current one has not finished counting.
        end = int(stats.timestamp) - 1 if stats is not None else int(time.time()) - 1
        start = end - WINDOW_S + 1
        budgets = {}
        for name, seconds in self._seconds.items():
            span = [seconds.get(s) for s in range(start, end + 1)]
            budgets[name] = {
                "requests": [None if v is None else v[0] for v in span],
                "tokens": [None if v is None else v[1] for v in span],
            }
        tenants = sorted({t for _, counts in self._dispatch for t in counts})
        return {
            "start": start,
            "seconds": WINDOW_S,
            "budgets": budgets,
            "dispatch": {
                "t": [round(at, 3) for at, _ in self._dispatch],
                "tenants": {t: [counts.get(t, 0) for _, counts in self._dispatch] for t in tenants},
            },
        }

    def _job_rows(self) -> dict[str, Any]:
        jobs = [job for job, _ in self._jobs.values()]
        by_status = {status: 0 for status in render.JOB_STATUSES}
        for job in jobs:
            by_status[job["status"]] += 1
        running = sorted((j for j in jobs if not j["finished_at"]), key=lambda j: j["created_at"] or "", reverse=True)
        done = sorted((j for j in jobs if j["finished_at"]), key=lambda j: j["finished_at"] or "", reverse=True)
        return {"by_status": by_status, "list": (running + done)[:JOBS_SHOWN], "kept": len(jobs)}

    def _forget(self, now: float) -> None:
        for key in [k for k, (_, since) in self._jobs.items() if since < now - RECENT_S]:
            del self._jobs[key]
        for tenant in [t for t, at in self._active.items() if at < now - RECENT_S]:
            del self._active[tenant]
        if len(self._jobs) > MAX_JOBS_KEPT:
            newest = sorted(self._jobs.items(), key=lambda kv: kv[1][0]["updated_at"] or "", reverse=True)
            self._jobs = dict(newest[:MAX_JOBS_KEPT])
        for job_id in [j for j in self._failed_read if j not in self._jobs]:
            self._failed_read.pop(job_id, None)
            self._failure_after.pop(job_id, None)


class _Calls:
    """Calls whose failure is told in `problems` (once per upstream) and answers None."""

    def __init__(self, up: Upstreams, metadata: Metadata, problems: list[str]) -> None:
        self.up = up
        self.opts: dict[str, Any] = {"timeout": up.timeout_s, "metadata": metadata}
        self._problems = problems

    async def scheduler(self, call: Awaitable[T]) -> T | None:
        return await self._answer("scheduler", call)

    async def ratelimiter(self, call: Awaitable[T]) -> T | None:
        return await self._answer("ratelimiter", call)

    async def _answer(self, upstream: str, call: Awaitable[T]) -> T | None:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            problem = f"The {upstream} did not answer ({exc.code().name}); what it shows may be missing or stale."
            if problem not in self._problems:
                log.warning("status page: %s: %s %s", upstream, exc.code(), exc.details())
                self._problems.append(problem)
            return None


def _with_rate_now(bucket: dict[str, Any], b: ratelimiter_pb2.BudgetStats) -> dict[str, Any]:
    """The budget's use over the last complete `RATE_WINDOW_S` seconds, per minute: what a
    burst shows at once, while the last-minute count still holds the quiet before it."""
    per_minute = 60.0 / RATE_WINDOW_S
    recent = list(b.requests_by_second)[-RATE_WINDOW_S - 1 : -1]
    bucket["requests_last_10s"] = sum(recent)
    bucket["rpm_now"] = round(sum(recent) * per_minute, 1)
    bucket["rpm_now_percent"] = round(100.0 * bucket["rpm_now"] / b.limit_rpm, 1) if b.limit_rpm else 0.0
    if b.limit_tpm > 0:
        tokens = list(b.tokens_by_second)[-RATE_WINDOW_S - 1 : -1]
        bucket["tpm_now"] = round(sum(tokens) * per_minute, 1)
        bucket["tpm_now_percent"] = round(100.0 * bucket["tpm_now"] / b.limit_tpm, 1)
    return bucket


def _tenant_rows(
    names: list[str], queued: dict[str, pb.TenantQueue], records: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        q = queued.get(name)
        record = records.get(name, {})
        rows.append({
            "tenant": name,
            "queued": q.queued if q else record.get("queued", 0),
            "processing": q.processing if q else record.get("processing", 0),
            "oldest_queued_age_s": round(q.oldest_queued_age_s, 1) if q else 0.0,
            "dispatched_last_minute": q.dispatched_last_minute if q else 0,
            "weight": record.get("weight"),
            "max_concurrency": record.get("max_concurrency"),
            "credits": record.get("credits"),
        })
    return rows


async def _none() -> None:
    return None


def _predictors(queue: pb.QueueStats | None) -> list[dict[str, Any]] | None:
    """None when unknown (the scheduler did not answer), else every replica's predictors."""
    if queue is None:
        return None
    return [
        {"name": p.name, "providers": list(p.providers), "free_slots": p.free_slots,
         "connected_at": render.timestamp(p.connected_at)}
        for p in queue.predictors
    ]
