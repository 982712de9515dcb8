"""`fairway migrate` (the migrations Job) and replicas that only check the schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from services.common.errors import ConfigError
from services.scheduler.migrations import load_migrations
from tests.scheduler.conftest import StartScheduler

ROOT = Path(__file__).resolve().parents[2]


def fairway_migrate(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "services.cli", "migrate"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


async def test_migrate_applies_what_is_missing_then_nothing(database_url: str) -> None:
    first = fairway_migrate(database_url)
    assert first.returncode == 0, first.stderr
    conn = await asyncpg.connect(database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
    finally:
        await conn.close()
    assert versions == [m.version for m in load_migrations()]
    again = fairway_migrate(database_url)
    assert again.returncode == 0 and "current" in again.stderr + again.stdout


async def test_a_replica_that_does_not_migrate_refuses_an_old_schema(
    database_url: str, start_scheduler: StartScheduler,
) -> None:
    with pytest.raises(ConfigError, match="fairway migrate"):
        await start_scheduler(FAIRWAY_SCHEDULER_MIGRATE=False)
    assert fairway_migrate(database_url).returncode == 0
    app = await start_scheduler(FAIRWAY_SCHEDULER_MIGRATE=False)
    assert app.port > 0
