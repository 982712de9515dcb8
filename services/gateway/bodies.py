"""JSON request bodies parsed in bounded steps, so that no body holds the gateway for long.

`json.loads` is one call into C that holds the GIL from the first byte to the last: 9 MB
of 700,000 small items took 0.7-1.3 s on a 2-core host, during which no other request, not
even /healthz, was answered, wherever the call ran (a worker thread holds the same GIL).
Here the document is walked in Python down to the values whose text ends within WINDOW
characters, and each of those is parsed by the stdlib's C scanner in one call (a string is
scanned in one call whatever its length: that is linear and fast, ~1 ms per MB). Between
two calls the interpreter can hand the GIL to the event loop.

Limits are enforced while walking: the top-level `items` array is counted, so a job over
the item limit is refused once that many items are read, and a walked container may hold
at most MAX_JSON_VALUES values per item (or per top-level field), as validation requires.

The result is what `json.loads` answers, except that the body must be UTF-8 (RFC 8259)
and that NaN and Infinity, which are not JSON, are refused.
"""

from __future__ import annotations

import json
import re
from _json import make_scanner, scanstring
from typing import Any

from services.gateway.errors import ApiError
from services.gateway.schemas import MAX_JSON_VALUES

# Characters one C call parses at most (~1-2 ms); smaller windows cost more Python steps.
WINDOW = 64 * 1024
# Nesting the walker follows before it refuses the body as too deep to parse (well within
# Python's recursion limit; validation refuses over 64 levels anyway).
MAX_WALK_DEPTH = 100

_WS = re.compile(r"[ \t\n\r]*")
_NAN_MESSAGE = "NaN and Infinity are not JSON numbers; send null or a number."


class _Constant(Exception):
    """NaN or Infinity: wrong wherever it is, so it ends the parse (it is no ValueError)."""


def _refuse_constant(name: str) -> Any:
    raise _Constant(name)


# The stdlib's C scanner itself (json.loads's), called on one value at a time; strict, as
# json.loads is (no control characters in strings).
_scan = make_scanner(json.JSONDecoder(parse_constant=_refuse_constant))  # type: ignore[arg-type]


def not_json(reason: str) -> ApiError:
    return ApiError(400, "invalid_json", f"The body is not valid JSON ({reason}); send a JSON object.")


