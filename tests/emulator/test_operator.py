"""The `/_emulator/` endpoints: health, stats, reset; and seeded faults."""

from __future__ import annotations

import uuid

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

from tests.emulator.conftest import Emulator

MODEL = "google/nano-banana"


def test_health_shows_settings_without_the_secret(emulator: Emulator) -> None:
    body = httpx.get(f"{emulator.url}/_emulator/health").json()
    assert body["status"] == "ok" and "webhook_secret" not in body["settings"]
    assert body["limits"]["replicate"]["create_rpm"] == 6000


def test_stats_count_each_key_and_endpoint(strict_emulator: Emulator) -> None:
    key = f"r8_{uuid.uuid4().hex}"
    c = ReplicateClient(api_token=key, base_url=strict_emulator.url)
    outcomes = []
    for i in range(8):  # 6 fit (a burst of 3 above the steady rate), 2 are throttled
        try:
            c.models.predictions.create(model=MODEL, input={"i": i})
            outcomes.append("accepted")
        except ReplicateError:
            outcomes.append("rejected")
    c.webhooks.default.secret()
    stats = httpx.get(f"{strict_emulator.url}/_emulator/stats", params={"key": key}).json()
    assert list(stats["keys"]) == [key]
    create = stats["keys"][key]["replicate.create"]
    assert create["accepted"] == outcomes.count("accepted") == 6
    assert create["rejected"] == outcomes.count("rejected") == 2
    assert sum(row[1] for row in create["per_second"]) == 6
    assert sum(row[2] for row in create["per_second"]) == 2
    assert stats["keys"][key]["replicate.webhook_secret"]["accepted"] == 1


def _outcomes(emulator: Emulator, n: int) -> list[str]:
    seen = []
    with httpx.Client(base_url=emulator.url, headers={"authorization": "Bearer faults"}) as http:
        for _ in range(n):
            try:
                seen.append(str(http.get("/v1/webhooks/default/secret").status_code))
            except httpx.TransportError:
                seen.append("reset")
    return seen


def test_faults_are_reproducible_by_seed(faulty_emulator: Emulator) -> None:
    httpx.post(f"{faulty_emulator.url}/_emulator/reset")
    first = _outcomes(faulty_emulator, 40)
    assert "200" in first and "reset" in first and {"500", "502", "503"} & set(first)
    httpx.post(f"{faulty_emulator.url}/_emulator/reset")
    assert _outcomes(faulty_emulator, 40) == first
    stats = httpx.get(f"{faulty_emulator.url}/_emulator/stats", params={"key": "faults"}).json()
    counts = stats["keys"]["faults"]["replicate.webhook_secret"]
    assert counts["accepted"] == 40 and counts["faults"] == first.count("reset") + sum(o.startswith("5") for o in first)


def test_failed_predictions_follow_the_input(faulty_emulator: Emulator) -> None:
    key = f"r8_{uuid.uuid4().hex}"

    def run_all() -> list[str]:
        c = ReplicateClient(api_token=key, base_url=faulty_emulator.url)
        statuses: list[str] = []
        for i in range(8):
            while True:  # ride out the injected 5xx and resets; the create had no effect then
                try:
                    statuses.append(c.models.predictions.create(model=MODEL, input={"i": i}, wait=True).status)
                    break
                except (ReplicateError, httpx.TransportError):
                    continue
        return statuses

    httpx.post(f"{faulty_emulator.url}/_emulator/reset")
    first = run_all()
    assert set(first) == {"succeeded", "failed"}
    httpx.post(f"{faulty_emulator.url}/_emulator/reset")
    assert run_all() == first


def test_reset_forgets_predictions_and_budgets(strict_emulator: Emulator) -> None:
    key = f"r8_{uuid.uuid4().hex}"
    c = ReplicateClient(api_token=key, base_url=strict_emulator.url)
    prediction = c.models.predictions.create(model=MODEL, input={"x": 1})
    httpx.post(f"{strict_emulator.url}/_emulator/reset")
    assert httpx.get(f"{strict_emulator.url}/_emulator/stats").json()["keys"] == {}
    try:
        c.predictions.get(prediction.id)
        raise AssertionError("the prediction should be gone")
    except ReplicateError as exc:
        assert exc.status == 404


def test_foreign_traffic_is_switched_per_key_and_budget(emulator: Emulator) -> None:
    key, other = f"sk-{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    foreign = f"{emulator.url}/_emulator/foreign"
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}

    def remaining(token: str) -> int:
        response = httpx.post(
            f"{emulator.openai_url}/chat/completions", json=chat, headers={"authorization": f"Bearer {token}"}
        )
        return int(response.headers["x-ratelimit-remaining-requests"])

    answer = httpx.post(foreign, json={"key": key, "budget": "openai:gpt-4o", "share": 0.5})
    assert answer.status_code == 200 and answer.json() == {"key": key, "budget": "openai:gpt-4o", "share": 0.5}
    # 500 rpm: half of it was already there when it was switched on, and it keeps sending ~4 a second.
    assert 500 - 250 - 1 - 10 <= remaining(key) <= 500 - 250 - 1
    assert remaining(other) == 499
    httpx.post(foreign, json={"key": key, "budget": "openai:gpt-4o", "share": 0})
    stats = httpx.get(f"{emulator.url}/_emulator/stats", params={"key": key}).json()
    counted = stats["keys"][key]["openai:gpt-4o"]["foreign"]
    assert (counted["share"], counted["prefilled"]) == (0.0, 250)
    assert counted["accepted"] == sum(n for _, n in counted["per_second"])
    assert stats["keys"][key]["openai.chat.completions"]["accepted"] == 1
    assert httpx.post(foreign, json={"budget": "openai:", "share": 0.5}).status_code == 400
    assert httpx.post(foreign, json={"budget": "replicate.read", "share": 1}).status_code == 400
