"""The Acquire script's own Redis connection, with the command packed by hand.

redis-py's generic command path (argument encoding one by one, retry and event hooks, a
timeout task for every write and a pool check for every command) costs several times what
the script's round trip itself costs in this process. Acquires of one budget already go one
script call at a time (services/common/group_commit.py), so each budget gets one
`ScriptConnection`: a single redis-py connection, commands packed as RESP bytes of which the
budget's part is encoded once, and one timeout per call. Redis errors still surface as redis-py's exceptions.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int | float


def bulk(value: Arg) -> bytes:
    """One RESP bulk string (ints as integers; floats in full precision, as redis-py writes them)."""
    if isinstance(value, str):
        value = value.encode()
    elif isinstance(value, int):
        value = b"%d" % value
    elif isinstance(value, float):
        value = repr(value).encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def bulks(values: list[Arg]) -> bytes:
    return b"".join([bulk(v) for v in values])


class LuaScript:
    """A script called by SHA; loaded again when Redis does not know it (after a restart)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.prefix = bulk("EVALSHA") + bulk(self.sha)


class ScriptConnection:
    """One connection, one call at a time."""

    def __init__(self, client: aioredis.Redis[str], timeout_s: float) -> None:
        pool = client.connection_pool
        # The connection's own socket timeout would start a task per write; one timeout per
        # call (below) covers the write and the read.
        self._conn: Any = pool.connection_class(**{**pool.connection_kwargs, "socket_timeout": None})
        self._client: Any = client  # its stubs leave script_load untyped
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()

    async def call(self, script: LuaScript, parts: int, body: bytes) -> Any:
        """EVALSHA with `parts` RESP bulk strings after the SHA, already packed in `body`."""
        command = b"*%d\r\n%s%s" % (parts + 2, script.prefix, body)
        async with self._lock:
            loaded = reconnected = False
            while True:
                try:
                    return await self._send(command)
                except NoScriptError:
                    if loaded:
                        raise
                    loaded = True
                    await self._client.script_load(script.source)
                except (RedisConnectionError, OSError):
                    # One reconnect: the connection goes stale when Redis restarts; a Redis
                    # that is really down fails the reconnect within the connect timeout.
                    if reconnected:
                        raise
                    reconnected = True
                    await self._conn.disconnect(nowait=True)

    async def _send(self, command: bytes) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._conn.send_packed_command(command, check_health=False)
                return await self._conn.read_response()
        except TimeoutError:
            # Redis may still answer this command later: the connection cannot be reused.
            await self._conn.disconnect(nowait=True)
            raise RedisTimeoutError(f"no answer from redis within {self._timeout_s:g}s") from None

    async def aclose(self) -> None:
        await self._conn.disconnect()
