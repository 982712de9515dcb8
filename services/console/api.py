"""Where the gateway is, which key to send, and what a failure says.

    target = resolve_target(args.url, args.key)        # flags, then FAIRWAY_URL / FAIRWAY_KEY, then a local stack
    async with Api(target) as api:
        tenant = await api.get("/v1/tenants/me")
        async for job in api.pages("/v1/jobs", "jobs", {"status": "FAILED"}):
            ...

Every failure is a `CommandError`: one line for a person and the exit code (`Exit`) it ends with.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

TIMEOUT_S = 30.0
# An event stream sends a comment every 15 s while nothing happens: three missed ones is a dead stream.
STREAM_READ_TIMEOUT_S = 45.0
PAGE = 1000


class Exit(IntEnum):
    """Exit codes of the console commands (docs/cli.md)."""

    OK = 0
    ITEMS_FAILED = 1  # a watched job ended with failed items
    USAGE = 2  # bad arguments or a bad input file: nothing was sent (argparse's own code too)
    API_ERROR = 3  # the gateway refused the request (its message is printed)
    UNREACHABLE = 4  # no answer from the gateway
    ITEMS_CANCELED = 5  # a watched job ended with canceled items (and none failed)
    INTERRUPTED = 130  # Ctrl-C


class CommandError(Exception):
    """A failure told in one line, ending the command with `code`."""

    code = Exit.USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CommandError):
    code = Exit.USAGE


class Unreachable(CommandError):
    code = Exit.UNREACHABLE


class ApiFailure(CommandError):
    """The gateway answered an error: its `{"error": {"code", "message"}}` and the HTTP status."""

    code = Exit.API_ERROR

    def __init__(self, status: int, error_code: str, message: str, retry_after: str | None = None) -> None:
        detail = f"HTTP {status}" + (f"; retry after {retry_after} s" if retry_after else "")
        super().__init__(f"{message} ({detail})")
        self.status = status
        self.error_code = error_code
        self.server_message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Target:
    url: str
    key: str
    key_source: str  # where the key came from, named in messages about it

    @property
    def local(self) -> bool:
        return is_loopback(self.url)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_url(env: Mapping[str, str]) -> str:
    """FAIRWAY_URL, else where `fairway up` puts its gateway (FAIRWAY_GATEWAY_HOST / _PORT)."""
    if env.get("FAIRWAY_URL"):
        return env["FAIRWAY_URL"]
    host = env.get("FAIRWAY_GATEWAY_HOST") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{env.get('FAIRWAY_GATEWAY_PORT') or 8080}"


def local_admin_key(env: Mapping[str, str], cwd: Path) -> tuple[str, str] | None:
    """The admin key of a `fairway up` on this machine: FAIRWAY_ADMIN_KEY, else the file it writes,
    `$FAIRWAY_HOME/admin_key`, else `.fairway/admin_key` here or in a parent directory."""
    if env.get("FAIRWAY_ADMIN_KEY"):
        return env["FAIRWAY_ADMIN_KEY"], "FAIRWAY_ADMIN_KEY"
    if env.get("FAIRWAY_HOME"):
        candidates = [cwd / env["FAIRWAY_HOME"] / "admin_key"]
    else:
        candidates = [folder / ".fairway" / "admin_key" for folder in (cwd, *cwd.parents)]
    for path in candidates:
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key, str(path)
    return None


def resolve_target(
    url: str | None, key: str | None, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> Target:
    """The gateway and key: flags first, then FAIRWAY_URL / FAIRWAY_KEY, then a local `fairway up`.
    A local admin key is only ever sent to a loopback address."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    url = (url or default_url(env)).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url!r} is not a gateway URL: give one like http://127.0.0.1:8080 (--url or FAIRWAY_URL)")
    if key:
        return Target(url, key, "--key")
    if env.get("FAIRWAY_KEY"):
        return Target(url, env["FAIRWAY_KEY"], "FAIRWAY_KEY")
    found = local_admin_key(env, cwd) if is_loopback(url) else None
    if found is None:
        raise UsageError(
            "no API key: pass --key KEY or set FAIRWAY_KEY (with a local `fairway up`, its admin key is "
            "read from .fairway/admin_key)"
        )
    return Target(url, found[0], found[1])


