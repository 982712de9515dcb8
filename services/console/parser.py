"""The console commands' arguments, added to the `fairway` parser (services/cli.py).

Only argparse is imported here: `fairway run SERVICE` builds the same parser and must stay light.
"""

from __future__ import annotations

import argparse

COMMANDS = ("tenants", "submit", "jobs", "job", "cancel", "stats")
STATUSES = ("PENDING", "PROCESSING", "DONE", "FAILED", "CANCELED")

_EPILOG = """\
The gateway is --url, else FAIRWAY_URL, else http://127.0.0.1:8080 (FAIRWAY_GATEWAY_HOST/PORT if set);
the key is --key, else FAIRWAY_KEY, else, for a gateway on this machine, the admin key of `fairway up`
(FAIRWAY_ADMIN_KEY or .fairway/admin_key). Exit codes: 0 ok, 1 a watched job had failed items, 2 bad
arguments or input (nothing sent), 3 the gateway refused, 4 the gateway cannot be reached, 5 a watched job
had canceled items, 130 Ctrl-C. Manual: docs/cli.md."""


def _connection() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given before a nested command (`tenants --key K list`) is not reset by it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="the gateway (default: FAIRWAY_URL or a local stack)")
    common.add_argument("--key", default=argparse.SUPPRESS, help="the API key (default: FAIRWAY_KEY or a local "
                        "stack's admin key)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of tables")
    return common


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _interval(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be from 0.1 to 3600 seconds")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add tenants, submit, jobs, job, cancel and stats to the `fairway` subcommands."""
    common = _connection()

    def command(name: str, parent: argparse._SubParsersAction[argparse.ArgumentParser], helptext: str,
                ) -> argparse.ArgumentParser:
        return parent.add_parser(name, parents=[common], help=helptext, description=helptext + ".", epilog=_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)

    tenants = command("tenants", sub, "create, list and change tenants (the admin key)")
    which = tenants.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = command("create", which, "create a tenant and print its API key, shown only this once")
    create.add_argument("id")
    create.add_argument("--weight", type=float, default=1.0, help="its fair share (default 1)")
    create.add_argument("--credits", type=int, help="starting credits (default: billing off)")
    create.add_argument("--max-concurrency", type=_positive, help="items in flight at most (default: no cap)")
    create.add_argument("--max-queued", type=int, help="items queued at most (default 100,000)")
    command("list", which, "every tenant, page after page")
    command("show", which, "a tenant with what it has queued and in flight").add_argument("id")
    update = command("update", which, "change a tenant's weight or caps, from its next dispatch")
    update.add_argument("id")
    update.add_argument("--weight", type=float)
    update.add_argument("--max-concurrency", type=_positive)
    update.add_argument("--no-max-concurrency", action="store_true", help="lift the concurrency cap")
    update.add_argument("--max-queued", type=int)
    credits = command("credits", which, "add credits to a tenant (a negative amount takes them away)")
    credits.add_argument("id")
    credits.add_argument("amount", type=int)
    command("rotate-key", which, "give a tenant a new API key; the old one stops working").add_argument("id")

    submit = command("submit", sub, "submit a JSONL file of items as a job (a tenant's key)")
    submit.add_argument("file", help="one item a line: {\"ref\": ..., \"input\": {...}} or a bare input; - reads stdin")
    submit.add_argument("--provider", required=True, choices=("replicate", "openai"))
    submit.add_argument("--model", required=True, help="e.g. google/nano-banana or gpt-4o-mini")
    submit.add_argument("--operation", choices=("prediction", "chat", "response", "image"),
                        help="default: prediction (replicate), chat (openai)")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first within the tenant (default 0)")
    submit.add_argument("--split", action="store_true",
                        help="submit a file too big for one job as several (waiting while the queue is full)")
    submit.add_argument("--watch", action="store_true", help="show progress until the job ends; exit 1 if items failed")

    jobs = command("jobs", sub, "list jobs, newest first (the admin key lists every tenant's)")
    jobs.add_argument("--status", choices=STATUSES, type=str.upper)
    jobs.add_argument("--limit", type=_positive, default=50, help="show at most this many (default 50)")

    job = command("job", sub, "show a job; --items lists its items, --watch follows it to its end")
    job.add_argument("id")
    job.add_argument("--items", action="store_true", help="list its items with their outputs or errors")
    job.add_argument("--status", choices=STATUSES, type=str.upper, help="with --items: only items in this status")
    job.add_argument("--watch", action="store_true", help="progress until the job ends; exit 1 if items failed")

    command("cancel", sub, "cancel a job: pending items at once, in-flight ones where the provider allows"
            ).add_argument("id")

    stats = command("stats", sub, "upstream budgets, lanes and tenants' queues (the admin key)")
    stats.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    stats.add_argument("--interval", type=_interval, default=1.0, help="seconds between redraws (default 1)")
    stats.add_argument("--top", type=_positive, default=20, help="tenants shown, busiest first (default 20)")
