"""What replicas tell each other through PostgreSQL LISTEN/NOTIFY.

One connection per replica listens on every channel the scheduler uses:
`fairway_backlog` (a submit), `fairway_tenants` (a tenant's policy changed) and
`fairway_jobs` (items of these jobs changed). A notification sent while the connection
was down is lost, so when it drops (a database restart, a network cut) it is opened again,
and the `on_reconnect` callbacks run for each listener to catch up on what it missed.

    notices = Notices(database_url)
    notices.subscribe("fairway_backlog", dispatcher.heard_backlog)
    notices.on_reconnect(dispatcher.catch_up)
    await notices.start()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from services.common.logging import get_logger

log = get_logger(__name__)

Handler = Callable[[str], None]
_RETRY_MAX_S = 5.0


class Notices:
    def __init__(self, database_url: str, *, retry_s: float = 0.2) -> None:
        self._dsn = database_url
        self._retry_s = retry_s
        self._handlers: dict[str, list[Handler]] = {}
        self._reconnected: list[Callable[[], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._stopped = False

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    async def start(self) -> None:
        self._conn = await self._listen()

    def server_pid(self) -> int:
        """The listening backend's process id (what an operator would terminate)."""
        assert self._conn is not None
        return int(self._conn.get_server_pid())

    async def stop(self) -> None:
        self._stopped = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn)
        for channel in self._handlers:
            await conn.add_listener(channel, self._deliver)
        conn.add_termination_listener(self._lost)
        return conn

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:  # one bad payload must not silence the channel
                log.exception("notice on %s not handled: %r", channel, payload[:200])

    def _lost(self, _conn: object) -> None:
        if self._stopped or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        log.warning("notification connection lost; reconnecting")
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self._retry_s
        while not self._stopped:
            try:
                self._conn = await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("notification connection: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
                continue
            log.info("notification connection restored")
            for callback in self._reconnected:
                callback()
            return
