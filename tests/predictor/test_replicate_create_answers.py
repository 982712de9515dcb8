"""What each Replicate answer around a create leads to, on the real stack against the emulator:

- a create answered 429 (the key's create budget partly spent elsewhere) is sent again in
  place: no listing, no attempt lost, one prediction per item;
- a create reset after it was sent may have made a prediction: its item's next holder lists
  the account's predictions before it creates (and the reset listings are waited out);
- a prediction the provider forgot (it restarted) is created again, whether the item was
  polling it or resumed it after its predictor died; nothing fails.

Each test starts from a freshly started emulator (a new seed, so prediction ids never repeat
those items of earlier tests hold; its counts from zero) and a new predictor."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.stack import E2EStack, all_items, wait_terminal
from tests.predictor.support import replace_predictor, replicate_counts, restart_emulator, submit, wait_until

SLOW = "acme/slow"
SEEDS = itertools.count(101)
# Roomy everywhere but where a test narrows the provider's create budget.
ROOMY = {"replicate": {"create_rpm": 6000, "read_rpm": 60000}}


def _limits(workdir: Path, name: str, limits: dict[str, Any]) -> str:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(limits))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("create-answers")


@pytest.fixture(scope="module")
def stack(workdir: Path, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    running = E2EStack(
        workdir, database_url, redis_url,
        emulator=_emulator(workdir),
        # Short leases: a killed predictor's items resume within seconds. Attempts enough that
        # an item whose create is reset again and again (each may have created) still ends.
        scheduler={"FAIRWAY_LEASE_SECONDS": "3", "FAIRWAY_MAX_ATTEMPTS": "20",
                   "FAIRWAY_RETRY_BASE_SECONDS": "0.05", "FAIRWAY_RETRY_MAX_SECONDS": "0.5"},
    )
    # What Fairway plans with; the emulator enforces its own file, narrower where a test says so.
    planned = _limits(workdir, "fairway-limits", ROOMY)
    for service in ("ratelimiter", "scheduler"):
        running.set_env(service, FAIRWAY_LIMITS=planned)
    with running:
        yield running


def _emulator(workdir: Path, **env: str) -> dict[str, str]:
    """The emulator's settings: the module's defaults, then `env`."""
    return {
        "FAIRWAY_EMULATOR_SEED": str(next(SEEDS)),
        "FAIRWAY_EMULATOR_LIMITS": _limits(workdir, "provider-roomy", ROOMY),
        "FAIRWAY_EMULATOR_RESET_RATE": "0",
        "FAIRWAY_EMULATOR_PREDICTION_SECONDS": "0.3",
        "FAIRWAY_EMULATOR_PREDICTION_START_SECONDS": "0.05",
        # Long enough to restart the provider under running predictions, with little spread.
        "FAIRWAY_EMULATOR_PREDICTION_SECONDS_BY_MODEL": json.dumps({SLOW: 5}),
        "FAIRWAY_EMULATOR_PREDICTION_SIGMA": "0.1",
        **env,
    }


def _fresh(stack: E2EStack, workdir: Path, **env: str) -> None:
    restart_emulator(stack, **_emulator(workdir, **env))
    replace_predictor(stack)


def _accepted(stack: E2EStack, endpoint: str) -> int:
    return stack.accepted(stack.replicate_token, f"replicate.{endpoint}")


def _counts(stack: E2EStack, endpoint: str) -> dict[str, int]:
    counts = stack.emulator_stats()["keys"].get(stack.replicate_token, {}).get(f"replicate.{endpoint}", {})
    return {k: int(counts.get(k, 0)) for k in ("accepted", "rejected", "faults")}


def test_a_throttled_create_is_sent_again_in_place_without_a_listing(stack: E2EStack, workdir: Path) -> None:
    # The provider leaves this key far less than the ratelimiter was told (another service
    # spends the rest), so creates meet 429s until the ratelimiter learns the difference.
    tight = _limits(workdir, "provider-tight", {"replicate": {"create_rpm": 120, "read_rpm": 60000}})
    _fresh(stack, workdir, FAIRWAY_EMULATOR_LIMITS=tight, FAIRWAY_EMULATOR_REPLICATE_BURST="3")
    _, client = stack.create_tenant("throttled")
    n = 24
    job = submit(client, n, "throttled")
    final = wait_terminal(client, job["id"])

    assert final["status"] == "DONE" and final["counts"]["DONE"] == n, final
    creates = _counts(stack, "create")
    assert creates["rejected"] > 0, "the test needs creates answered 429"
    assert creates["accepted"] == n, "one prediction per item"
    assert _accepted(stack, "list") == 0, "a 429 proves nothing was created: nothing to search for"
    items = all_items(client, job["id"])
    assert {i["attempts"] for i in items} == {1}, "a throttled create costs no attempt"


def test_a_create_reset_after_sending_is_searched_for_before_creating_again(stack: E2EStack, workdir: Path) -> None:
    # The emulator drops 30% of connections after admitting the request (and before acting on
    # it): the predictor cannot tell that such a create made nothing.
    _fresh(stack, workdir, FAIRWAY_EMULATOR_RESET_RATE="0.3")
    _, client = stack.create_tenant("resets")
    n = 24
    job = submit(client, n, "reset")
    final = wait_terminal(client, job["id"])

    assert final["status"] == "DONE" and final["counts"]["DONE"] == n, final
    creates, lists = _counts(stack, "create"), _counts(stack, "list")
    assert creates["faults"] > 0, "the test needs creates reset after sending"
    assert creates["accepted"] - creates["faults"] == n, "one prediction per item"
    # Each reset create sent its item back with the intent; its next holder listed first.
    assert lists["accepted"] >= creates["faults"], (creates, lists)


def test_a_prediction_the_provider_forgot_while_it_ran_is_created_again(stack: E2EStack, workdir: Path) -> None:
    _fresh(stack, workdir)
    _, client = stack.create_tenant("forgotten")
    n = 6
    job = submit(client, n, "forgotten", model=SLOW)
    wait_until(lambda: replicate_counts(stack)["create"] == n, "the creates")
    restart_emulator(stack, FAIRWAY_EMULATOR_SEED=str(next(SEEDS)))  # forgets every prediction
    final = wait_terminal(client, job["id"])

    assert final["status"] == "DONE" and final["counts"]["DONE"] == n, final
    assert _accepted(stack, "create") == n, "each forgotten prediction created again, once"
    assert _accepted(stack, "list") == 0
    items = all_items(client, job["id"])
    assert len({i["output"] for i in items}) == n and {i["attempts"] for i in items} == {1}
    assert stack.predictors[-1].log().count("no longer knows prediction") == n


def test_a_resumed_item_whose_prediction_the_provider_forgot_creates_it_again(stack: E2EStack,
                                                                              workdir: Path) -> None:
    _fresh(stack, workdir)
    _, client = stack.create_tenant("forgotten-resumed")
    n = 6
    job = submit(client, n, "resumed", model=SLOW)
    wait_until(lambda: replicate_counts(stack)["create"] == n, "the creates")
    stack.predictors.pop(0).kill()  # dies with every prediction id recorded
    restart_emulator(stack, FAIRWAY_EMULATOR_SEED=str(next(SEEDS)))
    successor = stack.start_predictor()  # resumes each item once its lease expired
    final = wait_terminal(client, job["id"])

    assert final["status"] == "DONE" and final["counts"]["DONE"] == n, final
    assert _accepted(stack, "create") == n
    assert _accepted(stack, "list") == 0, "a recorded id is read, not searched for"
    assert len({i["output"] for i in all_items(client, job["id"])}) == n
    assert successor.log().count("no longer knows prediction") == n
