"""docs/benchmarks.md is assembled from sections, one per benchmark module.

    write_section("Ratelimiter", markdown_body)   # replaces "## Ratelimiter" ... up to the next "## "
"""

from __future__ import annotations

import math
import platform
import re
import statistics
from collections.abc import Iterable
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Produced by `make bench` (each section by its own module under `bench/`; `python -m bench NAME`
reruns one). Numbers are from the machine named in each section; re-run them on yours.
"""
# The "Targets at a glance" table at the top is kept by hand: it reads across sections.


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def percentile(values: Iterable[float], q: float) -> float:
    """The value `q` (0 to 1) of the way up the sorted values, in their unit: the one at index
    int(q * n), the largest for q >= 1; NaN if there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def spread_ms(seconds: list[float], tail: float = 0.99) -> dict[str, float]:
    """Median, a tail percentile and the maximum of durations in seconds, in ms:
    `{"median_ms", "p99_ms", "max_ms"}` for tail 0.99."""
    ordered = sorted(seconds)
    return {"median_ms": statistics.median(ordered) * 1e3,
            f"p{round(tail * 100)}_ms": percentile(ordered, tail) * 1e3, "max_ms": ordered[-1] * 1e3}


def write_section(title: str, body: str, path: Path = REPORT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
