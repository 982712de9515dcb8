"""Tenants: their keys, weights, caps and credit balances.

API keys are stored as SHA-256 hashes: a key is a 256-bit random token, so a fast hash
is enough (no password stretching needed) and lookups stay one index probe.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
from fairway.scheduler.v1 import scheduler_pb2 as pb

from services.scheduler.errors import BalanceConflict, InvalidRequest, NotFound, TenantExists
from services.scheduler.sql import QUERIES

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DEFAULT_MAX_QUEUED = 100_000
DEFAULT_PAGE, MAX_PAGE = 100, 1000


def hash_key(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode()).digest()


def new_api_key() -> str:
    return "fw_" + secrets.token_urlsafe(32)


@dataclass
class TenantPolicy:
    weight: float
    max_concurrency: int | None


class TenantDirectory:
    """Tenant records in PostgreSQL, and the dispatch policy of each kept in memory."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.policies: dict[str, TenantPolicy] = {}

    async def load(self) -> None:
        rows = await self._pool.fetch(QUERIES["all_tenants"])
        self.policies = {r["id"]: TenantPolicy(r["weight"], r["max_concurrency"]) for r in rows}

    def weight(self, tenant: str) -> float:
        policy = self.policies.get(tenant)
        return policy.weight if policy else 1.0

    def max_concurrency(self, tenant: str) -> int | None:
        policy = self.policies.get(tenant)
        return policy.max_concurrency if policy else None

    def remember(self, row: asyncpg.Record) -> None:
        self.policies[row["id"]] = TenantPolicy(row["weight"], row["max_concurrency"])

    async def refresh(self, tenant_id: str) -> None:
        """Reload one tenant's policy (another replica created or changed it)."""
        row = await self._pool.fetchrow(QUERIES["tenant_policy"], tenant_id)
        if row is not None:
            self.remember(row)

    async def create(self, req: pb.CreateTenantRequest) -> pb.Tenant:
        if not _TENANT_ID.match(req.id):
            raise InvalidRequest(
                "id: use 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
            )
        weight = req.weight if req.weight else 1.0
        if weight <= 0:
            raise InvalidRequest("weight: must be greater than 0")
        if req.HasField("max_concurrency") and req.max_concurrency <= 0:
            raise InvalidRequest("max_concurrency: must be at least 1, or null for no cap")
        credits = req.credits if req.HasField("credits") else None
        if credits is not None and credits < 0:
            raise InvalidRequest("credits: must not be negative")
        api_key = new_api_key()
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                QUERIES["create_tenant"], req.id, hash_key(api_key), weight,
                req.max_concurrency if req.HasField("max_concurrency") else None,
                req.max_queued if req.HasField("max_queued") else DEFAULT_MAX_QUEUED, credits,
            )
            if row is None:
                raise TenantExists(f"tenant {req.id!r} already exists")
            if credits:
                await conn.execute(QUERIES["ledger_grant"], req.id, credits)
            await conn.execute(QUERIES["notify_tenant"], req.id)
        self.remember(row)
        tenant = _tenant(row)
        tenant.api_key = api_key
        return tenant

    async def get(self, tenant_id: str) -> pb.Tenant:
        row = await self._pool.fetchrow(QUERIES["get_tenant"], tenant_id)
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        tenant = _tenant(row)
        tenant.queued, tenant.processing = row["queued"], row["processing"]
        return tenant

    async def update(self, req: pb.UpdateTenantRequest) -> pb.Tenant:
        if req.HasField("weight") and req.weight <= 0:
            raise InvalidRequest("weight: must be greater than 0")
        if req.HasField("max_concurrency") and req.max_concurrency <= 0:
            raise InvalidRequest("max_concurrency: must be at least 1, or null for no cap")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                QUERIES["update_tenant"], req.id,
                req.weight if req.HasField("weight") else None,
                req.clear_max_concurrency,
                req.max_concurrency if req.HasField("max_concurrency") else None,
                req.max_queued if req.HasField("max_queued") else None,
            )
            if row is None:
                raise NotFound(f"tenant {req.id!r} does not exist")
            # Other replicas reload the policy on this notification, before their next dispatch.
            await conn.execute(QUERIES["notify_tenant"], req.id)
        self.remember(row)
        return await self.get(req.id)

    async def add_credits(self, tenant_id: str, amount: int) -> int:
        if amount == 0:
            raise InvalidRequest("amount: must not be 0")
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                balance = await conn.fetchval(QUERIES["add_credits"], tenant_id, amount)
            except asyncpg.NumericValueOutOfRangeError:
                raise BalanceConflict(f"amount: would take the balance beyond {2**63 - 1}") from None
            if balance is None:
                raise NotFound(f"tenant {tenant_id!r} does not exist")
            if balance < 0:
                raise BalanceConflict(f"amount: would make the balance negative ({balance})")
            await conn.execute(QUERIES["ledger_grant"], tenant_id, amount)
        return int(balance)

    async def page(self, limit: int, after: str) -> pb.ListTenantsResponse:
        limit = min(limit or DEFAULT_PAGE, MAX_PAGE)
        rows = await self._pool.fetch(QUERIES["list_tenants"], after, limit + 1)
        tenants: list[pb.Tenant] = []
        for row in rows[:limit]:
            tenant = _tenant(row)
            tenant.queued, tenant.processing = row["queued"], row["processing"]
            tenants.append(tenant)
        return pb.ListTenantsResponse(tenants=tenants, next=rows[limit - 1]["id"] if len(rows) > limit else "")

    async def rotate_key(self, tenant_id: str) -> str:
        """A new key for the tenant; the old one matches nothing from this statement's commit on."""
        api_key = new_api_key()
        if await self._pool.fetchval(QUERIES["rotate_key"], tenant_id, hash_key(api_key)) is None:
            raise NotFound(f"tenant {tenant_id!r} does not exist")
        return api_key

    async def authenticate(self, api_key: str) -> str | None:
        return await self._pool.fetchval(QUERIES["tenant_by_key"], hash_key(api_key))  # type: ignore[no-any-return]


def _tenant(row: Any) -> pb.Tenant:
    tenant = pb.Tenant(id=row["id"], weight=row["weight"], max_queued=row["max_queued"])
    if row["max_concurrency"] is not None:
        tenant.max_concurrency = row["max_concurrency"]
    if row["credits"] is not None:
        tenant.credits = row["credits"]
    return tenant
