"""Runs one console command: finds the gateway and key, calls the API, turns failures into one
line on stderr and an exit code (never a traceback)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import httpx

from services.console import jobs, output, stats, tenants
from services.console.api import Api, CommandError, Exit, resolve_target

Command = Callable[[Api, argparse.Namespace], Awaitable[Exit]]

COMMANDS: dict[str, Command] = {
    "tenants create": tenants.create,
    "tenants list": tenants.list_all,
    "tenants show": tenants.show,
    "tenants update": tenants.update,
    "tenants credits": tenants.credits,
    "tenants rotate-key": tenants.rotate_key,
    "submit": jobs.submit,
    "jobs": jobs.list_jobs,
    "job": jobs.show_job,
    "cancel": jobs.cancel,
    "stats": stats.stats,
}


async def _run(command: Command, args: argparse.Namespace) -> Exit:
    target = resolve_target(args.url, args.key)
    async with Api(target) as api:
        return await command(api, args)


def run(args: argparse.Namespace) -> int:
    for name, default in (("url", None), ("key", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    name = args.command if args.command != "tenants" else f"tenants {args.action}"
    try:
        return int(asyncio.run(_run(COMMANDS[name], args)))
    except CommandError as exc:
        output.error(exc.message)
        return int(exc.code)
    except httpx.HTTPError as exc:  # anything httpx raises that the API layer did not name
        output.error(f"the request failed: {exc}")
        return int(Exit.UNREACHABLE)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
