"""What replicas tell each other through PostgreSQL LISTEN/NOTIFY.

One connection per replica listens on every channel the scheduler uses:
`fairway_backlog` (a submit), `fairway_tenants` (a tenant's policy changed),
`fairway_jobs` (items of these jobs changed) and `fairway_cancels` (these items in flight
were canceled: `cancels.py`). A notification sent while the connection
was down is lost, so when it drops (a database restart, a network cut) it is opened again
(a supervised loop: retried with backoff until the database answers), and the
`on_reconnect` callbacks run for each listener to catch up on what it missed.

    notices = Notices(database_url)
    notices.subscribe("fairway_backlog", dispatcher.heard_backlog)
    notices.on_reconnect(dispatcher.catch_up)
    await notices.start(supervisor)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from services.common.logging import get_logger
from services.common.supervision import Supervisor

log = get_logger(__name__)

Handler = Callable[[str], None]


class Notices:
    def __init__(self, database_url: str) -> None:
        self._dsn = database_url
        self._handlers: dict[str, list[Handler]] = {}
        self._reconnected: list[Callable[[], None]] = []
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._stopped = False

    def subscribe(self, channel: str, handler: Handler) -> None:
        self._handlers.setdefault(channel, []).append(handler)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    async def start(self, supervisor: Supervisor) -> None:
        self._conn = await self._listen()
        supervisor.loop("notices", self._reconnect, wait=self._lost.wait)

    def server_pid(self) -> int:
        """The listening backend's process id (what an operator would terminate)."""
        assert self._conn is not None
        return int(self._conn.get_server_pid())

    async def stop(self) -> None:
        """After the supervisor stopped (no reconnect runs any more)."""
        self._stopped = True
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    async def _listen(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(self._dsn)
        try:
            for channel in self._handlers:
                await conn.add_listener(channel, self._deliver)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._dropped)
        return conn

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:  # one bad payload must not silence the channel
                log.exception("notice on %s not handled: %r", channel, payload[:200])

    def _dropped(self, _conn: object) -> None:
        if not self._stopped:
            log.warning("notification connection lost; reconnecting")
            self._lost.set()

    async def _reconnect(self) -> None:
        """A failure here (the database still down) is retried by the supervisor."""
        self._lost.clear()
        self._conn = await self._listen()
        log.info("notification connection restored")
        for callback in self._reconnected:
            callback()
