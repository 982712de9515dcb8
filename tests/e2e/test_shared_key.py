"""Another service spends part of the same Replicate key's create budget.

The emulator's other client takes 30% of the 600 creates a minute (its window already full of
its calls, as a service that was there before us), then stops. Fairway learns the share left
from the 429s: every item ends DONE with one create, no listing, only a few 429s, and none
once the other client is gone and the rate recovers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.conftest import fresh_database
from tests.e2e.stack import E2EStack, wait_terminal

TIME_SCALE = 10.0  # a provider minute in 6 real seconds
BESIDE, ALONE = 700, 200  # more than the 420 creates the other client leaves in its first minute


def test_a_key_shared_with_another_client_costs_a_few_429s_and_no_item(
    tmp_path: Path, postgres_dsn: str, redis_url: str,
) -> None:
    limits = tmp_path / "limits.yaml"
    limits.write_text("replicate: {create_rpm: 600, read_rpm: 3000}\n")
    stack = E2EStack(tmp_path, asyncio.run(fresh_database(postgres_dsn)), redis_url, time_scale=TIME_SCALE,
                     predictor={"FAIRWAY_PREDICTOR_CONCURRENCY": "256"})
    stack.set_limits(limits)
    with stack, httpx.Client(base_url=stack.emulator_url, timeout=10) as emulator:
        def other_client(share: float) -> None:
            reply = emulator.post("/_emulator/foreign", json={
                "key": stack.replicate_token, "budget": "replicate.create", "share": share})
            assert reply.status_code == 200, reply.text

        _, client = stack.create_tenant("shared-a")
        other_client(0.3)
        job = client.post("/v1/jobs", json={
            "provider": "replicate", "model": "google/nano-banana",
            "items": [{"ref": f"p{i}", "input": {"prompt": f"shared {i}"}} for i in range(BESIDE)]})
        assert job.status_code == 201, job.text
        # One job runs beside the other client, the next after it has gone.
        assert wait_terminal(client, job.json()["id"])["status"] == "DONE"
        other_client(0.0)
        beside = stack.emulator_stats()["keys"][stack.replicate_token]["replicate.create"]
        second = client.post("/v1/jobs", json={
            "provider": "replicate", "model": "google/nano-banana",
            "items": [{"ref": f"q{i}", "input": {"prompt": f"alone {i}"}} for i in range(ALONE)]})
        assert second.status_code == 201, second.text
        assert wait_terminal(client, second.json()["id"])["status"] == "DONE"

        key = stack.emulator_stats()["keys"][stack.replicate_token]
        creates, listings = key["replicate.create"], key.get("replicate.list", {})
    assert creates["accepted"] == BESIDE + ALONE  # one create per item: a 429 proves nothing was created
    assert listings.get("accepted", 0) == 0  # so no item searched the account's predictions
    # The other client's window fills once; Fairway measures what it leaves and keeps under it:
    # one burst of 429s (the calls then in flight: a dispatch round's, at this time scale), or
    # two if the measure's hold ended while the job ran.
    bursts = [second for second, _, refused in beside["per_second"] if refused]
    assert 1 <= len(bursts) <= 2, beside["per_second"]
    assert creates["rejected"] == beside["rejected"]  # none while the rate recovers alone

