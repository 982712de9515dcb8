"""What the commands print: rich tables on stdout, errors on stderr, JSON when asked (`--json`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    # Piped or captured: wide enough that ids and tables are never cut (COLUMNS still wins).
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200
    return console


out = _console(stderr=False)
err = _console(stderr=True)

STATUS_STYLE = {"DONE": "green", "FAILED": "red", "CANCELED": "yellow", "PROCESSING": "cyan", "PENDING": "dim"}


def print_json(value: Any) -> None:
    """One JSON document on stdout, unstyled, for scripts."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def error(message: str) -> None:
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)  # a line is never broken


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def when(stamp: str | None) -> str:
    """An RFC 3339 timestamp of the API, shorter: `2026-11-22 21:30:00`."""
    if not stamp:
        return "-"
    return stamp.replace("T", " ")[:19]


def epoch(stamp: str) -> float:
    """An RFC 3339 timestamp of the API in unix seconds."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return epoch(end) - epoch(start)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def shown(value: Any, width: int = 60) -> str:
    """A value on one line of at most `width` characters."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def table(
    title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, right: Sequence[str] = ()
) -> Table:
    """A table; the `right` columns (numbers) are right-aligned, ids and numbers never wrap."""
    grid = Table(title=title, title_justify="left", title_style="bold", header_style="bold")
    for name in columns:
        grid.add_column(name, justify="right" if name in right else "left", no_wrap=name in right or name == "id")
    for row in rows:
        grid.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
    if not grid.row_count:
        grid.caption = "none"
    return grid


def fields(pairs: Iterable[tuple[str, Any]]) -> Table:
    """`name  value` lines, aligned."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in pairs:
        grid.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    return grid


def counts(job: dict[str, Any]) -> Text:
    """`7 done  2 failed  1 canceled  3 processing  5 pending`, zeros left out."""
    parts = [(job["counts"].get(name, 0), name) for name in ("DONE", "FAILED", "CANCELED", "PROCESSING", "PENDING")]
    shown_parts = [Text(f"{n:,} {name.lower()}", style=STATUS_STYLE[name]) for n, name in parts if n]
    return Text("  ").join(shown_parts) if shown_parts else Text("no items", style="dim")
