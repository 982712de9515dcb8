"""Numbered SQL migrations (`migrations/NNNN_name.sql`), applied by `fairway migrate` (a
Kubernetes Job before a rollout) or at scheduler start (`FAIRWAY_SCHEDULER_MIGRATE`).

Several replicas may start at once: a session-level advisory lock makes them take turns,
and each migration is applied in its own transaction with its version recorded, so a
crash mid-way leaves either the whole migration or none of it. A migration waits at most
`LOCK_TIMEOUT` for a table lock, then gives up and is tried again: a migration queued behind
a long transaction would otherwise block every query that comes after it.

Expand, then contract: the previous release keeps running while a release's migrations are
applied, so a migration only adds (tables, nullable or defaulted columns, indexes, views
that keep their columns); dropping or renaming what the previous release reads waits for a
later release (`tests/scheduler/test_expand_contract.py` holds every migration to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from services.common.logging import get_logger

log = get_logger(__name__)

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# An arbitrary constant identifying Fairway's migration lock among advisory locks.
_LOCK_KEY = 0x_FA17_3A7
LOCK_TIMEOUT = "5s"
_LOCK_TRIES = 12


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("services.scheduler").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..N without gaps, found {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration not yet applied; return the versions applied now."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            await _apply(conn, migration)
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    for attempt in range(1, _LOCK_TRIES + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version, migration.name,
                )
            return
        except asyncpg.LockNotAvailableError:
            if attempt == _LOCK_TRIES:
                raise
            log.warning("migration %04d_%s waited %s for a lock; trying again (%d/%d)",
                        migration.version, migration.name, LOCK_TIMEOUT, attempt, _LOCK_TRIES)


async def pending(conn: asyncpg.Connection) -> list[int]:
    """The migrations this release knows that the database has not applied."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")} if exists else set()
    return [m.version for m in load_migrations() if m.version not in done]
