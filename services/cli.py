"""The `fairway` command: `fairway up` (whole stack), `fairway run SERVICE` (one service),
`fairway migrate` (the database schema, before a rollout), and for people at a terminal
`fairway tenants|submit|jobs|job|cancel|stats` over the HTTP API (services/console, docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import sys

from services.console.parser import COMMANDS as CONSOLE_COMMANDS
from services.console.parser import add_commands

SERVICES = ("gateway", "scheduler", "ratelimiter", "predictor", "emulator")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fairway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole stack in the foreground, with embedded defaults")
    run = sub.add_parser("run", help="run one service, configured from the environment")
    run.add_argument("service", choices=SERVICES)
    sub.add_parser("migrate", help="apply the scheduler's database migrations (DATABASE_URL), then exit")
    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in CONSOLE_COMMANDS:
        from services.console.main import run as run_console

        return run_console(args)
    if args.command == "migrate":
        from services.scheduler.main import migrate_main

        return migrate_main()
    if args.command == "run":
        module = importlib.import_module(f"services.{args.service}.main")
        return int(module.main() or 0)
    from services.stack import up

    return int(up())


if __name__ == "__main__":
    sys.exit(main())
