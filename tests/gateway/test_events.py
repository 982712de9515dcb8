"""The SSE relay of WatchJob: event framing, resume with Last-Event-ID, end at the terminal job."""

from __future__ import annotations

import json

import grpc
import httpx
from fairway.scheduler.v1 import scheduler_pb2

from services.gateway.events import IDS_PER_POINT
from tests.gateway.conftest import tenant
from tests.gateway.fakes import Abort, Fakes


def sse_id(seq: int, n: int = 1) -> str:
    """The SSE id of the `n`th event sent at resume point `seq` (services/gateway/events.py)."""
    return str(seq * IDS_PER_POINT + n)


def parse(stream: str) -> list[dict[str, str]]:
    events = []
    for block in stream.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append(fields)
    return events


def events() -> list[scheduler_pb2.JobEvent]:
    item = scheduler_pb2.Item(id="i1", job_id="job-1", ref="r1", status=scheduler_pb2.PROCESSING, attempts=1)
    done_item = scheduler_pb2.Item(id="i1", job_id="job-1", ref="r1", status=scheduler_pb2.DONE, output_json='"ok"')
    running = scheduler_pb2.Job(
        id="job-1", status=scheduler_pb2.JOB_PROCESSING, counts=scheduler_pb2.ItemCounts(processing=1)
    )
    done = scheduler_pb2.Job(
        id="job-1", status=scheduler_pb2.JOB_DONE, counts=scheduler_pb2.ItemCounts(done=1), finished_at=1.5
    )
    return [
        scheduler_pb2.JobEvent(seq=1, item=item),
        scheduler_pb2.JobEvent(seq=2, job=running),
        scheduler_pb2.JobEvent(seq=3, item=done_item),
        scheduler_pb2.JobEvent(seq=4, job=done),
        # Never relayed: the stream ends at the terminal job event.
        scheduler_pb2.JobEvent(seq=5, item=item),
    ]


async def test_events_are_relayed_until_the_terminal_job(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("WatchJob", events())
    r = await client.get("/v1/jobs/job-1/events", headers=tenant("t1"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    got = parse(r.text)
    assert [(e["event"], e["id"]) for e in got] == [
        ("item", sse_id(1)), ("job", sse_id(2)), ("item", sse_id(3)), ("job", sse_id(4))
    ]
    first = json.loads(got[0]["data"])
    assert (first["id"], first["ref"], first["status"]) == ("i1", "r1", "PROCESSING")
    assert json.loads(got[2]["data"])["output"] == "ok"
    last = json.loads(got[3]["data"])
    assert (last["status"], last["counts"]["DONE"], last["finished_at"]) == ("DONE", 1, "1970-01-01T00:00:01.500Z")
    sent = fakes.scheduler.calls("WatchJob")[0]
    assert (sent.tenant, sent.job_id, sent.after_seq) == ("t1", "job-1", 0)


async def test_last_event_id_resumes_after_that_event(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("WatchJob", events())
    r = await client.get("/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": sse_id(2)})
    assert [e["id"] for e in parse(r.text)] == [sse_id(3), sse_id(4)]
    assert fakes.scheduler.calls("WatchJob")[0].after_seq == 2
    bad = await client.get("/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": "soon"})
    assert bad.status_code == 422
    assert bad.json()["error"]["message"].startswith("Last-Event-ID: ")
    for beyond in ("-5", str(2**63), "1" * 19, " 5", "1e3"):
        r = await client.get("/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": beyond})
        assert r.status_code == 422 and r.json()["error"]["message"].startswith("Last-Event-ID: "), beyond


async def test_unknown_job_is_404_before_the_stream(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("GetJob", Abort(grpc.StatusCode.NOT_FOUND, "job-9 not found"))
    r = await client.get("/v1/jobs/job-9/events", headers=tenant("t2"))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    assert fakes.scheduler.calls("WatchJob") == []
    assert fakes.scheduler.calls("GetJob")[0].tenant == "t2"


async def test_a_stream_that_ends_early_just_ends(client: httpx.AsyncClient, fakes: Fakes) -> None:
    fakes.scheduler.reply("WatchJob", events()[:2])
    r = await client.get("/v1/jobs/job-1/events", headers=tenant("t1"))
    assert [e["id"] for e in parse(r.text)] == [sse_id(1), sse_id(2)]
