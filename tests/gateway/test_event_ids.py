"""SSE ids: unique and increasing from a job's first event, integers that resume exactly."""

from __future__ import annotations

import httpx
from fairway.scheduler.v1 import scheduler_pb2

from services.gateway.events import IDS_PER_POINT, MAX_ID, EventIds
from tests.gateway.conftest import tenant
from tests.gateway.fakes import Fakes
from tests.gateway.test_events import parse

M = IDS_PER_POINT


def item(n: int, status: scheduler_pb2.ItemStatus.ValueType = scheduler_pb2.PENDING) -> scheduler_pb2.Item:
    return scheduler_pb2.Item(id=f"i{n}", job_id="job-1", ref=f"r{n}", status=status)


def test_events_at_one_resume_point_get_ids_of_their_own() -> None:
    ids = EventIds(None)
    # As the scheduler numbers a watch from the start: every first event at point 0.
    got = [ids.next(seq) for seq in (0, 0, 0, 0, 7, 7, 12)]
    assert got == [1, 2, 3, 4, 7 * M + 1, 7 * M + 2, 12 * M + 1]
    assert ids.resume_point == 12


def test_a_resumed_stream_goes_on_from_the_id_it_was_given() -> None:
    ids = EventIds(7 * M + 2)
    assert ids.resume_point == 7  # exactly the point of the event with that id
    # The scheduler repeats from point 7; the ids still rise past the client's.
    assert [ids.next(seq) for seq in (7, 7, 9)] == [7 * M + 3, 7 * M + 4, 9 * M + 1]


def test_an_id_that_cannot_be_said_is_left_out() -> None:
    ids = EventIds(3 * M + (M - 1))
    assert ids.next(3) is None  # the count at point 3 is used up: the client keeps its id (point 3)
    assert ids.next(4) == 4 * M + 1
    assert ids.next(2) is None  # never sent by the scheduler (its points only rise)
    assert EventIds(None).next(MAX_ID // M + 1) is None  # over 18 digits


async def test_first_events_of_a_stream_have_unique_rising_ids(client: httpx.AsyncClient, fakes: Fakes) -> None:
    # The first events share a point (the fake leaves out those at the watch's own point, 0).
    done = scheduler_pb2.Job(id="job-1", status=scheduler_pb2.JOB_DONE, finished_at=2.0)
    fakes.scheduler.reply("WatchJob", [
        scheduler_pb2.JobEvent(seq=1, item=item(1)),
        scheduler_pb2.JobEvent(seq=1, item=item(2)),
        scheduler_pb2.JobEvent(seq=1, job=scheduler_pb2.Job(id="job-1", status=scheduler_pb2.JOB_PENDING)),
        scheduler_pb2.JobEvent(seq=3, item=item(1, scheduler_pb2.DONE)),
        scheduler_pb2.JobEvent(seq=4, job=done),
    ])
    r = await client.get("/v1/jobs/job-1/events", headers=tenant("t1"))
    assert [int(e["id"]) for e in parse(r.text)] == [M + 1, M + 2, M + 3, 3 * M + 1, 4 * M + 1]
    # Resuming after the second event asks the scheduler from its exact point, 1.
    r = await client.get("/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": str(M + 2)})
    assert fakes.scheduler.calls("WatchJob")[1].after_seq == 1
    assert [int(e["id"]) for e in parse(r.text)] == [3 * M + 1, 4 * M + 1]


async def test_an_id_from_before_resumes_earlier_and_misses_nothing(client: httpx.AsyncClient, fakes: Fakes) -> None:
    # Ids used to be the bare resume point: 42 now reads as point 0, the job's start.
    fakes.scheduler.reply("WatchJob", [scheduler_pb2.JobEvent(seq=50, item=item(1))])
    r = await client.get("/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": "42"})
    assert fakes.scheduler.calls("WatchJob")[0].after_seq == 0
    assert [int(e["id"]) for e in parse(r.text)] == [50 * M + 1]
