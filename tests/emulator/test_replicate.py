"""The official `replicate` SDK against the emulator over real HTTP."""

from __future__ import annotations

import uuid

import httpx
import pytest
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError
from replicate.webhook import Webhooks, WebhookSigningSecret
from standardwebhooks import Webhook

from tests.emulator.conftest import WEBHOOK_SECRET, Emulator
from tests.emulator.receiver import WebhookReceiver

MODEL = "google/nano-banana"


def client(emulator: Emulator, token: str | None = None) -> ReplicateClient:
    return ReplicateClient(api_token=token or f"r8_{uuid.uuid4().hex}", base_url=emulator.url)


def stats(emulator: Emulator, key: str) -> dict[str, dict[str, int]]:
    body = httpx.get(f"{emulator.url}/_emulator/stats", params={"key": key}).json()
    return dict(body["keys"].get(key, {}))


def test_create_get_and_wait(emulator: Emulator) -> None:
    c = client(emulator)
    created = c.models.predictions.create(model=MODEL, input={"prompt": "a lighthouse"})
    # One tuple, not `status == "starting" and ...`: mypy would keep that narrowing past wait().
    assert (created.status, created.model, created.version) == ("starting", MODEL, "hidden")
    assert created.urls is not None and created.urls["get"].endswith(f"/v1/predictions/{created.id}")
    created.wait()  # the SDK polls GET /v1/predictions/{id}
    assert created.status == "succeeded"
    assert isinstance(created.output, str) and created.output.startswith("https://replicate.delivery/emulated/")
    assert created.started_at and created.completed_at
    assert created.metrics is not None and created.metrics["predict_time"] > 0
    fetched = c.predictions.get(created.id)
    assert fetched.output == created.output
    waited = c.models.predictions.create(model=MODEL, input={"prompt": "a lighthouse"}, wait=True)
    assert waited.status == "succeeded" and waited.output == created.output


def test_wait_gives_up_and_returns_the_prediction_as_it_is(emulator: Emulator) -> None:
    prediction = client(emulator).models.predictions.create(model="slow/model", input={"n": 1}, wait=1)
    assert prediction.status in ("starting", "processing") and prediction.output is None


def test_versioned_create_and_run(emulator: Emulator) -> None:
    c = client(emulator)
    prediction = c.predictions.create(version="owner/model:5c7d5dc6dd8bf75c", input={"seed": 1})
    assert (prediction.model, prediction.version) == ("owner/model", "5c7d5dc6dd8bf75c")
    first, again = (c.run(MODEL, input={"prompt": "x", "num_outputs": 2}, use_file_output=False) for _ in "ab")
    assert first == again and len(set(first)) == 2


def test_every_input_gets_its_own_output(emulator: Emulator) -> None:
    c = client(emulator)
    outputs = [
        c.models.predictions.create(model=MODEL, input={"prompt": f"item {i}"}, wait=True).output for i in range(5)
    ]
    assert len(set(outputs)) == 5


def test_cancel(emulator: Emulator) -> None:
    c = client(emulator)
    prediction = c.models.predictions.create(model="slow/model", input={"n": 2})
    prediction.cancel()
    canceled = c.predictions.get(prediction.id)
    assert canceled.status == "canceled" and canceled.completed_at
    assert c.predictions.cancel(prediction.id).status == "canceled"  # idempotent


def test_list_pages_newest_first(emulator: Emulator) -> None:
    c = client(emulator)
    ids = [c.models.predictions.create(model="slow/model", input={"i": i}).id for i in range(105)]
    first = c.predictions.list()
    assert [p.id for p in first.results] == ids[::-1][:100] and first.previous is None
    assert first.next is not None
    second = c.predictions.list(first.next)
    assert [p.id for p in second.results] == ids[::-1][100:] and second.next is None
    assert [p.id for p in c.predictions.list(second.previous).results] == [p.id for p in first.results]


