"""Jobs and their items: submit (with credits and queue limits), read, list, cancel."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.common.limits import Limits
from services.scheduler.errors import (
    IdempotencyConflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    QueueFull,
)
from services.scheduler.lanes import admission_tokens, check_operation, lane_for
from services.scheduler.sql import QUERIES

MAX_ITEMS_PER_JOB = 100_000
MAX_PAGE = 1000
DEFAULT_PAGE = 100
ITEM_STATUS_NAMES = {v: k for k, v in pb.ItemStatus.items() if v}

# (lane, tenant, items added, the largest of their token counts) -> None
BacklogListener = Callable[[str, str, int, float], None]


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


def parse_id(value: str, what: str) -> uuid.UUID:
    """An id from a request; one that is not a UUID names nothing (NotFound)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} {value!r} does not exist") from None


def job_status(row: Any) -> pb.JobStatus.ValueType:
    # A canceled job reads CANCELED at once; its items in flight still end as their
    # provider answers the cancel (its counts move, and `finished_at` is set with the last).
    if row["canceled"]:
        return pb.JOB_CANCELED
    if row["finished_at"] is not None:
        return pb.JOB_FAILED if row["n_failed"] else pb.JOB_DONE
    if row["n_pending"] == row["items_total"] and not row["canceled"] and not row["retrying"]:
        return pb.JOB_PENDING
    return pb.JOB_PROCESSING


def render_job(row: Any) -> pb.Job:
    return pb.Job(
        id=str(row["id"]), tenant=row["tenant_id"], provider=row["provider"], model=row["model"],
        operation=row["operation"], status=job_status(row), priority=row["priority"],
        items_total=row["items_total"],
        counts=pb.ItemCounts(pending=row["n_pending"], processing=row["n_processing"], done=row["n_done"],
                             failed=row["n_failed"], canceled=row["n_canceled"]),
        metadata_json=row["metadata"], created_at=_ts(row["created_at"]),
        updated_at=_ts(row["updated_at"]), finished_at=_ts(row["finished_at"]),
    )


def render_item(row: Any) -> pb.Item:
    return pb.Item(
        id=str(row["id"]), job_id=str(row["job_id"]), ref=row["ref"],
        status=pb.ItemStatus.Value(row["status"]), attempts=row["attempts"],
        output_json=row["output"] or "", error=row["error"] or "", usage_json=row["usage"] or "",
        created_at=_ts(row["created_at"]), started_at=_ts(row["started_at"]),
        finished_at=_ts(row["finished_at"]),
    )


