"""The hot statements' plans, made once per connection on a new deployment's empty tables,
read by index: they stay right when the tables hold millions of rows."""

from __future__ import annotations

import re

import asyncpg
import pytest

from services.scheduler.migrations import migrate
from services.scheduler.sql import QUERIES, SERVER_SETTINGS

HOT = [
    "claim_items", "lock_counts_for_claim", "complete_items", "fail_items", "heartbeat", "cancel_items",
    "insert_items", "open_job_cursor", "items_changed_since", "list_items", "get_job",
]


@pytest.mark.parametrize("name", HOT)
async def test_a_plan_made_on_empty_tables_scans_no_table(database_url: str, name: str) -> None:
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    conn = await asyncpg.connect(database_url, server_settings=SERVER_SETTINGS)
    try:
        params = max(int(n) for n in re.findall(r"\$(\d+)", QUERIES[name]))
        await conn.execute(f"PREPARE hot AS {QUERIES[name]}")
        # The session's plan_cache_mode makes EXECUTE use the generic plan, as a pool's does.
        nulls = ", ".join(["NULL"] * params)
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (COSTS OFF) EXECUTE hot({nulls})"))
    finally:
        await conn.close()
    assert "Seq Scan" not in plan, plan
