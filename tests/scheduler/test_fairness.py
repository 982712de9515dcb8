"""The fair-share core in-process: weighted shares, newcomers, caps, weight changes."""

from __future__ import annotations

import random
from collections.abc import Callable

from services.scheduler.fairness import LaneShares
from tests.support.fairness import jain


def _unlimited(_tenant: str) -> int:
    return 1 << 30


def dispatch(
    lane: LaneShares, n: int, weights: dict[str, float], headroom: Callable[[str], int] = _unlimited
) -> dict[str, int]:
    picks = lane.pick(n, lambda t: weights.get(t, 1.0), headroom)
    lane.commit(picks, lambda t: weights.get(t, 1.0))
    return picks


def test_weighted_shares_in_ten_second_windows_of_contention() -> None:
    """At 300 items/s in batches of 32, each 10 s window of contention splits 1:2:3 within 5%."""
    rng = random.Random(7)
    weights = {f"t{i}": float(1 + i % 3) for i in range(12)}
    lane = LaneShares()
    for tenant in weights:
        lane.add_backlog(tenant, 100_000)
    rate, window_s, batch = 300, 10, 32
    for _window in range(3):
        got = dict.fromkeys(weights, 0)
        to_send = rate * window_s
        while to_send > 0:
            n = min(batch, to_send, rng.randint(1, batch))
            for tenant, k in dispatch(lane, n, weights).items():
                got[tenant] += k
            to_send -= n
        total_w = sum(weights.values())
        for tenant, w in weights.items():
            expected = rate * window_s * w / total_w
            assert abs(got[tenant] - expected) <= 0.05 * expected, (tenant, got[tenant], expected)
        assert jain([got[t] / w for t, w in weights.items()]) >= 0.99


def test_newcomer_behind_a_million_item_backlog_is_in_the_next_batch() -> None:
    lane = LaneShares()
    lane.add_backlog("big", 1_000_000)
    weights = {"big": 1.0, "new": 1.0}
    for _ in range(100):
        assert dispatch(lane, 64, weights) == {"big": 64}
    lane.add_backlog("new", 3)
    picks = dispatch(lane, 64, weights)
    assert picks["new"] == 3 and picks["big"] == 61


def test_idle_time_earns_no_credit() -> None:
    lane = LaneShares()
    weights = {"a": 1.0, "b": 1.0}
    lane.add_backlog("a", 10_000)
    for _ in range(50):
        dispatch(lane, 20, weights)
    lane.add_backlog("b", 10_000)
    # b arrives after a got 1000 items; from now on they alternate, b does not get 1000 first.
    picks = dispatch(lane, 100, weights)
    assert abs(picks["a"] - picks["b"]) <= 2


def test_weight_change_applies_to_the_next_pick() -> None:
    lane = LaneShares()
    weights = {"a": 1.0, "b": 1.0}
    lane.add_backlog("a", 10_000)
    lane.add_backlog("b", 10_000)
    assert dispatch(lane, 100, weights) == {"a": 50, "b": 50}
    weights["b"] = 4.0
    picks = dispatch(lane, 100, weights)
    assert picks == {"a": 20, "b": 80}


def test_headroom_caps_a_tenant_and_the_rest_goes_to_others() -> None:
    lane = LaneShares()
    weights = {"a": 10.0, "b": 1.0}
    lane.add_backlog("a", 1000)
    lane.add_backlog("b", 1000)
    picks = dispatch(lane, 50, weights, headroom=lambda t: 3 if t == "a" else 1 << 30)
    assert picks == {"a": 3, "b": 47}


def test_pick_does_not_change_state_and_backlog_bounds_it() -> None:
    lane = LaneShares()
    lane.add_backlog("a", 2)
    lane.add_backlog("b", 100)
    first = lane.pick(10, lambda t: 1.0, _unlimited)
    assert first == lane.pick(10, lambda t: 1.0, _unlimited) == {"a": 2, "b": 8}
    lane.commit({"a": 2, "b": 8}, lambda t: 1.0)
    assert lane.backlogs() == {"b": 92} and lane.backlog_total == 92
    lane.set_backlog("b", 0)
    assert lane.pick(10, lambda t: 1.0, _unlimited) == {} and lane.backlog_total == 0


def test_many_tenants_pick_inspects_only_the_front() -> None:
    """10,000 tenants and a million items: one pick of 256 is exact and proportional."""
    lane = LaneShares()
    for i in range(10_000):
        lane.add_backlog(f"t{i}", 100)
    got: dict[str, int] = {}
    for _ in range(80):
        for tenant, n in dispatch(lane, 256, {}).items():
            got[tenant] = got.get(tenant, 0) + n
    # Equal weights: round robin, nobody gets a second item before everyone got a first.
    assert len(got) == 10_000 and set(got.values()) <= {2, 3}
    assert lane.backlog_total == 1_000_000 - 80 * 256