def _parse_input(index: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequest(f"items[{index}].input: not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"items[{index}].input: must be a JSON object")
    return value


def _check_input(provider: str, operation: str, index: int, value: dict[str, Any]) -> None:
    where = f"items[{index}].input"
    if provider != "openai":
        return
    if operation == "chat" and not (isinstance(value.get("messages"), list) and value["messages"]):
        raise InvalidRequest(f"{where}.messages: a chat item needs a non-empty list of messages")
    if operation == "response" and "input" not in value:
        raise InvalidRequest(f"{where}.input: a response item needs an input")
    if operation == "image" and not isinstance(value.get("prompt"), str):
        raise InvalidRequest(f"{where}.prompt: an image item needs a prompt string")


class Jobs:
    def __init__(
        self, pool: asyncpg.Pool, *, item_cost: int, replica: str, on_backlog: BacklogListener,
        limits: Limits | None = None,
    ) -> None:
        self._pool = pool
        self._limits = limits or Limits()
        self._item_cost = item_cost
        self._replica = replica
        self._on_backlog = on_backlog

    async def submit(self, req: pb.SubmitJobRequest) -> pb.Job:
        operation = check_operation(req.provider, req.operation)
        if not req.model:
            raise InvalidRequest("model: required")
        n = len(req.items)
        if n == 0:
            raise InvalidRequest("items: a job needs at least one item")
        if n > MAX_ITEMS_PER_JOB:
            raise InvalidRequest(f"items: at most {MAX_ITEMS_PER_JOB} items per job, got {n}")
        metadata = req.metadata_json or "{}"
        try:
            if not isinstance(json.loads(metadata), dict):
                raise ValueError
        except ValueError:
            raise InvalidRequest("metadata: must be a JSON object") from None
        refs, inputs, costs = [], [], []
        tpm = self._limits.openai.for_model(req.model).tpm
        for i, item in enumerate(req.items):
            value = _parse_input(i, item.input_json)
            _check_input(req.provider, operation, i, value)
            refs.append(item.ref)
            inputs.append(item.input_json)
            tokens = admission_tokens(self._limits, req.provider, operation, req.model, value)
            if tokens > tpm:
                # The provider refuses such a request for good ("Request too large").
                raise InvalidRequest(
                    f"items[{i}].input: counts {tokens} tokens (prompt + output cap) against {req.model}'s "
                    f"limit of {tpm} tokens a minute; lower its output cap (max_tokens) or shorten it"
                )
            costs.append(tokens)
        lane = lane_for(req.provider, req.model, operation)
        job_id = uuid.uuid4()

        async with self._pool.acquire() as conn, conn.transaction():
            # The tenant row lock serializes this tenant's submits: the queue limit and the
            # credit balance are checked and changed without a race.
            tenant = await conn.fetchrow(QUERIES["lock_tenant"], req.tenant)
            if tenant is None:
                raise NotFound(f"tenant {req.tenant!r} does not exist")
            if req.idempotency_key:
                seen = await conn.fetchrow(QUERIES["job_by_idempotency_key"], req.tenant, req.idempotency_key)
                if seen is not None:
                    if seen["request_hash"] != req.request_hash:
                        raise IdempotencyConflict(
                            "Idempotency-Key was already used with a different request body; "
                            "use a new key for a new job"
                        )
                    return await self.get(req.tenant, str(seen["id"]))
            if n > tenant["max_queued"]:
                # Still the queue limit (429), but waiting will not help: say so, with no
                # retry-after (the gateway then sends no Retry-After: no client waits to retry).
                raise QueueFull(
                    f"the job has {n} items and the queue limit is {tenant['max_queued']}: it can never be "
                    f"queued whole; split it into jobs of at most {tenant['max_queued']} items"
                )
            if tenant["queued"] + n > tenant["max_queued"]:
                raise QueueFull(
                    f"the queue holds {tenant['queued']} items and the limit is {tenant['max_queued']}; "
                    f"retry when fewer are queued",
                    retry_after_s=30.0,
                )
            cost = self._item_cost if tenant["credits"] is not None else 0
            if cost:
                needed = cost * n
                balance = await conn.fetchval(QUERIES["reserve_credits"], req.tenant, needed)
                if balance is None:
                    raise InsufficientCredits(
                        f"the job needs {needed} credits and the balance is {tenant['credits']}; "
                        "add credits or submit fewer items"
                    )
            job = await conn.fetchrow(
                QUERIES["insert_job"], job_id, req.tenant, req.provider, req.model, operation, lane,
                req.priority, metadata, n, req.idempotency_key or None, req.request_hash or None,
            )
            await conn.execute(QUERIES["insert_items"], job_id, req.tenant, lane, req.priority, cost,
                               refs, inputs, costs)
            await conn.execute(QUERIES["open_job_cursor"], job_id, lane, req.tenant, req.priority, job["seq"], n,
                               job["created_at"])
            if cost:
                await conn.execute(QUERIES["ledger_reserve"], req.tenant, -cost * n, job_id)
            largest = max(costs)
            await conn.execute(QUERIES["count_submitted"], lane, req.tenant, n)
            await conn.execute(QUERIES["notify_backlog"],
                               f"{self._replica}|{lane}|{req.tenant}|{n}|{largest}")
        self._on_backlog(lane, req.tenant, n, largest)
        return await self.get(req.tenant, str(job_id))

    async def get(self, tenant: str, job_id: str) -> pb.Job:
        row = await self._pool.fetchrow(QUERIES["get_job"], parse_id(job_id, "job"), tenant)
        if row is None:
            raise NotFound(f"job {job_id!r} does not exist")
        return render_job(row)

    async def list(self, req: pb.ListJobsRequest) -> pb.ListJobsResponse:
        limit = _page(req.limit)
        after = _cursor(req.after, default=2**62)
        status = pb.JobStatus.Name(req.status).removeprefix("JOB_") if req.status else ""
        rows = await self._pool.fetch(QUERIES["list_jobs"], req.tenant, after, status, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return pb.ListJobsResponse(
            jobs=[render_job(r) for r in rows], next=str(rows[-1]["seq"]) if more else ""
        )

    async def list_items(self, req: pb.ListItemsRequest) -> pb.ListItemsResponse:
        await self.get(req.tenant, req.job_id)  # 404 unless it exists and is the caller's
        limit = _page(req.limit)
        after = _cursor(req.after, default=0)
        status = ITEM_STATUS_NAMES.get(req.status, "")
        rows = await self._pool.fetch(
            QUERIES["list_items"], uuid.UUID(req.job_id), after, status, limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return pb.ListItemsResponse(
            items=[render_item(r) for r in rows], next=str(rows[-1]["seq"]) if more else ""
        )


def _page(limit: int) -> int:
    if limit == 0:
        return DEFAULT_PAGE
    return min(limit, MAX_PAGE)


def _cursor(value: str, *, default: int) -> int:
    if not value:
        return default
    try:
        cursor = int(value)
    except ValueError:
        cursor = -1
    if not 0 <= cursor < 2**63:
        raise InvalidRequest("after: not a cursor returned by this listing")
    return cursor
