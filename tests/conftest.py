"""Shared fixtures: real PostgreSQL and Redis (from the environment, else embedded)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.embedded import EmbeddedPostgres, EmbeddedRedis, create_database


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the whole session: `REDIS_URL`, else an embedded one."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = EmbeddedRedis(workdir=tmp_path_factory.mktemp("redis"))
    yield server.start()
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis server of this test's own, which the test may kill and restart."""
    server = EmbeddedRedis(workdir=tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the session: `DATABASE_URL`, else an embedded one."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    yield server.start()
    server.stop()


async def fresh_database(postgres_dsn: str) -> str:
    """Create an empty database on the server; return its DSN."""
    return await create_database(postgres_dsn, "fairway_test")


@pytest.fixture
async def database_url(postgres_dsn: str) -> str:
    """A fresh, empty database on the session's server, for one test."""
    return await fresh_database(postgres_dsn)

