"""Jobs: a tenant submits a batch of items for one provider model and follows it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Header, Query
from pydantic import BeforeValidator, Field

from services.gateway import render
from services.gateway.auth import AnyKey, Stubs, TenantKey
from services.gateway.errors import ApiError
from services.gateway.schemas import INT32_MAX, OPERATIONS, ItemPage, Job, JobPage, JobSubmit, Status

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_PAGE = 1000
PAGE = 100


def _blank_is_absent(value: Any) -> Any:
    """`?status=&limit=` (a form sent with empty fields) means the same as leaving them out."""
    return None if value == "" else value


PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE)]
Limit = Annotated[PageSize | None, BeforeValidator(_blank_is_absent), Query(description=f"page size (default {PAGE})")]
StatusFilter = Annotated[Status | None, BeforeValidator(_blank_is_absent), Query(description="only this status")]
After = Annotated[str, Query(max_length=512, description="the `next` cursor of the previous page")]


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, so reordering a body changes nothing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_hash(job: JobSubmit) -> str:
    """What an Idempotency-Key is bound to: the submitted job with its defaults filled in."""
    return hashlib.sha256(canonical_json(job.model_dump(mode="json")).encode()).hexdigest()


def _required(path: str, what: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{path}: {what}")


# What the Replicate SDK can call: a model, or a model at a version.
REPLICATE_MODEL = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:\w+)?")


def check_items(job: JobSubmit) -> None:
    """The input shape each operation needs (the provider's own validation comes later)."""
    if job.provider == "replicate" and not REPLICATE_MODEL.fullmatch(job.model):
        raise _required("model", "a Replicate model is owner/name or owner/name:version")
    for n, item in enumerate(job.items):
        where = f"items[{n}].input"
        data = item.input
        if job.operation == "chat":
            messages = data.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _required(f"{where}.messages", "an openai chat item needs a non-empty list of messages")
            if "max_tokens" in data and not _positive_int(data["max_tokens"]):
                raise _required(f"{where}.max_tokens", f"must be a whole number from 1 to {INT32_MAX}")
        elif job.operation == "response":
            if data.get("input") in (None, "", []):
                raise _required(f"{where}.input", "an openai response item needs an input")
            if "max_output_tokens" in data and not _positive_int(data["max_output_tokens"]):
                raise _required(f"{where}.max_output_tokens", f"must be a whole number from 1 to {INT32_MAX}")
        elif job.operation == "image":
            prompt = data.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise _required(f"{where}.prompt", "an openai image item needs a prompt string")


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=False)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= INT32_MAX


@router.post("", status_code=201, response_model=Job)
async def submit_job(
    body: JobSubmit,
    who: TenantKey,
    up: Stubs,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> dict[str, Any]:
    """Queue a job; with `Idempotency-Key`, a retry of the same body answers the same job."""
    allowed = OPERATIONS[body.provider]
    if body.operation is None:
        body = body.model_copy(update={"operation": allowed[0]})
    elif body.operation not in allowed:
        raise _required("operation", f"{body.provider} offers {', '.join(allowed)}, not {body.operation}")
    check_items(body)
    try:
        items = [scheduler_pb2.ItemInput(ref=i.ref, input_json=_json(i.input)) for i in body.items]
        metadata_json = "" if body.metadata is None else _json(body.metadata)
    except ValueError:
        # Python's parser takes them; JSON, the providers and PostgreSQL do not.
        raise ApiError(400, "invalid_json", "NaN and Infinity are not JSON numbers; send null or a number.") from None
    request = scheduler_pb2.SubmitJobRequest(
        tenant=who.tenant,
        provider=body.provider,
        model=body.model,
        operation=body.operation or "",
        priority=body.priority,
        items=items,
        metadata_json=metadata_json,
        idempotency_key=idempotency_key or "",
        request_hash=request_hash(body) if idempotency_key else "",
    )
    created = await up.scheduler.SubmitJob(request, timeout=up.timeout_s)
    return render.job(created)


@router.get("", response_model=JobPage)
async def list_jobs(
    who: AnyKey, up: Stubs, status: StatusFilter = None, limit: Limit = None, after: After = ""
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
    )
    return {"jobs": [render.job(j) for j in reply.jobs], "next": reply.next or None}


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, who: AnyKey, up: Stubs) -> dict[str, Any]:
    """A job with its item counts; another tenant's job is 404."""
    found = await up.scheduler.GetJob(
        scheduler_pb2.GetJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s
    )
    return render.job(found)


@router.get("/{job_id}/items", response_model=ItemPage)
async def list_items(
    job_id: str, who: AnyKey, up: Stubs, status: StatusFilter = None, limit: Limit = None, after: After = ""
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
    )
    return {"items": [render.item(i) for i in reply.items], "next": reply.next or None}


@router.post("/{job_id}/cancel", response_model=Job)
async def cancel_job(job_id: str, who: AnyKey, up: Stubs) -> dict[str, Any]:
    """Cancel what is pending now and what is in flight where the provider allows; credits are refunded."""
    canceled = await up.scheduler.CancelJob(
        scheduler_pb2.CancelJobRequest(tenant=who.scope, job_id=job_id), timeout=up.timeout_s
    )
    return render.job(canceled)
