"""Whom a Scheduler call acts for, and what that principal may see.

The gateway names the HTTP caller it authenticated in `x-fairway-principal` (`admin` or
`tenant:<id>`); only the gateway may call the Scheduler service (services/common/auth.py), so
the name is trusted. A request's `tenant` field is what it asks for, never who asks: an empty
one (every tenant) is the admin's alone, and a tenant asking for another tenant's job is told
it does not exist, as the HTTP contract says (404).

    who = principal(context)
    tenant = scope(who, request.tenant)          # PermissionDenied unless its own (or admin)
    job_scope(who, request.tenant, request.job_id)  # NotFound for another tenant's job
"""

from __future__ import annotations

import grpc

from services.common.auth import Principal
from services.scheduler.errors import NotFound, PermissionDenied


def principal(context: grpc.aio.ServicerContext) -> Principal:
    """The principal the call names; PermissionDenied if it names none."""
    found = Principal.of(context.invocation_metadata())
    if found is None:
        raise PermissionDenied("the call names no principal: send x-fairway-principal: admin or tenant:<id>")
    return found


def require_admin(context: grpc.aio.ServicerContext) -> Principal:
    who = principal(context)
    if not who.admin:
        raise PermissionDenied("this needs the admin")
    return who


def scope(who: Principal, tenant: str) -> str:
    """The tenant a request may act on: any (or, if "", every one) for the admin, its own for a tenant."""
    if who.admin:
        return tenant
    if not tenant:
        raise PermissionDenied("a tenant's request must name its own tenant; every tenant is the admin's to see")
    if tenant != who.tenant:
        raise PermissionDenied(f"tenant {who.tenant!r} may not act for another tenant")
    return tenant


def job_scope(who: Principal, tenant: str, job_id: str) -> str:
    """As `scope`, but another tenant's job is one that does not exist."""
    if not who.admin and tenant and tenant != who.tenant:
        raise NotFound(f"job {job_id!r} does not exist")
    return scope(who, tenant)


def tenant_scope(who: Principal, tenant_id: str) -> str:
    """A tenant record: the admin's to read, or the tenant's own; another's does not exist."""
    if not who.admin and tenant_id != who.tenant:
        raise NotFound(f"tenant {tenant_id!r} does not exist")
    return tenant_id
