"""ListTenants pages in id order, unmoved by tenants created meanwhile; RotateKey replaces the
key in one statement: the old key authenticates no more, the new one does."""

from __future__ import annotations

import grpc
import pytest
from fairway.scheduler.v1 import scheduler_pb2 as pb

from tests.scheduler.conftest import Client


async def _all_pages(client: Client, limit: int, during: list[str]) -> list[list[str]]:
    """Every page, creating one tenant of `during` after each page is read."""
    pages: list[list[str]] = []
    after = ""
    while True:
        page = await client.api.ListTenants(pb.ListTenantsRequest(limit=limit, after=after))
        pages.append([t.id for t in page.tenants])
        if during:
            await client.tenant(during.pop(0))
        if not page.next:
            return pages
        after = page.next


async def test_pages_are_stable_while_tenants_are_created(client: Client) -> None:
    for tenant_id in ("b", "d", "f", "h", "j"):
        await client.tenant(tenant_id, credits=7)
    job = await client.submit("d", 3)
    assert job.items_total == 3
    pages = await _all_pages(client, 2, during=["e", "a"])
    # No tenant is seen twice or skipped; one created ahead of the cursor ("e", after the first
    # page) is seen, one behind it ("a", after the second) is not.
    assert pages == [["b", "d"], ["e", "f"], ["h", "j"]]
    listed = await client.api.ListTenants(pb.ListTenantsRequest(limit=1000))
    assert [t.id for t in listed.tenants] == ["a", "b", "d", "e", "f", "h", "j"] and listed.next == ""
    d = next(t for t in listed.tenants if t.id == "d")
    assert (d.queued, d.processing, d.credits, d.api_key) == (3, 0, 4, "")
    default = await client.api.ListTenants(pb.ListTenantsRequest())
    assert len(default.tenants) == 7


async def test_rotate_key_refuses_the_old_key_at_once(client: Client) -> None:
    created = await client.tenant("store-r")
    assert (await client.api.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))).tenant == "store-r"
    rotated = await client.api.RotateKey(pb.RotateKeyRequest(id="store-r"))
    assert rotated.api_key.startswith("fw_") and rotated.api_key != created.api_key
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.api.Authenticate(pb.AuthenticateRequest(api_key=created.api_key))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await client.api.Authenticate(pb.AuthenticateRequest(api_key=rotated.api_key))).tenant == "store-r"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.api.RotateKey(pb.RotateKeyRequest(id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
