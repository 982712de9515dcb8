"""One HTTP request as the API handlers see it, and small response helpers.

call = Call(scope, body)
call.key               # the bearer token ("" when missing)
call.json()            # the parsed body, or ApiError(400) from `bad_json`
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from services.emulator.errors import ApiError

Headers = list[tuple[bytes, bytes]]


class Call:
    __slots__ = ("_json", "body", "headers", "method", "path", "query", "scheme", "state")

    def __init__(self, scope: Mapping[str, Any], body: bytes) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query: bytes = scope.get("query_string", b"")
        self.scheme: str = scope.get("scheme", "http")
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.body = body
        self._json: Any = None
        self.state: Any = None  # what an API's admission step worked out for its handler

    @property
    def key(self) -> str:
        value = self.headers.get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() in ("bearer", "token") else ""

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")

    def base_url(self) -> str:
        return f"{self.scheme}://{self.header(b'host') or 'localhost'}"

    def param(self, name: str) -> str | None:
        values = parse_qs(self.query.decode("latin-1")).get(name)
        return values[0] if values else None

    def json(self, bad_json: Callable[[str], ApiError]) -> Any:
        if self._json is None:
            try:
                self._json = json.loads(self.body) if self.body else {}
            except ValueError:
                raise bad_json("The request body is not valid JSON.") from None
        return self._json


# Built once: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_CANONICAL = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def dumps(payload: object) -> bytes:
    return _COMPACT.encode(payload).encode()


def canonical(payload: object) -> str:
    """The same JSON for equal values, whatever their key order."""
    return _CANONICAL.encode(payload)


def header(name: str, value: object) -> tuple[bytes, bytes]:
    return name.encode(), str(value).encode()


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, to the millisecond: "0s", "120ms", "1.5s", "1m30.5s", "1h0m0s"."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs
