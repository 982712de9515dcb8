"""The per-tenant last-minute dispatch counter stays bounded and forgets old seconds."""

from __future__ import annotations

from services.scheduler.rates import RecentCounts


def test_counts_the_last_minute_in_constant_memory() -> None:
    now = [1000.0]
    recent = RecentCounts(clock=lambda: now[0])
    for _ in range(120):  # two minutes, 10 items a second
        recent.add("a", 10)
        now[0] += 1.0
    assert recent.last_minute("a") == 590  # the current second is empty so far
    assert len(recent._rings["a"][0]) == 60
    now[0] += 61.0
    assert recent.last_minute("a") == 0 and recent.last_minute("unknown") == 0


def test_active_lists_the_keys_counted_lately_and_forgets_the_rest() -> None:
    now = [1000.0]
    recent = RecentCounts(clock=lambda: now[0])
    recent.add("old", 3)
    now[0] += 30.0
    recent.add("new", 2)
    assert recent.active() == {"old": 3, "new": 2}
    now[0] += 31.0
    assert recent.active() == {"new": 2}
    assert set(recent._rings) == {"new"}
