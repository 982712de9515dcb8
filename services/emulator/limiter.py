"""Exact rolling-window rate limits, per API key, on an injectable clock.

    window = SlidingWindow(capacity=600, window=60.0)
    budget = Budget([window])                       # all windows must have room
    decision = budget.acquire(now)                  # admits, or says how long to wait
    if not decision.accepted: ... decision.retry_after

A window admits a request at time `t` iff the weights already admitted in `(t - window, t]`
plus this one fit its capacity: never more than the capacity in any window, and everything
that fits is admitted. Weights are 1 for requests and the token count for token budgets.
Times are provider seconds; the caller scales them (see `config.time_scale`).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence

Clock = Callable[[], float]
# Foreign requests admitted: (first instant, interval between them, how many), provider seconds.
ForeignReport = Callable[[float, float, int], None]


_MIN_WAIT = 1e-6


class SlidingWindow:
    """At most `capacity` units in any half-open interval `(t - window, t]`."""

    __slots__ = ("_entries", "_used", "capacity", "window")

    def __init__(self, capacity: int, window: float) -> None:
        if capacity <= 0 or window <= 0:
            raise ValueError("a window needs a positive capacity and length")
        self.capacity = capacity
        self.window = window
        self._entries: deque[tuple[float, int]] = deque()
        self._used = 0

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.window
        while entries and entries[0][0] <= horizon:
            self._used -= entries.popleft()[1]

    def fits(self, now: float, weight: int = 1) -> bool:
        self._expire(now)
        return self._used + weight <= self.capacity

    def add(self, now: float, weight: int = 1) -> None:
        self._entries.append((now, weight))
        self._used += weight

    def merge(self, entries: Iterable[tuple[float, int]]) -> None:
        """Add time-ordered entries stamped in the past, keeping the window in time order."""
        added = list(entries)
        if added:
            self._entries = deque(heapq.merge(self._entries, added))
            self._used += sum(weight for _, weight in added)

    def remaining(self, now: float) -> int:
        self._expire(now)
        return max(0, self.capacity - self._used)

    def wait_for(self, now: float, weight: int = 1) -> float:
        """Seconds until `weight` more units fit (0 if they fit now, inf if never)."""
        self._expire(now)
        if weight > self.capacity:
            return math.inf
        excess = self._used + weight - self.capacity
        if excess <= 0:
            return 0.0
        for stamp, used in self._entries:
            excess -= used
            if excess <= 0:
                # Floor at a microsecond: float rounding can make an entry that is still inside
                # the window look due now, and "retry in 0 s" would be a lie.
                return max(stamp + self.window - now, _MIN_WAIT)
        return 0.0  # unreachable: the entries sum to more than the excess

    def reset_after(self, now: float) -> float:
        """Seconds until the window is empty again, i.e. back to its full capacity."""
        self._expire(now)
        return self._entries[-1][0] + self.window - now if self._entries else 0.0


class Decision:
    """What the limiter said about one request."""

    __slots__ = ("accepted", "blocking", "retry_after")

    def __init__(self, accepted: bool, retry_after: float = 0.0, blocking: str = "") -> None:
        self.accepted = accepted
        self.retry_after = retry_after  # provider seconds until the request would fit
        self.blocking = blocking  # "requests" or "tokens": the window that said no


class Budget:
    """One key's budget: request windows (weight 1) and optionally token windows.

    Another service sharing the key can take a share of it (`set_foreign`): it sends at that
    share of the steady request rate, each request costing the average tokens per request at
    the limits, and its requests are taken, evenly spread in time, before this key's own are
    considered. `foreign` given here starts it at the budget's first use.
    """

    __slots__ = (
        "_foreign_done",
        "_foreign_initial",
        "_foreign_pending",
        "_foreign_rate",
        "_foreign_start",
        "_foreign_tokens",
        "on_foreign",
        "requests",
        "tokens",
    )

    def __init__(
        self,
        requests: Sequence[SlidingWindow],
        tokens: Sequence[SlidingWindow] = (),
        foreign: float = 0.0,
    ) -> None:
        self.requests = tuple(requests)
        self.tokens = tuple(tokens)
        primary = self.requests[0]
        self._foreign_tokens = max(1, self.tokens[0].capacity // primary.capacity) if self.tokens else 0
        self._foreign_initial = foreign
        self._foreign_rate = 0.0
        self._foreign_start = 0.0
        self._foreign_done = 0
        self._foreign_pending = 0
        self.on_foreign: ForeignReport | None = None

    def acquire(self, now: float, tokens: int = 0) -> Decision:
        """Admit one request costing `tokens`, or say why not and for how long."""
        if self._foreign_initial:
            self.set_foreign(self._foreign_initial, now)
        if self._foreign_rate > 0:
            self._take_foreign(now)
        for window in self.requests:
            if not window.fits(now):
                return Decision(False, self._wait(now, tokens), "requests")
        if tokens:
            for window in self.tokens:
                if not window.fits(now, tokens):
                    return Decision(False, self._wait(now, tokens), "tokens")
        for window in self.requests:
            window.add(now)
        if tokens:
            for window in self.tokens:
                window.add(now, tokens)
        return Decision(True)

    def _wait(self, now: float, tokens: int) -> float:
        waits = [w.wait_for(now) for w in self.requests]
        if tokens:
            waits += [w.wait_for(now, tokens) for w in self.tokens]
        return max(waits)

    def set_foreign(self, share: float, now: float) -> int:
        """From `now` on, the other service sends at `share` of the steady request rate (0 stops it).

        A rise is taken to have been going on for a whole window already: the windows are filled
        with that window's worth of its requests, spread evenly over it, as far as they have room
        (the newest first). Returns how many were put in; a stopped service's requests age out.
        """
        if not 0 <= share < 1:
            raise ValueError("a foreign share is at least 0 and less than 1")
        self._foreign_initial = 0.0
        if self._foreign_rate > 0:
            self._take_foreign(now)  # what it sent at the old rate, up to now
        primary = self.requests[0]
        rate = share * primary.capacity / primary.window
        prefilled = self._prefill(now, rate - self._foreign_rate) if rate > self._foreign_rate else 0
        self._foreign_rate = rate
        self._foreign_start = now
        self._foreign_done = 0
        if rate == 0:
            self._foreign_pending = 0
        return prefilled

    def catch_up(self, now: float) -> None:
        """Take what the other service has sent up to `now` (done anyway by the next `acquire`)."""
        if self._foreign_initial:
            self.set_foreign(self._foreign_initial, now)
        if self._foreign_rate > 0:
            self._take_foreign(now)

    def _prefill(self, now: float, rate: float) -> int:
        windows = (*self.requests, *self.tokens)
        horizon = max(w.window for w in windows)
        weights = [1] * len(self.requests) + [self._foreign_tokens] * len(self.tokens)
        free = [w.remaining(now) for w in windows]
        taken: list[float] = []
        for k in range(math.floor(horizon * rate + 1e-9), 0, -1):  # newest first
            at = now - horizon + k / rate
            inside = [i for i, w in enumerate(windows) if at > now - w.window]
            if all(free[i] >= weights[i] for i in inside):
                for i in inside:
                    free[i] -= weights[i]
                taken.append(at)
        taken.reverse()
        for window, weight in zip(windows, weights, strict=True):
            window.merge((at, weight) for at in taken if at > now - window.window)
        return len(taken)

    def _take_foreign(self, now: float) -> None:
        # The other service sends at a steady rate; a request of it that does not fit is
        # retried at the next chance, ahead of this key's own (it was there first).
        rate = self._foreign_rate
        interval = 1.0 / rate
        start = self._foreign_start
        due = math.floor((now - start) * rate)
        # After a long quiet spell only the last window's worth matters to the windows; the
        # older ones fitted (nothing of this key's competed) and are only reported.
        horizon = max(w.window for w in (*self.requests, *self.tokens))
        skip_to = due - math.ceil(horizon * rate)
        if self._foreign_done < skip_to:
            self._report(start + (self._foreign_done + 1) * interval, interval, skip_to - self._foreign_done)
            self._foreign_done = skip_to
        while self._foreign_done < due:
            self._foreign_done += 1
            at = start + self._foreign_done * interval
            if self._take_one(at):
                self._report(at, 0.0, 1)
            else:
                self._foreign_pending += 1
        while self._foreign_pending and self._take_one(now):
            self._foreign_pending -= 1
            self._report(now, 0.0, 1)
        self._foreign_pending = min(self._foreign_pending, self.requests[0].capacity)

    def _report(self, first: float, interval: float, count: int) -> None:
        if self.on_foreign is not None:
            self.on_foreign(first, interval, count)

    def _take_one(self, at: float) -> bool:
        cost = self._foreign_tokens
        if not (all(w.fits(at) for w in self.requests) and all(w.fits(at, cost) for w in self.tokens)):
            return False
        for window in self.requests:
            window.add(at)
        for window in self.tokens:
            window.add(at, cost)
        return True

    def remaining(self, now: float) -> tuple[int, int]:
        """(requests, tokens) that would still be admitted now."""
        req = min(w.remaining(now) for w in self.requests)
        tok = min((w.remaining(now) for w in self.tokens), default=0)
        return req, tok

    def reset_after(self, now: float) -> tuple[float, float]:
        """(requests, tokens) provider seconds until each budget is back to full."""
        req = max(w.reset_after(now) for w in self.requests)
        tok = max((w.reset_after(now) for w in self.tokens), default=0.0)
        return req, tok


class Limiter:
    """Budgets by name (API key, or key + model), made on first use.

    limiter = Limiter(lambda name: Budget([SlidingWindow(600, 60.0)]), clock=time.monotonic)
    decision, budget = limiter.acquire("key-1")
    """

    def __init__(self, factory: Callable[[str], Budget], clock: Clock) -> None:
        self._factory = factory
        self._clock = clock
        self._budgets: dict[str, Budget] = {}

    def budget(self, name: str) -> Budget:
        budget = self._budgets.get(name)
        if budget is None:
            budget = self._budgets[name] = self._factory(name)
        return budget

    def now(self) -> float:
        return self._clock()

    def acquire(self, name: str, tokens: int = 0) -> tuple[Decision, Budget]:
        budget = self.budget(name)
        return budget.acquire(self._clock(), tokens), budget

    def clear(self) -> None:
        self._budgets.clear()


def replicate_budget(rpm: int, burst: int, foreign: float = 0.0) -> Budget:
    """Replicate's shape: `rpm` per minute, and short bursts above that rate ("You can make
    short bursts of requests above the default rate limits before being throttled").

    A burst is `burst` requests beyond the steady rate: in the time `burst` requests take at
    that rate, at most `2 x burst` are let through. A client pacing itself at the per-minute
    limit, after a burst of up to `burst` at once, never meets it.
    """
    windows = [SlidingWindow(rpm, 60.0)]
    if 0 < 2 * burst < rpm:
        windows.append(SlidingWindow(2 * burst, 60.0 * burst / rpm))
    return Budget(windows, foreign=foreign)


def openai_budget(rpm: int, tpm: int, foreign: float = 0.0) -> Budget:
    """OpenAI's shape: requests and tokens per minute for one model."""
    return Budget([SlidingWindow(rpm, 60.0)], [SlidingWindow(tpm, 60.0)], foreign=foreign)
