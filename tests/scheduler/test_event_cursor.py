"""The watcher's place in a job's changes when commits arrive out of number order."""

from __future__ import annotations

from services.scheduler import events
from services.scheduler.events import LOOKBACK_SECONDS, SETTLE_SECONDS, _Cursor


def test_a_late_commit_below_the_top_is_read_again_and_sent_once() -> None:
    cursor = _Cursor(after_seq=10)
    assert cursor.start(now=0.0, final=False) == 10
    assert [cursor.fresh(seq, 0.0) for seq in (11, 13)] == [True, True]  # 12 not committed yet
    cursor.settle()
    assert cursor.start(now=0.1, final=False) == 13  # a wake soon after reads past the top
    # A second later the read starts at the floor again: 12 is news, 11 and 13 are not.
    assert cursor.start(now=LOOKBACK_SECONDS, final=False) == 10
    assert [cursor.fresh(seq, LOOKBACK_SECONDS) for seq in (11, 12, 13)] == [False, True, False]
    cursor.settle()
    assert cursor.floor == 10  # nothing was read long enough ago to settle
    later = SETTLE_SECONDS + LOOKBACK_SECONDS
    assert cursor.start(now=later, final=False) == 10
    cursor.settle()
    assert (cursor.floor, cursor.unsettled) == (13, False)
    assert cursor.start(now=later + 0.1, final=False) == 13


def test_only_reads_from_the_floor_settle() -> None:
    cursor = _Cursor(after_seq=0)
    cursor.start(now=0.0, final=False)
    cursor.fresh(5, 0.0)
    cursor.start(now=0.5, final=False)  # a read past the top proves nothing below it
    cursor.settle()
    assert cursor.floor == 0


def test_memory_is_bounded_by_forgetting_the_oldest() -> None:
    cursor = _Cursor(after_seq=0)
    cursor.start(now=0.0, final=True)
    for seq in range(1, events._REMEMBERED + 101):
        assert cursor.fresh(seq, 0.0)
    assert cursor.floor == 100 and cursor.top == events._REMEMBERED + 100
    assert not cursor.fresh(100, 0.0)