def test_predictions_belong_to_their_key(emulator: Emulator) -> None:
    prediction = client(emulator).models.predictions.create(model=MODEL, input={"p": 1})
    with pytest.raises(ReplicateError) as caught:
        client(emulator).predictions.get(prediction.id)
    assert caught.value.status == 404


def test_missing_token_is_401(emulator: Emulator) -> None:
    response = httpx.post(f"{emulator.url}/v1/models/{MODEL}/predictions", json={"input": {}})
    assert response.status_code == 401 and response.json()["status"] == 401


def test_invalid_input_is_422(emulator: Emulator) -> None:
    with pytest.raises(ReplicateError) as caught:
        client(emulator).predictions.create(version="abc", input=None)
    assert caught.value.status == 422


def test_webhooks_are_signed_and_follow_the_filter(emulator: Emulator) -> None:
    c = client(emulator)
    secret = c.webhooks.default.secret()
    assert secret.key == WEBHOOK_SECRET
    with WebhookReceiver() as hooks:
        c.models.predictions.create(
            model=MODEL,
            input={"prompt": "hooked"},
            webhook=hooks.url,
            webhook_events_filter=["start", "output", "logs", "completed"],
        )
        deliveries = hooks.wait_for(lambda d: any(x.event_status == "succeeded" for x in d))
    statuses = [d.event_status for d in deliveries]
    assert statuses[0] == "starting" and statuses[-1] == "succeeded"
    assert "processing" in statuses
    for delivery in deliveries:
        Webhooks.validate(headers=delivery.headers, body=delivery.body, secret=secret, tolerance=300)
        Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
        assert delivery.headers["webhook-signature"].startswith("v1,")


def test_completed_only_filter(emulator: Emulator) -> None:
    c = client(emulator)
    with WebhookReceiver() as hooks:
        prediction = c.models.predictions.create(
            model=MODEL, input={"prompt": "once"}, webhook=hooks.url, webhook_events_filter=["completed"]
        )
        prediction.wait()
        deliveries = hooks.wait_for(lambda d: len(d) >= 1)
    assert [d.event_status for d in deliveries] == ["succeeded"]


def test_completed_event_is_retried_until_the_receiver_takes_it(emulator: Emulator) -> None:
    secret = WebhookSigningSecret(key=WEBHOOK_SECRET)
    with WebhookReceiver(fail_first=2) as hooks:
        client(emulator).models.predictions.create(
            model=MODEL, input={"prompt": "retried"}, webhook=hooks.url, webhook_events_filter=["completed"]
        )
        deliveries = hooks.wait_for(lambda d: any(x.answered == 200 for x in d))
    assert [d.answered for d in deliveries] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1  # one message, three attempts
    for delivery in deliveries:
        Webhooks.validate(headers=delivery.headers, body=delivery.body, secret=secret)


def test_create_limit_surfaces_as_replicate_error(strict_emulator: Emulator) -> None:
    token = f"r8_{uuid.uuid4().hex}"
    c = client(strict_emulator, token)
    for i in range(6):  # the burst of 3 above the steady rate's 3 in the burst's window
        c.models.predictions.create(model=MODEL, input={"i": i})
    with pytest.raises(ReplicateError) as caught:
        c.models.predictions.create(model=MODEL, input={"i": 6})
    assert caught.value.status == 429
    assert caught.value.detail is not None
    assert caught.value.detail.startswith("Request was throttled. Your rate limit resets in ~")
    raw = httpx.post(
        f"{strict_emulator.url}/v1/models/{MODEL}/predictions",
        json={"input": {}},
        headers={"authorization": f"Bearer {token}"},
    )
    assert raw.status_code == 429 and int(raw.headers["retry-after"]) >= 1
    assert raw.headers["ratelimit-remaining"] == "0" and int(raw.headers["ratelimit-reset"]) >= 1
    counts = stats(strict_emulator, token)["replicate.create"]
    assert (counts["accepted"], counts["rejected"]) == (6, 2)
    # Reads have their own budget: still open.
    assert len(c.predictions.list().results) == 6
