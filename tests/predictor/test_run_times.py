"""When a Replicate prediction is read: from the observed run times of its model."""

from __future__ import annotations

import pytest

from services.predictor.providers.run_times import RunTimes


def _times(**kw: float) -> RunTimes:
    return RunTimes(hit_ratio=kw.get("hit_ratio", 0.8), first_s=1.0, max_s=10.0, window=int(kw.get("window", 256)))


def test_an_unseen_model_backs_off_by_doubling_up_to_the_cap() -> None:
    times = _times()
    assert times.next_read("m", 0.0) == 1.0
    assert times.next_read("m", 1.0) == 1.0
    assert times.next_read("m", 3.0) == 3.0
    assert times.next_read("m", 40.0) == 10.0


def test_the_first_read_lands_where_most_predictions_have_ended() -> None:
    times = _times()
    for seconds in range(1, 11):  # 1..10 s
        times.observe("m", float(seconds))
    # 80% of runs take at most 8 s.
    assert times.next_read("m", 0.0) == pytest.approx(8.0)


def test_a_later_read_uses_the_runs_longer_than_what_has_elapsed() -> None:
    times = _times()
    for seconds in range(1, 11):
        times.observe("m", float(seconds))
    # Known to run longer than 8 s: 9 and 10 remain; 80% of them have ended by 10 s.
    assert times.next_read("m", 8.0) == pytest.approx(2.0)


def test_slower_than_everything_seen_falls_back_to_backoff() -> None:
    times = _times()
    times.observe("m", 2.0)
    assert times.next_read("m", 6.0) == pytest.approx(3.0)


def test_models_are_timed_apart_and_the_window_forgets_old_runs() -> None:
    times = _times(window=3)
    for seconds in (100.0, 100.0, 100.0, 2.0, 2.0, 2.0):
        times.observe("fast", seconds)
    times.observe("slow", 50.0)
    assert times.samples("fast") == 3
    assert times.quantile("fast", 0.99) == 2.0
    assert times.next_read("slow", 0.0) == pytest.approx(50.0)


def test_nonsense_durations_are_ignored() -> None:
    times = _times()
    times.observe("m", float("nan"))
    times.observe("m", -1.0)
    assert times.samples("m") == 0


def test_expected_reads_per_prediction_stay_below_two() -> None:
    """Simulated against the run times themselves: reads until a read finds the run ended."""
    import random

    rng = random.Random(7)
    times = _times()
    durations = [rng.lognormvariate(2.0, 0.5) for _ in range(2000)]
    for d in durations[:256]:
        times.observe("m", d)
    reads = 0
    for d in durations[256:]:
        elapsed = 0.0
        while True:
            elapsed += times.next_read("m", elapsed)
            reads += 1
            if elapsed >= d:
                break
    assert reads / len(durations[256:]) < 1.5
