"""When to look at a running prediction: from the run times this process has observed.

    times = RunTimes(hit_ratio=0.8, first_s=1.0, max_s=10.0)
    times.observe("google/nano-banana", 7.9)        # created -> completed, seconds
    delay = times.next_read("google/nano-banana", elapsed_s=0.0)

Every read costs the shared read budget, so a read should find the prediction finished
most of the time. Given that a prediction has run `elapsed_s` and is not finished, the next
read is placed where a `hit_ratio` share of the remaining run-time distribution has ended:
with 0.8 the expected number of reads per prediction is about 1 / 0.8 = 1.25. A model never
seen before (or a prediction slower than every one seen) falls back to doubling backoff.
"""

from __future__ import annotations

import bisect
import math
from collections import deque


class RunTimes:
    def __init__(self, *, hit_ratio: float, first_s: float, max_s: float, window: int = 256) -> None:
        if not 0 < hit_ratio < 1:
            raise ValueError("hit_ratio must be between 0 and 1")
        self._hit_ratio = hit_ratio
        self._first_s = first_s
        self._max_s = max_s
        self._window = window
        self._recent: dict[str, deque[float]] = {}
        self._sorted: dict[str, list[float]] = {}

    def observe(self, model: str, seconds: float) -> None:
        """One finished prediction's run time, from its own created/completed timestamps."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        recent = self._recent.setdefault(model, deque())
        ordered = self._sorted.setdefault(model, [])
        if len(recent) == self._window:
            ordered.pop(bisect.bisect_left(ordered, recent.popleft()))
        recent.append(seconds)
        bisect.insort(ordered, seconds)

    def samples(self, model: str) -> int:
        return len(self._sorted.get(model, ()))

    def quantile(self, model: str, q: float) -> float | None:
        ordered = self._sorted.get(model)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def next_read(self, model: str, elapsed_s: float) -> float:
        """Seconds from now until the next read of a prediction running for `elapsed_s`."""
        ordered = self._sorted.get(model)
        if ordered:
            n = len(ordered)
            ended = bisect.bisect_right(ordered, elapsed_s) / n
            if ended < 1.0:
                target = ended + self._hit_ratio * (1.0 - ended)
                at = ordered[min(n - 1, max(0, math.ceil(target * n) - 1))]
                if at > elapsed_s:
                    return at - elapsed_s
            # Slower than anything seen: the distribution says nothing, back off from here.
            return min(self._max_s, max(self._first_s, elapsed_s / 2))
        return min(self._max_s, max(self._first_s, elapsed_s))
