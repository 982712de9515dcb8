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
    "insert_items", "open_job_cursor", "items_changed_since", "list_items", "get_job", "fold_count_moves",
]
# The fold takes whichever moves there are: all of count_moves is what it reads, and the
# folder keeps the table small.
READS_WHOLE = {"fold_count_moves": "count_moves"}


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
    whole = READS_WHOLE.get(name)
    scans = [line for line in plan.splitlines() if "Seq Scan" in line and not line.endswith(f"Seq Scan on {whole}")]
    assert not scans, plan
