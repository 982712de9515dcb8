"""Emulator restarts: prediction ids are never handed out twice, and with a state file
predictions and counts outlive the process, as Replicate's outlive the client that made them."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
from replicate.client import Client as ReplicateClient
from standardwebhooks import Webhook

from services.common.embedded import free_port
from tests.emulator.conftest import WEBHOOK_SECRET, started
from tests.emulator.receiver import WebhookReceiver

LIMITS = {"replicate": {"create_rpm": 6000, "read_rpm": 30000}}
MODEL = "google/nano-banana"


def _seconds(stamp: str | None) -> float:
    assert stamp is not None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_ids_differ_between_runs_with_the_same_seed(tmp_path: Path) -> None:
    key = f"r8_{uuid.uuid4().hex}"
    runs = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        with started(tmp_path / run, LIMITS, seed=3) as emulator:
            c = ReplicateClient(api_token=key, base_url=emulator.url)
            runs.append(c.models.predictions.create(model=MODEL, input={"prompt": "same"}, wait=True))
    assert runs[0].id != runs[1].id
    assert len(runs[0].id) == 26 and set(runs[0].id) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert runs[0].output == runs[1].output  # the seed still decides what a prediction gives


def test_predictions_and_counts_outlive_a_restart(tmp_path: Path) -> None:
    key = f"r8_{uuid.uuid4().hex}"
    port = free_port()
    settings = {
        "state": tmp_path / "state.json",
        "prediction_sigma": 0,
        "prediction_seconds_by_model": json.dumps({"steady/model": 4}),
        "webhook_backoff_seconds": 60,  # a failed delivery is not retried before the restart
    }
    with WebhookReceiver() as hooks, WebhookReceiver(fail_first=1) as late_hooks:
        with started(tmp_path, LIMITS, port=port, **settings) as first:
            c = ReplicateClient(api_token=key, base_url=first.url)
            done = c.models.predictions.create(
                model=MODEL, input={"p": "done"}, webhook=late_hooks.url, webhook_events_filter=["completed"]
            )
            running = c.models.predictions.create(model="steady/model", input={"p": "running"})
            hooked = c.models.predictions.create(
                model="steady/model", input={"p": "hooked"}, webhook=hooks.url, webhook_events_filter=["completed"]
            )
            assert {running.status, hooked.status} == {"starting"}
            late_hooks.wait_for(lambda d: len(d) == 1)  # `done` finished; its webhook failed once
            done = c.predictions.get(done.id)
            first.process.terminate()  # SIGTERM: the state is written on the way out
        assert hooks.deliveries == []
        with started(tmp_path, LIMITS, port=port, **settings) as second:
            c = ReplicateClient(api_token=key, base_url=second.url)
            assert c.predictions.get(done.id).output == done.output
            for prediction in (running, hooked):
                again = c.predictions.get(prediction.id)
                assert again.created_at == prediction.created_at
                again.wait()
                assert again.status == "succeeded"
                # On its own timeline: 4 s after it started, however long the emulator was down.
                assert abs(_seconds(again.completed_at) - _seconds(again.started_at) - 4.0) < 0.01
            (delivery,) = hooks.wait_for(lambda d: len(d) >= 1)
            assert delivery.prediction["id"] == hooked.id and delivery.event_status == "succeeded"
            Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
            # The webhook owed when the emulator stopped is sent again after it restarts.
            failed, owed = late_hooks.wait_for(lambda d: len(d) >= 2)
            assert (failed.answered, owed.answered) == (500, 200)
            assert owed.prediction == failed.prediction
            assert owed.prediction["id"] == done.id and owed.prediction["output"] == done.output
            fresh = c.models.predictions.create(model=MODEL, input={"p": "after"})
            assert fresh.id not in {done.id, running.id, hooked.id}
            listed = [p.id for p in c.predictions.list().results]
            assert listed == [fresh.id, hooked.id, running.id, done.id]
            stats = httpx.get(f"{second.url}/_emulator/stats", params={"key": key}).json()
    assert stats["keys"][key]["replicate.create"]["accepted"] == 4
    assert stats["predictions"]["succeeded"] >= 3


def test_the_state_is_written_while_running(tmp_path: Path) -> None:
    """Written every `state_save_seconds` when something changed: a SIGKILL loses only the last moments."""
    key = f"r8_{uuid.uuid4().hex}"
    state = tmp_path / "state.json"
    port = free_port()
    with started(tmp_path, LIMITS, port=port, state=state, state_save_seconds=0.1) as first:
        c = ReplicateClient(api_token=key, base_url=first.url)
        prediction = c.models.predictions.create(model=MODEL, input={"p": "kept"}, wait=True)
        deadline = time.monotonic() + 10
        while prediction.id not in (state.read_text() if state.exists() else ""):
            assert time.monotonic() < deadline, "the state file was not written"
            time.sleep(0.05)  # another process writes it: nothing to wait on but the file
        first.process.kill()
    with started(tmp_path, LIMITS, port=port, state=state) as second:
        again = ReplicateClient(api_token=key, base_url=second.url).predictions.get(prediction.id)
    assert again.status == "succeeded" and again.output == prediction.output
