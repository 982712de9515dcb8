"""`fairway stats [--watch]`: upstream budgets, lanes and tenants (the admin key).

From `/v1/stats/ratelimiter` and `/v1/stats/queue`; `--watch` redraws them every second (a
failed refresh is shown under the last good one and tried again) until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from services.console import output
from services.console.api import Api, ApiFailure, CommandError, Exit


async def _fetch(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    budgets, queue = await asyncio.gather(api.get("/v1/stats/ratelimiter"), api.get("/v1/stats/queue"))
    return budgets, queue


def _percent(value: float | None) -> Text:
    if value is None:
        return Text("-")
    return Text(f"{value:.1f}%", style="red" if value > 100 else "yellow" if value >= 90 else "")


def _use(used: Any, limit: Any) -> str:
    return f"{output.number(used)} / {output.number(limit)}"


def _budget_row(b: dict[str, Any], now: float) -> list[Any]:
    tokens = "limit_tpm" in b
    cooldown = "-"
    if b.get("cooldown_until"):
        cooldown = f"{max(output.epoch(b['cooldown_until']) - now, 0.0):.0f} s"
    return [
        b["name"], _use(b["requests_last_minute"], b["limit_rpm"]), _percent(b["rpm_usage_percent"]),
        _use(b["tokens_last_minute"], b["limit_tpm"]) if tokens else "-",
        _percent(b.get("tpm_usage_percent")) if tokens else Text("-"),
        _use(b["in_flight"], b["max_in_flight"]) if "max_in_flight" in b else "-",
        output.number(b.get("queue_length", 0)), output.number(b.get("denied_last_minute", 0)), cooldown,
    ]


def render(url: str, budgets: dict[str, Any], queue: dict[str, Any], top: int) -> RenderableType:
    health = budgets.get("health", {})
    ok = Text("ok", style="green")
    head = Text.assemble(
        (f"Fairway at {url}", "bold"), f"  {output.when(budgets.get('timestamp'))} UTC  queue: ",
        ok if health.get("queue_healthy") else Text("stalled or unknown", style="red"), "  budgets: ",
        ok if health.get("rpm_healthy") else Text("over a limit or cooling down", style="red"),
    )
    now = time.time()
    budget_table = output.table(
        "Upstream budgets (last minute)",
        ("budget", "requests", "rpm", "tokens", "tpm", "in flight", "queued", "denied", "cooldown"),
        (_budget_row(b, now) for b in budgets.get("buckets", [])),
        right=("requests", "rpm", "tokens", "tpm", "in flight", "queued", "denied", "cooldown"),
    )
    lanes = output.table(
        "Lanes", ("lane", "queued", "processing", "tenants"),
        ([lane["lane"], output.number(lane["queued"]), output.number(lane["processing"]),
          output.number(lane["tenants"])] for lane in queue.get("lanes", [])),
        right=("queued", "processing", "tenants"),
    )
    tenants = sorted(queue.get("tenants", []), key=lambda t: (-(t["queued"] + t["processing"]), t["tenant"]))
    totals = queue.get("totals", {})
    tenant_table = output.table(
        f"Tenants ({output.number(totals.get('queued', 0))} queued, "
        f"{output.number(totals.get('processing', 0))} processing)",
        ("tenant", "queued", "processing", "oldest queued", "dispatched/min"),
        ([t["tenant"], output.number(t["queued"]), output.number(t["processing"]),
          output.duration(t["oldest_queued_age_s"]) if t["queued"] else "-",
          output.number(t["dispatched_last_minute"])] for t in tenants[:top]),
        right=("queued", "processing", "oldest queued", "dispatched/min"),
    )
    parts: list[RenderableType] = [head, budget_table, lanes, tenant_table]
    if len(tenants) > top:
        parts.append(Text(f"… and {len(tenants) - top:,} more tenants (--top N)", style="dim"))
    return Group(*parts)


async def stats(api: Api, args: argparse.Namespace) -> Exit:
    if not args.watch:
        budgets, queue = await _fetch(api)
        if args.json:
            output.print_json({"ratelimiter": budgets, "queue": queue})
        else:
            output.out.print(render(api.target.url, budgets, queue, args.top))
        return Exit.OK
    shown: RenderableType = Text("loading…", style="dim")
    with Live(shown, console=output.out, auto_refresh=False) as live:
        try:
            while True:
                try:
                    shown = render(api.target.url, *await _fetch(api), args.top)
                    live.update(shown, refresh=True)
                except CommandError as exc:  # keep the last good view; the gateway may be restarting
                    if isinstance(exc, ApiFailure) and exc.status < 500:
                        raise  # a bad key or a tenant's key: waiting will not change it
                    stamp = time.strftime("%H:%M:%S")
                    live.update(Group(shown, Text(f"{stamp} refresh failed: {exc.message}; retrying", style="red")),
                                refresh=True)
                await asyncio.sleep(args.interval)
        except asyncio.CancelledError:  # Ctrl-C: how a watch is meant to end
            return Exit.OK
