"""The limiter, in process on a controlled clock: exact windows, all that fits, foreign traffic."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.emulator.accounting import Accounting
from services.emulator.calls import go_duration
from services.emulator.config import EmulatorSettings
from services.emulator.foreign import ForeignTraffic
from services.emulator.limiter import Budget, Limiter, SlidingWindow, openai_budget, replicate_budget
from services.emulator.tokens import chat_prompt_tokens, estimate_tokens, generate_text


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _in_window(times: list[tuple[float, int]], end: float, window: float) -> int:
    return sum(w for t, w in times if end - window < t <= end)


# Gaps between requests: often zero (bursts), sometimes across whole windows.
gaps = st.lists(
    st.tuples(st.sampled_from([0.0, 0.0, 0.001, 0.05, 0.3, 1.0, 2.5, 7.0]), st.integers(1, 40)),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(gaps=gaps, capacity=st.integers(1, 60), window=st.sampled_from([1.0, 5.0, 60.0]))
def test_window_never_exceeds_capacity_and_admits_all_that_fits(
    gaps: list[tuple[float, int]], capacity: int, window: float
) -> None:
    clock = FakeClock()
    limiter = Limiter(lambda _: Budget([SlidingWindow(capacity, window)]), clock)
    accepted: list[tuple[float, int]] = []
    for gap, _ in gaps:
        clock.now += gap
        decision, _budget = limiter.acquire("key")
        before = _in_window(accepted, clock.now, window)
        if decision.accepted:
            accepted.append((clock.now, 1))
            assert before + 1 <= capacity
        else:
            assert before == capacity  # rejected only when the window is full
            assert decision.retry_after > 0
    for t, _ in accepted:  # any window ending at an admitted request (the worst windows)
        assert _in_window(accepted, t, window) <= capacity


@settings(max_examples=300, deadline=None)
@given(gaps=gaps, rpm=st.integers(1, 50), tpm=st.integers(40, 400))
def test_tokens_and_requests_both_hold(gaps: list[tuple[float, int]], rpm: int, tpm: int) -> None:
    clock = FakeClock()
    limiter = Limiter(lambda _: openai_budget(rpm, tpm), clock)
    accepted: list[tuple[float, int]] = []
    for gap, tokens in gaps:
        clock.now += gap
        decision, _budget = limiter.acquire("key", tokens)
        requests_before = _in_window([(t, 1) for t, _ in accepted], clock.now, 60.0)
        tokens_before = _in_window(accepted, clock.now, 60.0)
        fits = requests_before + 1 <= rpm and tokens_before + tokens <= tpm
        assert decision.accepted == fits
        if decision.accepted:
            accepted.append((clock.now, tokens))
        else:
            assert decision.blocking == ("requests" if requests_before >= rpm else "tokens")


@settings(max_examples=200, deadline=None)
@given(gaps=gaps, rpm=st.integers(2, 120), burst=st.integers(1, 10))
def test_replicate_burst_and_minute(gaps: list[tuple[float, int]], rpm: int, burst: int) -> None:
    clock = FakeClock()
    limiter = Limiter(lambda _: replicate_budget(rpm, burst), clock)
    accepted: list[tuple[float, int]] = []
    short = 60.0 * burst / rpm
    for gap, _ in gaps:
        clock.now += gap
        decision, _budget = limiter.acquire("key")
        fits = _in_window(accepted, clock.now, 60.0) < rpm and (
            2 * burst >= rpm or _in_window(accepted, clock.now, short) < 2 * burst
        )
        assert decision.accepted == fits
        if decision.accepted:
            accepted.append((clock.now, 1))


def test_retry_after_is_when_the_request_fits() -> None:
    window = SlidingWindow(2, 60.0)
    budget = Budget([window])
    assert budget.acquire(0.0).accepted and budget.acquire(10.0).accepted
    decision = budget.acquire(15.0)
    assert not decision.accepted and decision.retry_after == 45.0
    assert not budget.acquire(59.999).accepted
    assert budget.acquire(60.0).accepted
    assert budget.reset_after(60.0) == (60.0, 0.0)


def test_a_request_larger_than_the_token_budget_never_fits() -> None:
    decision = openai_budget(10, 100).acquire(0.0, 101)
    assert not decision.accepted and decision.retry_after == float("inf")


def test_foreign_traffic_takes_its_share() -> None:
    clock = FakeClock()
    limiter = Limiter(lambda _: replicate_budget(600, 600, foreign=0.25), clock)
    own_after_first_minute = 0
    for _ in range(60_000):  # a greedy client, every 10 ms for ten minutes
        clock.now += 0.01
        accepted = limiter.acquire("key")[0].accepted
        own_after_first_minute += accepted and clock.now > 60.0
    # From the second minute on, the freed capacity (9 x 600) is shared 3:1.
    assert 0.74 * 5400 <= own_after_first_minute <= 0.76 * 5400


def _greedy(budget: Budget, clock: FakeClock, until: float, step: float = 0.01) -> list[float]:
    """A client asking every `step` seconds up to `until`: the times it was let through."""
    taken = []
    while clock.now < until - 1e-9:
        clock.now = round(clock.now + step, 6)
        if budget.acquire(clock.now).accepted:
            taken.append(clock.now)
    return taken


def test_foreign_traffic_switched_on_holds_a_window_of_it_at_once() -> None:
    clock = FakeClock()
    budget = replicate_budget(600, 600)
    reported: list[tuple[float, float, int]] = []
    budget.on_foreign = lambda first, interval, count: reported.append((first, interval, count))
    clock.now = 100.0
    assert budget.set_foreign(0.3, clock.now) == 180  # a window's worth at 3 a second, as if there before
    assert budget.remaining(clock.now) == (420, 0)
    own = _greedy(budget, clock, until=220.0)
    # We get what the window leaves us, then nothing until our own age out: the other service's
    # new requests take the room its older ones leave.
    first_minute = [t for t in own if t <= 160.0]
    assert len(first_minute) == 420 and max(first_minute) < 105.0
    assert 419 <= len([t for t in own if 160.0 < t <= 220.0]) <= 421
    foreign = sum(count for _, _, count in reported)
    assert 0.3 * 600 * 2 - 3 <= foreign <= 0.3 * 600 * 2  # 3 a second for two minutes
    assert budget.acquire(clock.now).accepted is False


def test_foreign_traffic_stopped_ages_out() -> None:
    clock = FakeClock()
    budget = replicate_budget(600, 600)
    budget.set_foreign(0.5, 0.0)
    reported: list[int] = []
    budget.on_foreign = lambda first, interval, count: reported.append(count)
    clock.now = 30.0
    budget.set_foreign(0.0, clock.now)
    # The window holds 150 of those prefilled (in (-30, 0]) and the 150 sent since: they age out.
    assert budget.remaining(clock.now) == (300, 0)
    before = sum(reported)
    own = _greedy(budget, clock, until=150.0, step=0.01)
    assert sum(reported) == before  # it sends nothing more
    assert len([t for t in own if t <= 90.0]) == 600
    assert len([t for t in own if 90.0 < t <= 150.0]) == 600


def test_foreign_shares_are_per_key_and_budget() -> None:
    clock = FakeClock()
    accounting = Accounting()
    foreign = ForeignTraffic(EmulatorSettings(foreign_traffic=0.1), accounting, clock, lambda t: 1_000_000 + t)
    creates = Limiter(lambda key: foreign.attach(key, "replicate.create", replicate_budget(600, 600)), clock)
    reads = Limiter(lambda key: foreign.attach(key, "replicate.read", replicate_budget(3000, 3000)), clock)
    foreign.make = lambda key, name: (creates if name == "replicate.create" else reads).budget(key)
    clock.now = 10.0
    assert creates.budget("a").remaining(clock.now)[0] == 540  # the configured share, from its first use
    foreign.set("b", "replicate.create", 0.5)  # a key not seen yet: its budget starts now
    foreign.set(None, "replicate.read", 0.2)  # every key, seen or to come
    clock.now = 20.0
    foreign.settle()
    # Each window holds the other service's share of it, all the time.
    assert creates.budget("a").remaining(clock.now)[0] == 540
    assert creates.budget("b").remaining(clock.now)[0] == 300
    assert creates.budget("c").remaining(clock.now)[0] == 540  # another key: the configured share
    assert reads.budget("a").remaining(clock.now)[0] == 2400
    foreign.set(None, "replicate.create", 0.0)
    clock.now = 30.0
    foreign.settle()
    assert creates.budget("b").remaining(clock.now)[0] == 600 - 300 + 10 * 5  # its requests from 20 s left by 30
    stats = accounting.snapshot()["keys"]
    assert isinstance(stats, dict)
    b = stats["b"]["replicate.create"]["foreign"]
    assert (b["share"], b["prefilled"], b["accepted"]) == (0.0, 300, 50)  # 5 a second from 10 s to 20 s
    assert sum(n for _, n in b["per_second"]) == 50
    assert b["per_second"][0][0] == 1_000_010  # at the unix second each was sent
    read = stats["a"]["replicate.read"]["foreign"]
    assert (read["share"], read["accepted"]) == (0.2, 100)  # 10 a second from its first use at 20 s


def test_foreign_counts_are_spread_over_the_seconds_they_were_sent() -> None:
    accounting = Accounting()
    accounting.record_foreign("k", "replicate.read", first=1000.5, interval=0.25, count=10)
    stats = accounting.snapshot()["keys"]
    assert isinstance(stats, dict)
    assert stats["k"]["replicate.read"]["foreign"]["per_second"] == [[1000, 2], [1001, 4], [1002, 4]]


def test_keys_have_their_own_budgets() -> None:
    clock = FakeClock()
    limiter = Limiter(lambda _: Budget([SlidingWindow(1, 60.0)]), clock)
    assert limiter.acquire("a")[0].accepted
    assert not limiter.acquire("a")[0].accepted
    assert limiter.acquire("b")[0].accepted


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0, 0.12, 0.0004, 1, 1.5, 90.5, 360, 3600)] == [
        "0s",
        "120ms",
        "1ms",
        "1s",
        "1.5s",
        "1m30.5s",
        "6m0s",
        "1h0m0s",
    ]


def test_tokens_are_deterministic() -> None:
    assert estimate_tokens("abcd" * 10) == 10
    messages: list[object] = [{"role": "user", "content": "hello there"}]
    assert chat_prompt_tokens(messages) == 3 + 4 + 3
    first, _ = generate_text(b"seed", None)
    assert generate_text(b"seed", None)[0] == first != generate_text(b"other", None)[0]
    capped, truncated = generate_text(b"seed", 3)
    assert len(capped.split()) <= 3
    assert truncated == (len(first.split()) > 3)
