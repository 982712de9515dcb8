"""Replicate with webhooks, under injected faults, on the real stack: no reads while the
webhooks arrive, a lost webhook still ends its item, and every item ends after exactly
one prediction whatever failed on the way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from services.common.embedded import free_port
from tests.e2e.stack import E2EStack
from tests.predictor.support import replicate_counts, run_job

FAULTS = {
    "FAIRWAY_EMULATOR_ERROR_RATE": "0.05",
    "FAIRWAY_EMULATOR_RESET_RATE": "0.05",
    "FAIRWAY_EMULATOR_PREDICTION_FAILURE_RATE": "0.1",
    "FAIRWAY_EMULATOR_SEED": "11",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    running = E2EStack(
        tmp_path_factory.mktemp("predictor-webhooks"), database_url, redis_url, time_scale=10, emulator=FAULTS,
        scheduler={"FAIRWAY_RETRY_BASE_SECONDS": "0.05", "FAIRWAY_RETRY_MAX_SECONDS": "0.5",
                   "FAIRWAY_MAX_ATTEMPTS": "8"},
    )
    running.set_env("predictor", FAIRWAY_PUBLIC_URL=running.gateway_url)
    with running:
        yield running


def _check_outcomes(job: dict[str, object], items: list[dict[str, object]], n: int) -> None:
    counts = job["counts"]
    assert isinstance(counts, dict)
    assert counts["DONE"] + counts["FAILED"] == n, counts
    assert counts["FAILED"] < n // 3, "only the predictions the emulator failed may fail"
    for item in items:
        if item["status"] == "FAILED":
            assert "the model crashed" in str(item["error"]), item["error"]
        else:
            assert item["status"] == "DONE" and item["output"]


def test_webhooks_complete_items_without_a_single_read(stack: E2EStack) -> None:
    _, client = stack.create_tenant("hooks")
    before = replicate_counts(stack)
    n = 80
    job, items = run_job(client, n, "hook")
    after = replicate_counts(stack)
    _check_outcomes(job, items, n)
    assert after["create"] - before["create"] == n, "one create per item, faults included"
    assert after["get"] == before["get"], "webhooks make reads unnecessary"


def test_a_lost_webhook_still_ends_the_item(stack: E2EStack) -> None:
    # A predictor whose webhook URL leads nowhere: every webhook is lost.
    stack.set_env("predictor", FAIRWAY_PUBLIC_URL=f"http://127.0.0.1:{free_port()}",
                  FAIRWAY_WEBHOOK_SAFETY_SECONDS="0.5")
    stack.start_predictor()
    stack.predictors.pop(0).stop()
    _, client = stack.create_tenant("lost-hooks")
    before = replicate_counts(stack)
    n = 30
    job, items = run_job(client, n, "lost")
    after = replicate_counts(stack)
    _check_outcomes(job, items, n)
    assert after["create"] - before["create"] == n
    assert after["get"] - before["get"] >= n, "each item ended by a safety read"