def parse_body(body: bytes, *, max_items: int | None = None, max_values: int | None = MAX_JSON_VALUES) -> Any:
    """The JSON document in `body`; `max_items` bounds the top-level object's `items` array,
    `max_values` the values of one item or one top-level field (None: no bound).

    Raises ApiError: 400 invalid_json, 422 when `items` or a value is over its limit."""
    if not body.strip():
        raise ApiError(400, "invalid_json", "The body is empty; send a JSON object.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise not_json(f"not UTF-8 at byte {exc.start}") from None
    try:
        return _Walker(text, max_items, max_values).document()
    except json.JSONDecodeError as exc:
        raise not_json(f"{exc.msg}: line {exc.lineno} column {exc.colno}") from None
    except _Constant:
        raise ApiError(400, "invalid_json", _NAN_MESSAGE) from None
    except ValueError:
        # int() of a number of over 4300 digits, the only other ValueError of the scanner.
        raise not_json("a number has too many digits") from None
    except _TooDeep:
        raise ApiError(400, "invalid_json", "The body is nested too deep to parse; send a JSON object.") from None


class _TooDeep(Exception):
    pass


class _Walker:
    def __init__(self, text: str, max_items: int | None, max_values: int | None) -> None:
        self.text = text
        self.max_items = max_items
        self.max_values = max_values
        self._wstart = 0
        self._window = ""
        # Values walked one by one in the current scope (an item, or a top-level field).
        self._scope = "body"
        self._walked = 0

    def document(self) -> Any:
        idx = self._ws(0)
        if self.text.startswith("{", idx):
            value, end = self._object(idx, 1, top=True)
        else:
            value, end = self._value(idx, 1)
        end = self._ws(end)
        if end != len(self.text):
            raise json.JSONDecodeError("Extra data", self.text, end)
        return value

    def _ws(self, idx: int) -> int:
        found = _WS.match(self.text, idx)
        return found.end() if found is not None else idx

    def _enter(self, scope: str) -> None:
        self._scope, self._walked = scope, 0

    def _count(self) -> None:
        self._walked += 1
        if self.max_values is not None and self._walked > self.max_values:
            raise ApiError(
                422, "invalid_request", f"{self._scope}: must not hold more than {self.max_values} JSON values"
            )

    def _value(self, idx: int, depth: int) -> tuple[Any, int]:
        if depth > MAX_WALK_DEPTH:
            raise _TooDeep
        opener = self.text[idx : idx + 1]
        if opener not in ("{", "["):
            return _scalar(self.text, idx)
        found = self._windowed(idx)
        if found is not None:
            return found
        if opener == "{":
            return self._object(idx, depth)
        return self._array(idx, depth)

    def _windowed(self, idx: int) -> tuple[Any, int] | None:
        """The container at `idx` parsed in one C call if it ends within the window, else None.

        A failure is also a container that does not fit (or holds an error, which the
        walk into it then finds and places)."""
        if not self._wstart <= idx < self._wstart + len(self._window):
            self._move(idx)
        while True:
            try:
                value, end = _scan(self._window, idx - self._wstart)
            except (ValueError, StopIteration, RecursionError):
                if idx == self._wstart:
                    return None
                self._move(idx)  # it may fit in a window that starts with it
                continue
            return value, end + self._wstart

    def _move(self, idx: int) -> None:
        self._wstart = idx
        self._window = self.text[idx : idx + WINDOW]

    def _object(self, idx: int, depth: int, *, top: bool = False) -> tuple[dict[str, Any], int]:
        text = self.text
        out: dict[str, Any] = {}
        idx = self._ws(idx + 1)
        if text.startswith("}", idx):
            return out, idx + 1
        keys = 0
        while True:
            if not text.startswith('"', idx):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, idx)
            key, idx = scanstring(text, idx + 1, True)
            idx = self._ws(idx)
            if not text.startswith(":", idx):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, idx)
            idx = self._ws(idx + 1)
            if top:
                keys += 1
                if self.max_values is not None and keys > self.max_values:
                    raise ApiError(422, "invalid_request", f"body: must not hold more than {self.max_values} fields")
                self._enter(key)
                if key == "items" and text.startswith("[", idx):
                    out[key], idx = self._items(idx, depth + 1)
                else:
                    out[key], idx = self._value(idx, depth + 1)
            else:
                self._count()
                out[key], idx = self._value(idx, depth + 1)
            idx = self._ws(idx)
            if text.startswith("}", idx):
                return out, idx + 1
            if not text.startswith(",", idx):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
            idx = self._ws(idx + 1)

    def _items(self, idx: int, depth: int) -> tuple[list[Any], int]:
        """The top-level `items` array, counted; refused, what was read of it is freed a
        slice at a time (at once, 100,000 items hold the GIL for ~50 ms)."""
        out: list[Any] = []
        try:
            return self._array(idx, depth, out, items=True)
        except BaseException:
            while out:
                del out[-1000:]
            raise

    def _array(
        self, idx: int, depth: int, out: list[Any] | None = None, *, items: bool = False
    ) -> tuple[list[Any], int]:
        text = self.text
        out = [] if out is None else out
        idx = self._ws(idx + 1)
        if text.startswith("]", idx):
            return out, idx + 1
        while True:
            if items:
                if self.max_items is not None and len(out) == self.max_items:
                    raise ApiError(
                        422, "invalid_request",
                        f"items: at most {self.max_items} items per job; split the job into smaller ones",
                    )
                self._enter(f"items[{len(out)}]")
            else:
                self._count()
            value, idx = self._value(idx, depth + 1)
            out.append(value)
            idx = self._ws(idx)
            if text.startswith("]", idx):
                return out, idx + 1
            if not text.startswith(",", idx):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, idx)
            idx = self._ws(idx + 1)


def _scalar(text: str, idx: int) -> tuple[Any, int]:
    try:
        found: tuple[Any, int] = _scan(text, idx)
    except StopIteration:
        raise json.JSONDecodeError("Expecting value", text, idx) from None
    return found
