"""`fairway submit`, `fairway jobs`, `fairway job`, `fairway cancel` (a tenant's key; the admin key
reads and cancels every tenant's jobs)."""

from __future__ import annotations

import argparse
import asyncio
import re
import uuid
from typing import Any
from urllib.parse import quote

from rich.text import Text

from services.console import output
from services.console.api import Api, ApiFailure, Exit, Unreachable, UsageError
from services.console.items import MAX_ITEMS_PER_JOB, Item, read_items, split, too_big
from services.console.watch import Watch, summarize

POST_ATTEMPTS = 3  # a job whose answer was lost is posted again with its Idempotency-Key
QUEUE_WAIT_MAX_S = 30.0
_ITEM_FIELD = re.compile(r"^items\[(\d+)\]")


def _job_path(job_id: str, *rest: str) -> str:
    return "/".join(("/v1/jobs", quote(job_id, safe=""), *rest))


async def _tenant(api: Api) -> dict[str, Any]:
    try:
        tenant: dict[str, Any] = await api.get("/v1/tenants/me")
    except ApiFailure as exc:
        if exc.status == 403:
            raise ApiFailure(403, exc.error_code, "fairway submit needs a tenant's API key (--key or FAIRWAY_KEY); "
                             f"the key from {api.target.key_source} is the admin key") from None
        raise
    return tenant


async def _post_job(api: Api, body: dict[str, Any], key: str, items: list[Item], say: Any) -> dict[str, Any]:
    """POST one job; lost answers are retried (same Idempotency-Key), a full queue is waited out."""
    attempt = 0
    while True:
        try:
            job: dict[str, Any] = await api.post("/v1/jobs", body, headers={"Idempotency-Key": key})
            return job
        except Unreachable:
            attempt += 1
            if attempt >= POST_ATTEMPTS:
                raise
            await asyncio.sleep(attempt)
        except ApiFailure as exc:
            if exc.status == 429 and exc.error_code in ("queue_full", "rate_limited") and say is not None:
                wait = min(float(exc.retry_after or 1), QUEUE_WAIT_MAX_S)
                say(Text(f"{exc.server_message} Waiting {wait:g} s.", style="dim"))
                await asyncio.sleep(wait)
                continue
            match = _ITEM_FIELD.match(exc.server_message) if exc.status == 422 else None
            if match and int(match[1]) < len(items):
                # The gateway names the item by its index in the job; the person knows its line.
                raise ApiFailure(exc.status, exc.error_code,
                                 f"line {items[int(match[1])].line}: {exc.server_message}") from None
            raise


async def submit(api: Api, args: argparse.Namespace) -> Exit:
    items = read_items(args.file)  # every line checked before anything is sent
    tenant = await _tenant(api)
    per_job = min(MAX_ITEMS_PER_JOB, int(tenant["max_queued"]))
    if per_job < 1:
        raise UsageError(f"tenant {tenant['id']} may queue no items (max_queued is 0); the admin can raise it: "
                         f"fairway tenants update {tenant['id']} --max-queued N")
    jobs = split(items, per_job)
    if len(jobs) > 1 and not args.split:
        raise UsageError(too_big(args.file, items, jobs, per_job, int(tenant["max_queued"])))
    head: dict[str, Any] = {"provider": args.provider, "model": args.model, "priority": args.priority}
    if args.operation:
        head["operation"] = args.operation
    run = uuid.uuid4().hex
    if not args.watch:
        for n, part in enumerate(jobs):
            job = await _post_job(api, {**head, "items": [i.body() for i in part]}, f"cli-{run}-{n}", part,
                                  output.out.print if args.split else None)
            _submitted(job, part, args.json)
        return Exit.OK
    async with Watch(api) as watch:
        for n, part in enumerate(jobs):
            job = await _post_job(api, {**head, "items": [i.body() for i in part]}, f"cli-{run}-{n}", part,
                                  watch.say if args.split else None)
            if not args.json:
                watch.say(_submitted_line(job, part))
            watch.add(job)
        outcomes = await watch.wait()
    if args.json:
        output.print_json([o.job for o in outcomes])
    return summarize(outcomes)


def _submitted_line(job: dict[str, Any], part: list[Item]) -> Text:
    lines = f"line {part[0].line}" if len(part) == 1 else f"lines {part[0].line}-{part[-1].line}"
    return Text.assemble("submitted job ", (job["id"], "bold"), f": {len(part):,} items ({lines}), "
                         f"{job['provider']} {job['model']} {job['operation']}")


def _submitted(job: dict[str, Any], part: list[Item], as_json: bool) -> None:
    if as_json:
        output.print_json(job)
        return
    output.out.print(_submitted_line(job, part))
    output.out.print(Text(f"  follow it: fairway job {job['id']} --watch", style="dim"))


async def list_jobs(api: Api, args: argparse.Namespace) -> Exit:
    rows: list[dict[str, Any]] = []
    async for job in api.pages("/v1/jobs", "jobs", {"status": args.status}, page=min(args.limit + 1, 1000)):
        rows.append(job)
        if len(rows) > args.limit:
            break
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.json:
        output.print_json(rows)
        return Exit.OK
    if not rows:
        output.out.print("no jobs" + (f" with status {args.status}" if args.status else ""))
        return Exit.OK
    columns = ("id", "tenant", "status", "model", "items", "progress", "created")
    output.out.print(output.table(None, columns, (
        [j["id"], j["tenant"], output.status(j["status"]), f"{j['provider']} {j['model']}",
         output.number(j["items_total"]), output.counts(j), output.when(j["created_at"])] for j in rows
    ), right=("items",)))
    if more:
        output.out.print(Text(f"the newest {args.limit:,}; --limit N shows more", style="dim"))
    return Exit.OK


async def show_job(api: Api, args: argparse.Namespace) -> Exit:
    job = await api.get(_job_path(args.id))
    code = Exit.OK
    if args.watch:
        async with Watch(api) as watch:
            watch.add(job)
            outcomes = await watch.wait()
        code = summarize(outcomes)
        job = outcomes[0].job
    if args.items:
        await _items(api, job, args)
    elif args.json:
        output.print_json(job)
    elif not args.watch:
        _job_fields(job)
    return code


def _job_fields(job: dict[str, Any]) -> None:
    output.out.print(output.fields([
        ("id", job["id"]), ("tenant", job["tenant"]), ("status", output.status(job["status"])),
        ("model", f"{job['provider']} {job['model']} ({job['operation']})"), ("priority", job["priority"]),
        ("items", output.number(job["items_total"])), ("progress", output.counts(job)),
        ("created", output.when(job["created_at"])), ("updated", output.when(job["updated_at"])),
        ("finished", output.when(job["finished_at"])),
        ("metadata", output.shown(job["metadata"], 100)),
    ]))


async def _items(api: Api, job: dict[str, Any], args: argparse.Namespace) -> None:
    path = _job_path(job["id"], "items")
    if args.json:  # one item a line, whole: what a script reads the outputs from
        async for item in api.pages(path, "items", {"status": args.status}):
            output.print_json(item)
        return
    rows = [i async for i in api.pages(path, "items", {"status": args.status})]
    columns = ("ref", "status", "attempts", "output / error", "finished")
    output.out.print(output.table(f"job {job['id']}: {len(rows):,} items", columns, (
        [i["ref"] or i["id"], output.status(i["status"]), i["attempts"],
         output.shown(i["error"] if i["error"] else i["output"]), output.when(i["finished_at"])] for i in rows
    ), right=("attempts",)))


async def cancel(api: Api, args: argparse.Namespace) -> Exit:
    job = await api.post(_job_path(args.id, "cancel"))
    if args.json:
        output.print_json(job)
        return Exit.OK
    output.out.print(Text.assemble("canceled job ", (job["id"], "bold"), ": ", output.status(job["status"]), "  ",
                                   output.counts(job)))
    if job["counts"].get("PROCESSING"):
        output.out.print(Text("in-flight items end as their providers answer the cancel: "
                              f"fairway job {job['id']} --watch", style="dim"))
    return Exit.OK
