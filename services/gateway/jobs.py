"""Jobs: a tenant submits a batch of items for one provider model and follows it."""

from __future__ import annotations

import asyncio
import email.message
import re
from typing import Annotated, Any, get_args

from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Header, Query, Request
from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from services.gateway import job_schema, render, submission
from services.gateway.auth import AnyKey, Stubs, TenantKey
from services.gateway.errors import ApiError
from services.gateway.openapi import documented
from services.gateway.schemas import ItemPage, Job, JobPage, Status

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_PAGE = 1000
PAGE = 100


def _blank_is_absent(value: Any) -> Any:
    """`?status=&limit=` (a form sent with empty fields) means the same as leaving them out."""
    return None if value == "" else value


def _cursor(value: str) -> str:
    """A page's `next`: the scheduler's cursors are whole numbers (18 digits keep them below 2**63)."""
    if not CURSOR.fullmatch(value):
        raise ValueError("not a cursor returned by this listing; send the previous page's `next`")
    return value


CURSOR = re.compile(r"[0-9]{0,18}")
# Blank (`?limit=`) is a value these take, so the schemas say so; none of them is nullable.
_BLANK = {"type": "string", "maxLength": 0}
PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE)]
Limit = Annotated[
    PageSize | None,
    BeforeValidator(_blank_is_absent),
    Query(description=f"page size (default {PAGE}); blank counts as left out"),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, _BLANK]}),
]
StatusFilter = Annotated[
    Status | None,
    BeforeValidator(_blank_is_absent),
    Query(description="only this status; blank counts as left out"),
    WithJsonSchema({"type": "string", "enum": [*get_args(Status), ""]}),
]
After = Annotated[str, Query(max_length=512, description="the `next` cursor of the previous page")]
# The scheduler's job and item cursors are whole numbers: anything else is refused here, as the
# schema says, rather than by the scheduler.
JobCursor = Annotated[
    str,
    AfterValidator(_cursor),
    Query(description="the `next` cursor of the previous page"),
    WithJsonSchema({"type": "string", "pattern": f"^{CURSOR.pattern}$"}),
]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=255, description="a retry with the same key and body answers the same job"),
    WithJsonSchema({"type": "string", "maxLength": 255}),
]


# The body is read by the handler (see `submission`), so the OpenAPI document is told its schema.
_SUBMIT_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": job_schema.submit_schema()}}}
}


def _json_content_type(request: Request) -> None:
    """As FastAPI reads a JSON body: no Content-Type, application/json or application/*+json."""
    value = request.headers.get("content-type")
    if not value:
        return
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    if message.get_content_maintype() != "application" or not (subtype == "json" or subtype.endswith("+json")):
        raise ApiError(
            400, "invalid_json", "The body must be a JSON object sent with Content-Type: application/json."
        )


@router.post(
    "",
    status_code=201,
    response_model=Job,
    openapi_extra=_SUBMIT_BODY,
    responses=documented({
        402: "The tenant's credits cannot cover the job (`insufficient_credits`); nothing was queued.",
        409: "The Idempotency-Key was used with another body (`idempotency_conflict`).",
        429: "The tenant's queue limit (`queue_full`), with Retry-After; a job with more items than the limit "
        "can never be queued whole and gets no Retry-After: split it. Or the tenant's request rate "
        "(`rate_limited`).",
    }),
)
async def submit_job(
    request: Request,
    who: TenantKey,
    up: Stubs,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Queue a job; with `Idempotency-Key`, a retry of the same body answers the same job."""
    # The key is checked (and the tenant's request rate) before the body is even read.
    _json_content_type(request)
    body = await request.body()
    workers: asyncio.Semaphore = request.app.state.submit_workers
    async with workers:
        prepared = await asyncio.to_thread(submission.prepare, body, who.tenant, idempotency_key)
    created = await up.scheduler.SubmitJob(prepared, timeout=up.timeout_s, metadata=who.metadata)
    return render.job(created)


@router.get("", response_model=JobPage)
async def list_jobs(
    who: AnyKey, up: Stubs, status: StatusFilter = None, limit: Limit = None, after: JobCursor = ""
) -> dict[str, Any]:
    """Own jobs, newest first (the admin sees every tenant's)."""
    reply = await up.scheduler.ListJobs(
        scheduler_pb2.ListJobsRequest(
            tenant=who.scope,
            status=render.job_status_value(status),
            limit=limit or PAGE,
            after=after,
        ),
        timeout=up.timeout_s,
        metadata=who.metadata,
    )
    return {"jobs": [render.job(j) for j in reply.jobs], "next": reply.next or None}


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, who: AnyKey, up: Stubs) -> dict[str, Any]:
    """A job with its item counts; another tenant's job is 404."""
    found = await up.scheduler.GetJob(
        scheduler_pb2.GetJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s, metadata=who.metadata
    )
    return render.job(found)


@router.get("/{job_id}/items", response_model=ItemPage)
async def list_items(
    job_id: str, who: AnyKey, up: Stubs, status: StatusFilter = None, limit: Limit = None, after: JobCursor = ""
) -> dict[str, Any]:
    """A job's items with their outputs, in submission order."""
    reply = await up.scheduler.ListItems(
        scheduler_pb2.ListItemsRequest(
            tenant=who.scope,
            job_id=job_id,
            status=render.item_status_value(status),
            limit=limit or PAGE,
            after=after,
        ),
        timeout=up.timeout_s,
        metadata=who.metadata,
    )
    return {"items": [render.item(i) for i in reply.items], "next": reply.next or None}


@router.post("/{job_id}/cancel", response_model=Job)
async def cancel_job(job_id: str, who: AnyKey, up: Stubs) -> dict[str, Any]:
    """Cancel what is pending now and what is in flight where the provider allows; credits are refunded."""
    canceled = await up.scheduler.CancelJob(
        scheduler_pb2.CancelJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s, metadata=who.metadata
    )
    return render.job(canceled)
