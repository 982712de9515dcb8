"""Per-key event counts over the last minute, in constant memory per key.

Sixty one-second buckets in a ring: counting is O(1), reading is O(60), and a key that
dispatches a million items a minute costs the same 60 integers as one that dispatches one.

    recent = RecentCounts()
    recent.add("store-a", 32)
    recent.last_minute("store-a")    # 32
    recent.active()                  # {"store-a": 32}: every key counted in the last minute
"""

from __future__ import annotations

import time
from collections.abc import Callable

_BUCKETS = 60


class RecentCounts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rings: dict[str, tuple[list[int], list[int]]] = {}  # key -> (counts, second of each bucket)

    def add(self, key: str, n: int = 1) -> None:
        second = int(self._clock())
        counts, seconds = self._rings.setdefault(key, ([0] * _BUCKETS, [-1] * _BUCKETS))
        slot = second % _BUCKETS
        if seconds[slot] != second:
            counts[slot], seconds[slot] = 0, second
        counts[slot] += n

    def active(self) -> dict[str, int]:
        """Every key with events in the last minute, with its count; forgets the others."""
        counts = {key: self.last_minute(key) for key in list(self._rings)}
        for key, n in counts.items():
            if n == 0:
                del self._rings[key]
        return {key: n for key, n in counts.items() if n}

    def last_minute(self, key: str) -> int:
        ring = self._rings.get(key)
        if ring is None:
            return 0
        oldest = int(self._clock()) - _BUCKETS + 1
        counts, seconds = ring
        return sum(c for c, s in zip(counts, seconds, strict=True) if s >= oldest)
