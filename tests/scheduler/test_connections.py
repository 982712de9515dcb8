"""The scheduler's pool gives no connection whose protocol state broke to the next statement."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.scheduler.sql import create_pool


async def test_a_connection_that_raised_a_client_side_error_is_not_reused(database_url: str) -> None:
    # Two statements at once on one connection: asyncpg refuses the second with an
    # InterfaceError, as it refuses a statement after a restart cut the previous one
    # ("cannot switch to state 12; another operation is in progress"). Whatever state the
    # connection is left in, the next acquire must get another one.
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            broken = conn.get_server_pid()
            outcomes: list[object] = list(await asyncio.gather(
                conn.fetchval("SELECT pg_sleep(0.2)"), conn.fetchval("SELECT 1"), return_exceptions=True))
        slow, second = outcomes
        assert isinstance(second, asyncpg.InterfaceError), second
        assert isinstance(slow, asyncpg.ConnectionDoesNotExistError), "the connection was ended at once"
        async with pool.acquire() as conn:
            assert conn.get_server_pid() != broken
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_a_value_the_statement_cannot_send_keeps_the_connection(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            kept = conn.get_server_pid()
            with pytest.raises(asyncpg.DataError):
                await conn.fetchval("SELECT $1::int", "not a number")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == kept
    finally:
        await pool.close()
