"""Bearer keys: the operator's (from settings) or a tenant's (checked by the scheduler).

Positive answers are cached briefly so that most requests cost no extra RPC. A rotated key
(`POST /v1/tenants/{id}/rotate-key`) is dropped from the cache of the replica that rotated it,
so there it is refused at once; another gateway replica may still accept it for at most
`CACHE_TTL_S`, until its cached answer expires. The principal found is named
on every scheduler call made for the request (`metadata=who.metadata`): the scheduler acts
for it, not for whatever the request's `tenant` field says.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from typing import Annotated

import grpc
from fairway.scheduler.v1 import scheduler_pb2
from fastapi import Depends, Request

from services.common.auth import ADMIN, Principal
from services.gateway.errors import ApiError, from_rpc_error
from services.gateway.ratelimit import TenantRateLimit
from services.gateway.upstreams import Upstreams

CACHE_TTL_S = 5.0
CACHE_MAX_KEYS = 10_000




class Authenticator:
    def __init__(self, admin_key: str, upstreams: Upstreams) -> None:
        self._admin_key = admin_key.encode()
        self._upstreams = upstreams
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        # Bumped by `forget`: an answer asked for before a key was rotated is not cached after it.
        self._generation = 0

    async def principal(self, key: str) -> Principal:
        if hmac.compare_digest(key.encode(), self._admin_key):
            return ADMIN
        digest = hashlib.sha256(key.encode()).digest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        generation = self._generation
        try:
            reply = await self._upstreams.scheduler.Authenticate(
                scheduler_pb2.AuthenticateRequest(api_key=key), timeout=self._upstreams.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            err = from_rpc_error(exc)
            if err.status in (401, 404):
                raise _bad_key() from exc
            raise err from exc
        if not reply.admin and not reply.tenant:
            raise _bad_key()
        found = ADMIN if reply.admin else Principal(admin=False, tenant=reply.tenant)
        if generation != self._generation:
            return found
        self._cache[digest] = (found, now + CACHE_TTL_S)
        self._cache.move_to_end(digest)
        while len(self._cache) > CACHE_MAX_KEYS:
            self._cache.popitem(last=False)
        return found

    def forget(self, tenant: str) -> None:
        """Drop the cached keys of `tenant`, whose key was just rotated: the next call with the
        old key asks the scheduler, which refuses it."""
        self._generation += 1
        for digest in [d for d, (who, _) in self._cache.items() if who.tenant == tenant]:
            del self._cache[digest]


def _bad_key() -> ApiError:
    return ApiError(401, "unauthorized", "The API key is not valid; check the Authorization header.")


async def current_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "Send your API key as 'Authorization: Bearer KEY'.")
    authenticator: Authenticator = request.app.state.authenticator
    found = await authenticator.principal(key)
    if not found.admin:
        limit: TenantRateLimit = request.app.state.tenant_rate
        limit.check(found.tenant)
    return found


async def admin_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if not principal.admin:
        raise ApiError(403, "forbidden", "This endpoint needs the admin key.")
    return principal


async def tenant_principal(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
    if principal.admin:
        raise ApiError(403, "forbidden", "This endpoint acts for one tenant; use that tenant's API key.")
    return principal


AnyKey = Annotated[Principal, Depends(current_principal)]
AdminKey = Annotated[Principal, Depends(admin_principal)]
TenantKey = Annotated[Principal, Depends(tenant_principal)]


def upstreams(request: Request) -> Upstreams:
    found: Upstreams = request.app.state.upstreams
    return found


Stubs = Annotated[Upstreams, Depends(upstreams)]
