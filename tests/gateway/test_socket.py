"""The gateway under uvicorn on a real socket: streaming, and a webhook secret fetched from Replicate."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from fairway.scheduler.v1 import scheduler_pb2
from fastapi import FastAPI, Request
from standardwebhooks import Webhook

from services.gateway.app import create_app
from tests.gateway.conftest import serve, settings_for, tenant
from tests.gateway.fakes import Fakes
from tests.gateway.test_events import sse_id

PROVIDER_SECRET = "whsec_" + "cHJvdmlkZXItc2lkZS1zZWNyZXQtMTIzNA=="


def fake_replicate() -> tuple[FastAPI, list[str]]:
    """Just the endpoint the SDK's `webhooks.default.secret()` calls; records the bearer tokens."""
    app = FastAPI()
    tokens: list[str] = []

    @app.get("/v1/webhooks/default/secret")
    async def secret(request: Request) -> dict[str, str]:
        tokens.append(request.headers.get("authorization", ""))
        return {"key": PROVIDER_SECRET}

    return app, tokens


@pytest.fixture
async def provider() -> AsyncIterator[tuple[str, list[str]]]:
    app, tokens = fake_replicate()
    async for url in serve(app):
        yield url, tokens


@pytest.fixture
async def gateway_url(fakes: Fakes, provider: tuple[str, list[str]]) -> AsyncIterator[str]:
    settings = settings_for(
        fakes.address,
        fakes.address,
        replicate_webhook_secret=None,
        replicate_api_token="r8_test",
        replicate_base_url=provider[0],
    )
    async for url in serve(create_app(settings)):
        yield url


async def test_events_stream_over_a_socket(gateway_url: str, fakes: Fakes) -> None:
    fakes.scheduler.reply(
        "WatchJob",
        [
            scheduler_pb2.JobEvent(seq=7, job=scheduler_pb2.Job(id="job-1", status=scheduler_pb2.JOB_PROCESSING)),
            scheduler_pb2.JobEvent(seq=8, job=scheduler_pb2.Job(id="job-1", status=scheduler_pb2.JOB_FAILED)),
        ],
    )
    lines = []
    async with (
        httpx.AsyncClient(base_url=gateway_url) as http,
        http.stream("GET", "/v1/jobs/job-1/events", headers={**tenant("t1"), "Last-Event-ID": sse_id(6)}) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            lines.append(line)
    assert [line for line in lines if line.startswith(("event:", "id:"))] == [
        "event: job",
        f"id: {sse_id(7)}",
        "event: job",
        f"id: {sse_id(8)}",
    ]
    assert fakes.scheduler.calls("WatchJob")[0].after_seq == 6


async def test_webhook_secret_is_fetched_once_from_the_provider(
    gateway_url: str, fakes: Fakes, provider: tuple[str, list[str]]
) -> None:
    fakes.scheduler.reply("ReportUpstreamResult", scheduler_pb2.UpstreamResultResponse(matched=True))
    async with httpx.AsyncClient(base_url=gateway_url) as http:
        for n in range(2):
            body = json.dumps({"id": f"pred-{n}", "status": "succeeded", "output": "x"}).encode()
            moment = datetime.now(tz=UTC)
            headers = {
                "webhook-id": f"msg_{n}",
                "webhook-timestamp": str(int(moment.timestamp())),
                "webhook-signature": Webhook(PROVIDER_SECRET).sign(f"msg_{n}", moment, body.decode()),
            }
            r = await http.post("/v1/webhooks/replicate", content=body, headers=headers)
            assert r.status_code == 200, r.text
    assert provider[1] == ["Bearer r8_test"]
    assert [c.upstream_id for c in fakes.scheduler.calls("ReportUpstreamResult")] == ["pred-0", "pred-1"]
