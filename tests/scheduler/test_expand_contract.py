"""Expand, then contract: a release's migrations never break the previous release's code.

While a rollout runs, replicas of the previous release serve beside the new ones, against the
schema the new release's migrations (the migrations Job) have already built. So every
statement the previous release runs must still plan on it, and no migration from now on may
drop, rename or retype what a previous release reads: that waits for the release after.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg

from services.scheduler.migrations import load_migrations, migrate
from services.scheduler.sql import parse_queries

PREVIOUS = Path(__file__).parent / "previous_release"
# Migrations written before the rule: they ran while every replica was stopped.
BEFORE_THE_RULE = 8
CONTRACTING = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|VIEW|TYPE|FUNCTION|SEQUENCE)|RENAME\s+(TO|COLUMN)|ALTER\s+COLUMN\s+\w+\s+"
    r"(TYPE|SET\s+NOT\s+NULL|SET\s+DATA\s+TYPE))\b",
    re.IGNORECASE,
)


def previous_queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted(PREVIOUS.glob("*.sql")):
        found.update(parse_queries(path.read_text()))
    return found


def test_the_previous_release_is_there_to_check() -> None:
    assert len(previous_queries()) > 30


async def test_every_statement_of_the_previous_release_plans_on_the_new_schema(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        broken = {}
        for name, sql in previous_queries().items():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError as exc:
                broken[name] = f"{type(exc).__name__}: {exc}"
        assert not broken, broken
    finally:
        await conn.close()


async def test_a_dropped_column_is_caught(database_url: str) -> None:
    # The check above is only worth something if a contracting migration breaks it.
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await conn.execute("ALTER TABLE items DROP COLUMN est_tokens CASCADE")
        failures = 0
        for sql in previous_queries().values():
            try:
                await conn.prepare(sql)
            except asyncpg.PostgresError:
                failures += 1
        assert failures > 0
    finally:
        await conn.close()


def contracting(sql: str) -> list[str]:
    return [s.strip() for s in re.sub(r"--[^\n]*", "", sql).split(";") if CONTRACTING.search(s)]


def test_migrations_after_the_rule_only_expand() -> None:
    found = {f"{m.version:04d}_{m.name}": contracting(m.sql) for m in load_migrations() if m.version > BEFORE_THE_RULE}
    assert not {name: s for name, s in found.items() if s}, "contracting statements belong to a later release"


def test_the_rule_catches_a_contracting_statement() -> None:
    assert contracting("ALTER TABLE items DROP COLUMN est_tokens; CREATE INDEX i ON items (seq)") == [
        "ALTER TABLE items DROP COLUMN est_tokens"]
    assert contracting("alter table jobs rename column lane to budget")
    assert contracting("ALTER TABLE jobs ALTER COLUMN priority TYPE bigint")
    assert not contracting("ALTER TABLE jobs ADD COLUMN note text -- DROP COLUMN in a comment")
    # The migrations before the rule did contract: the check would have seen it.
    assert any(contracting(m.sql) for m in load_migrations() if m.version <= BEFORE_THE_RULE)
