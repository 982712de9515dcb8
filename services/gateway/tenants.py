"""Tenants: created and tuned by the operator; a tenant may read itself."""

from __future__ import annotations

from typing import Any

from fairway.scheduler.v1 import scheduler_pb2
from fastapi import APIRouter, Request

from services.common.auth import Principal
from services.gateway import render
from services.gateway.auth import AdminKey, AnyKey, Authenticator, Stubs
from services.gateway.errors import ApiError
from services.gateway.jobs import PAGE, After, Limit
from services.gateway.schemas import (
    ApiKey,
    Credits,
    CreditsAdd,
    Tenant,
    TenantCreate,
    TenantCreated,
    TenantPage,
    TenantUpdate,
)

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])


@router.post("", status_code=201, response_model=TenantCreated)
async def create_tenant(body: TenantCreate, who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Create a tenant; the answer holds its API key, shown only this once."""
    request = scheduler_pb2.CreateTenantRequest(id=body.id, weight=body.weight)
    if body.max_concurrency is not None:
        request.max_concurrency = body.max_concurrency
    if body.max_queued is not None:
        request.max_queued = body.max_queued
    if body.credits is not None:
        request.credits = body.credits
    created = await up.scheduler.CreateTenant(request, timeout=up.timeout_s, metadata=who.metadata)
    return render.tenant(created, with_key=True)


@router.get("", response_model=TenantPage)
async def list_tenants(who: AdminKey, up: Stubs, limit: Limit = None, after: After = "") -> dict[str, Any]:
    """Every tenant in id order, a page at a time: `after` is the previous page's `next`."""
    reply = await up.scheduler.ListTenants(
        scheduler_pb2.ListTenantsRequest(limit=limit or PAGE, after=after), timeout=up.timeout_s,
        metadata=who.metadata,
    )
    return {"tenants": [render.tenant(t) for t in reply.tenants], "next": reply.next or None}


@router.get("/me", response_model=Tenant)
async def get_own_tenant(who: AnyKey, up: Stubs) -> dict[str, Any]:
    """The caller's own tenant, with what it has queued and in flight."""
    if who.admin:
        raise ApiError(403, "forbidden", "The admin key has no tenant; use GET /v1/tenants/{id}.")
    return await _get(up, who, who.tenant)


@router.get("/{tenant_id}", response_model=Tenant)
async def get_tenant(tenant_id: str, who: AnyKey, up: Stubs) -> dict[str, Any]:
    """A tenant, with what it has queued and in flight (admin, or the tenant itself)."""
    if not who.admin and who.tenant != tenant_id:
        # Not "forbidden": a tenant key must not learn which other tenants exist.
        raise ApiError(404, "not_found", f"There is no tenant {tenant_id!r}; a tenant key reads GET /v1/tenants/me.")
    return await _get(up, who, tenant_id)


@router.patch("/{tenant_id}", response_model=Tenant)
async def update_tenant(tenant_id: str, body: TenantUpdate, who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Change weight, max_concurrency (null lifts the cap) or max_queued; applies from the next dispatch."""
    request = scheduler_pb2.UpdateTenantRequest(id=tenant_id)
    given = body.model_fields_set
    if body.weight is not None:
        request.weight = body.weight
    elif "weight" in given:
        raise ApiError(422, "invalid_request", "weight: must be a number greater than 0, not null")
    if body.max_concurrency is not None:
        request.max_concurrency = body.max_concurrency
    elif "max_concurrency" in given:
        request.clear_max_concurrency = True
    if body.max_queued is not None:
        request.max_queued = body.max_queued
    elif "max_queued" in given:
        raise ApiError(422, "invalid_request", "max_queued: must be a whole number of at least 0, not null")
    updated = await up.scheduler.UpdateTenant(request, timeout=up.timeout_s, metadata=who.metadata)
    return render.tenant(updated)


@router.post("/{tenant_id}/credits", response_model=Credits)
async def add_credits(tenant_id: str, body: CreditsAdd, who: AdminKey, up: Stubs) -> dict[str, Any]:
    """Add (or, with a negative amount, take away) credits; answers the new balance."""
    reply = await up.scheduler.AddCredits(
        scheduler_pb2.AddCreditsRequest(id=tenant_id, amount=body.amount), timeout=up.timeout_s,
        metadata=who.metadata,
    )
    return {"credits": reply.credits}


@router.post("/{tenant_id}/rotate-key", response_model=ApiKey)
async def rotate_key(tenant_id: str, request: Request, who: AdminKey, up: Stubs) -> dict[str, Any]:
    """A new API key for the tenant, shown only this once; the old one is refused from now on."""
    reply = await up.scheduler.RotateKey(
        scheduler_pb2.RotateKeyRequest(id=tenant_id), timeout=up.timeout_s, metadata=who.metadata
    )
    authenticator: Authenticator = request.app.state.authenticator
    authenticator.forget(tenant_id)
    return {"api_key": reply.api_key}


async def _get(up: Stubs, who: Principal, tenant_id: str) -> dict[str, Any]:
    found = await up.scheduler.GetTenant(
        scheduler_pb2.GetTenantRequest(id=tenant_id), timeout=up.timeout_s, metadata=who.metadata
    )
    return render.tenant(found)
