"""`fairway up` stopped with Ctrl-C mid-job and started again on the same FAIRWAY_HOME.

Items in flight when the stack stops are handed back or left with their prediction recorded;
the emulated provider keeps its predictions, as a real one outlives its clients, so the next
run resumes them instead of paying for them again.
"""

from __future__ import annotations

import signal
import subprocess
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.stack import wait_terminal
from tests.predictor.support import wait_until
from tests.test_stack import _read_until, _start

RESTARTS = 3
REPLICATE_ITEMS = 20  # a job of them before each stop
OPENAI_ITEMS = 20


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C, as a terminal sends it, and wait for every child to be stopped."""
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 0


def _jobs(client: httpx.Client) -> list[dict[str, Any]]:
    reply = client.get("/v1/jobs", params={"limit": 100})
    assert reply.status_code == 200, reply.text
    return list(reply.json()["jobs"])


def _part_done(gateway: str, key: str, job_id: str) -> bool:
    """Some of the job's predictions finished, others still running."""
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        counts = client.get(f"/v1/jobs/{job_id}").json()["counts"]
    return bool(counts["DONE"]) and bool(counts["PROCESSING"])


@pytest.mark.slow
def test_items_in_flight_at_ctrl_c_finish_after_a_restart_with_one_create_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "home"
    # Predictions of about four seconds, log-normally spread: a stop finds some finished and
    # some running upstream.
    monkeypatch.setenv("FAIRWAY_EMULATOR_TIME_SCALE", "2")
    monkeypatch.setenv("FAIRWAY_PREDICTOR_GRACE", "1")
    monkeypatch.setenv("FAIRWAY_POLL_MAX_SECONDS", "0.5")
    proc, ports = _start(home)
    try:
        _read_until(proc, "Ctrl-C stops everything")
        admin_key = (home / "admin_key").read_text().strip()
        gateway = f"http://127.0.0.1:{ports['GATEWAY']}"
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30) as admin:
            created = admin.post("/v1/tenants", json={"id": "restarts", "credits": 1000})
            assert created.status_code == 201, created.text
            key = created.json()["api_key"]
        chats = {"provider": "openai", "model": "gpt-4o-mini",
                 "items": [{"ref": f"post-{i}", "input": {"messages": [{"role": "user", "content": f"post {i}"}],
                                                          "max_tokens": 50}} for i in range(OPENAI_ITEMS)]}
        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            assert client.post("/v1/jobs", json=chats).status_code == 201

        for run in range(RESTARTS):
            images = {"provider": "replicate", "model": "google/nano-banana",
                      "items": [{"ref": f"img-{run}-{i}", "input": {"prompt": f"restart {run} {i}"}}
                                for i in range(REPLICATE_ITEMS)]}
            with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
                reply = client.post("/v1/jobs", json=images)
                assert reply.status_code == 201, reply.text
            wait_until(partial(_part_done, gateway, key, reply.json()["id"]),
                       f"run {run}: the Replicate job part done", timeout_s=60)
            _stop(proc)
            proc, ports = _start(home)
            _read_until(proc, "Ctrl-C stops everything")
            gateway = f"http://127.0.0.1:{ports['GATEWAY']}"

        with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            jobs = [wait_terminal(client, job["id"]) for job in _jobs(client)]
            credits = client.get("/v1/tenants/me").json()["credits"]
        assert len(jobs) == 1 + RESTARTS
        for job in jobs:
            assert job["status"] == "DONE", job
            assert job["counts"]["DONE"] == job["items_total"]
        stats = httpx.get(f"http://127.0.0.1:{ports['EMULATOR']}/_emulator/stats", timeout=10).json()
        creates = stats["keys"]["r8_emulated"]["replicate.create"]
        # One prediction paid for per item, across every run of the provider.
        assert creates["accepted"] - creates.get("faults", 0) == RESTARTS * REPLICATE_ITEMS
        assert credits == 1000 - RESTARTS * REPLICATE_ITEMS - OPENAI_ITEMS
    finally:
        _kill_tree(proc)


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """After a failure: `fairway up`'s children run in sessions of their own, so kill them too."""
    if proc.poll() is not None:
        return
    with suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with suppress(psutil.NoSuchProcess):
                child.kill()
    proc.kill()
    proc.wait()