def _failure(reply: httpx.Response, target: Target) -> ApiFailure:
    code, message = "", ""
    try:
        error = reply.json()["error"]
        code, message = str(error.get("code", "")), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        message = " ".join(reply.text.split())[:300] or reply.reason_phrase or "no message"
    failure = ApiFailure(reply.status_code, code, message, reply.headers.get("retry-after"))
    if reply.status_code == 401:
        failure.message = f"{message} (HTTP 401; the key sent came from {target.key_source})"
    return failure


def _reason(exc: BaseException) -> str:
    """The operating system's words for a failed connection ("connection refused"), else httpx's."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def _unreachable(exc: httpx.TransportError, target: Target, timeout_s: float) -> Unreachable:
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"no answer from {target.url} within {timeout_s:g} s; is the gateway overloaded or stuck?")
    reason = _reason(exc)
    if isinstance(exc, httpx.ConnectError):
        hint = (
            "Start a local stack with `make run` (or `fairway up`)" if target.local
            else "Check the address and that the gateway runs"
        )
        return Unreachable(
            f"cannot connect to Fairway at {target.url} ({reason}). {hint}, or point --url / FAIRWAY_URL at a gateway."
        )
    return Unreachable(f"the connection to {target.url} failed: {reason}")


class Api:
    """The public HTTP API with one key; every failure raised as a `CommandError`."""

    def __init__(
        self, target: Target, *, timeout_s: float = TIMEOUT_S, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            base_url=target.url,
            headers={"Authorization": f"Bearer {target.key}", "User-Agent": "fairway-cli"},
            timeout=timeout_s,
            # Plain HTTP uses no TLS: no certificates to load (a fifth of a second at every command).
            verify=target.url.startswith("https://"),
            transport=transport,
        )

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self._client.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            reply = await self._client.request(method, path, json=json, params=params, headers=headers)
        except httpx.TransportError as exc:
            raise _unreachable(exc, self.target, self.timeout_s) from None
        if reply.status_code >= 400:
            raise _failure(reply, self.target)
        try:
            return reply.json()
        except ValueError:
            raise ApiFailure(reply.status_code, "", f"{self.target.url}{path} did not answer JSON; is it a "
                             "Fairway gateway?") from None

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, json: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return await self.request("POST", path, json=json, headers=headers)

    async def patch(self, path: str, json: Any) -> Any:
        return await self.request("PATCH", path, json=json)

    async def pages(
        self, path: str, field: str, params: Mapping[str, Any] | None = None, *, page: int = PAGE
    ) -> AsyncIterator[dict[str, Any]]:
        """Every row of a listing, following `next` page after page."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        after = ""
        while True:
            body = await self.get(path, {**query, "limit": page, **({"after": after} if after else {})})
            for row in body[field]:
                yield row
            after = body.get("next") or ""
            if not after:
                return

    @asynccontextmanager
    async def stream(self, path: str, headers: Mapping[str, str]) -> AsyncIterator[httpx.Response]:
        """A streamed GET; an error status is raised as `ApiFailure` (transport errors as httpx raises them,
        for the caller to resume)."""
        timeout = httpx.Timeout(self.timeout_s, read=STREAM_READ_TIMEOUT_S)
        async with self._client.stream("GET", path, headers=headers, timeout=timeout) as reply:
            if reply.status_code >= 400:
                await reply.aread()
                raise _failure(reply, self.target)
            yield reply

    def unreachable(self, exc: httpx.TransportError) -> Unreachable:
        return _unreachable(exc, self.target, self.timeout_s)
