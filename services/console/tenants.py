"""`fairway tenants create|list|show|update|credits|rotate-key` (the admin key)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from rich.text import Text

from services.console import output
from services.console.api import Api, Exit

COLUMNS = ("id", "weight", "max concurrency", "max queued", "credits", "queued", "processing")
NUMBERS = COLUMNS[1:]


def _path(tenant_id: str, *rest: str) -> str:
    return "/".join(("/v1/tenants", quote(tenant_id, safe=""), *rest))


def _row(t: dict[str, Any]) -> list[Any]:
    return [t["id"], f"{t['weight']:g}", output.number(t["max_concurrency"]), output.number(t["max_queued"]),
            "off" if t["credits"] is None else output.number(t["credits"]), output.number(t.get("queued")),
            output.number(t.get("processing"))]


def _show(t: dict[str, Any]) -> None:
    output.out.print(output.fields(zip(COLUMNS, _row(t), strict=True)))


def _key(tenant_id: str, key: str, what: str) -> None:
    output.out.print(Text.assemble("api key:  ", (key, "bold")))
    output.out.print(Text(f"{what}; it is shown only this once. The tenant uses it as: "
                          f"FAIRWAY_KEY={key} fairway submit FILE.jsonl …", style="dim"))


async def create(api: Api, args: argparse.Namespace) -> Exit:
    body = {"id": args.id, "weight": args.weight, "max_concurrency": args.max_concurrency, "credits": args.credits}
    if args.max_queued is not None:
        body["max_queued"] = args.max_queued
    tenant = await api.post("/v1/tenants", body)
    if args.json:
        output.print_json(tenant)
        return Exit.OK
    output.out.print(Text.assemble("created tenant ", (tenant["id"], "bold")))
    _show(tenant)
    _key(tenant["id"], tenant["api_key"], "Keep the key")
    return Exit.OK


async def list_all(api: Api, args: argparse.Namespace) -> Exit:
    tenants = [t async for t in api.pages("/v1/tenants", "tenants")]
    if args.json:
        output.print_json(tenants)
        return Exit.OK
    if not tenants:
        output.out.print("no tenants yet: fairway tenants create ID")
        return Exit.OK
    output.out.print(output.table(f"{len(tenants):,} tenants", COLUMNS, map(_row, tenants), right=NUMBERS))
    return Exit.OK


async def show(api: Api, args: argparse.Namespace) -> Exit:
    tenant = await api.get(_path(args.id))
    if args.json:
        output.print_json(tenant)
    else:
        _show(tenant)
    return Exit.OK


async def update(api: Api, args: argparse.Namespace) -> Exit:
    body: dict[str, Any] = {}
    if args.weight is not None:
        body["weight"] = args.weight
    if args.no_max_concurrency:
        body["max_concurrency"] = None
    elif args.max_concurrency is not None:
        body["max_concurrency"] = args.max_concurrency
    if args.max_queued is not None:
        body["max_queued"] = args.max_queued
    if not body:
        output.error("nothing to change: give --weight, --max-concurrency, --no-max-concurrency or --max-queued")
        return Exit.USAGE
    tenant = await api.patch(_path(args.id), body)
    if args.json:
        output.print_json(tenant)
    else:
        _show(tenant)
    return Exit.OK


async def credits(api: Api, args: argparse.Namespace) -> Exit:
    reply = await api.post(_path(args.id, "credits"), {"amount": args.amount})
    if args.json:
        output.print_json(reply)
    else:
        verb = "added" if args.amount >= 0 else "took away"
        output.out.print(f"{verb} {abs(args.amount):,} credits: {args.id} now has {reply['credits']:,}")
    return Exit.OK


async def rotate_key(api: Api, args: argparse.Namespace) -> Exit:
    reply = await api.post(_path(args.id, "rotate-key"))
    if args.json:
        output.print_json(reply)
    else:
        output.out.print(Text.assemble("new key for ", (args.id, "bold"), "; the old one no longer works"))
        _key(args.id, reply["api_key"], "Give it to the tenant")
    return Exit.OK
