"""A JSONL file of items → the `items` of one or more jobs, checked before anything is sent.

Each non-blank line is one item: `{"ref": "...", "input": {...}}`, or a bare input object (then its
line number is its ref). A line is read as the first form when its keys are `input` (an object)
and at most `ref`; any other object is a bare input, so an OpenAI `response` input such as
`{"input": "Hi", "max_output_tokens": 50}` is sent as it is.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from services.console.api import UsageError

MAX_ITEMS_PER_JOB = 100_000  # the gateway's limit (docs/http-api.md, Limits)
# A job's body, kept under the gateway's default limit of 10 MiB (FAIRWAY_GATEWAY_MAX_BODY_BYTES).
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_REF = 256
SHOWN_ERRORS = 10


@dataclass(frozen=True)
class Item:
    line: int
    ref: str
    input: dict[str, Any]
    size: int  # bytes of the item's JSON in a job's body

    def body(self) -> dict[str, Any]:
        return {"ref": self.ref, "input": self.input}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _item(line: int, text: str) -> Item:
    """One line's item; ValueError says what is wrong with it."""
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object (an item or an input), got {_kind(value)}")
    wrapped = isinstance(value.get("input"), dict) and set(value) <= {"ref", "input"}
    if not wrapped:
        ref, payload = str(line), value
    else:
        ref, payload = value.get("ref", str(line)), value["input"]
        if not isinstance(ref, str):
            raise ValueError(f"ref: must be a string, got {_kind(ref)}")
        if len(ref) > MAX_REF:
            raise ValueError(f"ref: at most {MAX_REF} characters, got {len(ref)}")
    size = len(json.dumps({"ref": ref, "input": payload}, ensure_ascii=False).encode()) + 1
    return Item(line, ref, payload, size)


def read_items(path: str) -> list[Item]:
    """Every item of the file (`-`: standard input); UsageError lists the bad lines."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as source:
                raw = source.read()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    items: list[Item] = []
    bad: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad.append(f"line {number}: not UTF-8 text (byte {exc.start + 1})")
            continue
        if not text.strip():
            continue
        try:
            items.append(_item(number, text))
        except ValueError as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        more = f"\n  … and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
        listed = "\n  ".join(bad[:SHOWN_ERRORS])
        raise UsageError(f"{path}: {len(bad)} bad line{'s' if len(bad) > 1 else ''}; nothing was submitted.\n"
                         f"  {listed}{more}")
    if not items:
        raise UsageError(f"{path}: no items (one JSON object a line); nothing was submitted")
    return items


def split(items: list[Item], per_job: int, max_bytes: int = MAX_BODY_BYTES) -> list[list[Item]]:
    """The items in jobs of at most `per_job` items and `max_bytes` of JSON each, in file order."""
    jobs: list[list[Item]] = []
    current: list[Item] = []
    size = 0
    for item in items:
        if item.size > max_bytes:
            raise UsageError(f"line {item.line}: the item is {item.size / 2**20:.1f} MiB of JSON; a job's body "
                             f"is at most {max_bytes / 2**20:.0f} MiB here")
        if current and (len(current) >= per_job or size + item.size > max_bytes):
            jobs.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    if current:
        jobs.append(current)
    return jobs


def too_big(path: str, items: list[Item], jobs: list[list[Item]], per_job: int, max_queued: int) -> str:
    """Why the file does not fit one job, and what to do about it."""
    size = sum(i.size for i in items) / 2**20
    limits = [f"at most {MAX_ITEMS_PER_JOB:,} items"]
    if max_queued < MAX_ITEMS_PER_JOB:
        limits = [f"at most {per_job:,} items (the tenant's max_queued)"]
    limits.append(f"{MAX_BODY_BYTES / 2**20:.0f} MiB of JSON")
    return (f"{path} holds {len(items):,} items ({size:.1f} MiB); one job holds {' and '.join(limits)}. "
            f"Pass --split to submit it as {len(jobs)} jobs, or split the file.")
