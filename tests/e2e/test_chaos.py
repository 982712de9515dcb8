"""Chaos on the cluster stand-in: processes of every service SIGKILLed while tenants' jobs run.

`fairway up` runs 2 gateways, 2 schedulers, 3 ratelimiters and 4 predictors on one PostgreSQL
and one Redis, with the emulator as both providers and FAIRWAY_RESTART=always. Every
KILL_INTERVAL_S one process of each service is killed with SIGKILL (a different replica each
round) and the stand-in restarts it, while three tenants with credits submit Replicate and
OpenAI jobs through whichever gateway answers, and the emulator answers some calls 500 or cuts
their connection. At the end every item is DONE once, each
Replicate item was created once upstream, no call was answered 429 (the ratelimiter plans the
emulator's limits: one FAIRWAY_LIMITS file for both), each DONE item was charged once and every
tenant's ledger adds up to its balance.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from services.stack.children import listening
from tests.conftest import fresh_database
from tests.predictor.support import wait_until
from tests.scheduler.conftest import counters_match_items, ledger_reconciles
from tests.test_stack import _read_until, _replicas, _start, kill_tree

REPLICAS = {"gateway": 2, "scheduler": 2, "ratelimiter": 3, "predictor": 4}
TIME_SCALE = 5  # a provider minute in 12 real seconds; predictions of ~1.6 s
# Low enough that the budgets, not the machine, pace the run: 10 creates and 10 chats a real second.
LIMITS = {
    "utilization": 0.98,
    "replicate": {"create_rpm": 120, "read_rpm": 600},
    "openai": {"default": {"rpm": 120, "tpm": 60_000},
               "models": {"gpt-4o-mini": {"rpm": 120, "tpm": 60_000}}},
}
KILL_INTERVAL_S = 20.0  # real seconds between rounds of kills
ROUNDS = 5
TENANTS = {"chaos-a": 1.0, "chaos-b": 2.0, "chaos-c": 1.0}  # id: weight
# Each round, each tenant submits ITEMS Replicate and ITEMS OpenAI items at its start, about what
# the budgets finish in most of a round, so that the kills KILL_AFTER_S later find work at every
# stage; and LATE_ITEMS more OpenAI items right after the kills, while a gateway, a scheduler and a
# ratelimiter are down.
ITEMS = 45
LATE_ITEMS = 10
KILL_AFTER_S = 8.0
PER_TENANT = ROUNDS * (2 * ITEMS + LATE_ITEMS)
REPLICATE_ITEMS = ROUNDS * len(TENANTS) * ITEMS
CREDITS = PER_TENANT + 50
FAULT_RATE = 0.03  # of each kind, per request to the emulator
RETRY_PAUSE_S = 0.2  # between tries of a request no gateway answered
FINISH_S = 150.0  # for every job to finish after the last round
POLL_S = 0.5


@dataclass
class Gateways:
    """A client of every gateway, as a frontend behind a load balancer: a request a gateway does
    not answer (connection refused or cut, timeout, 503) goes to the next one. Any other 5xx is
    an answer no client should get: it is noted and tried again, so one run finds all of them."""

    urls: list[str]
    key: str
    unexpected: list[str] = field(default_factory=list)
    retries: int = 0  # requests sent again to the other gateway
    _next: int = 0

    def __post_init__(self) -> None:
        self._clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
                         for url in self.urls]

    def request(self, method: str, path: str, *, deadline_s: float = 60.0, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + deadline_s
        while True:
            client = self._clients[self._next % len(self._clients)]
            try:
                reply = client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failure = f"{client.base_url}: {exc!r}"
            else:
                if reply.status_code < 500:
                    return reply
                failure = f"{method} {path} at {client.base_url}: {reply.status_code} {reply.text[:300]}"
                if reply.status_code != 503:
                    self.unexpected.append(failure)
            self._next += 1
            self.retries += 1
            assert time.monotonic() < deadline, f"no gateway answered {method} {path}: {failure}"
            time.sleep(RETRY_PAUSE_S)

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> Gateways:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class Kill:
    at_s: float
    service: str
    port: int
    pid: int


def _kill_one_of_each(proc: subprocess.Popen[str], round_: int, t0: float) -> list[Kill]:
    """SIGKILL one replica of every service, a different one each round."""
    running = _replicas(proc)
    kills = []
    for service in REPLICAS:
        ports = sorted(port for (name, port) in running if name == service)
        assert len(ports) == REPLICAS[service], f"round {round_}: {service} replicas up: {ports}"
        port = ports[round_ % len(ports)]
        victim = running[service, port]
        victim.kill()
        kills.append(Kill(time.monotonic() - t0, service, port, victim.pid))
    return kills


def _restarted(proc: subprocess.Popen[str], kill: Kill) -> bool:
    new = _replicas(proc).get((kill.service, kill.port))
    return new is not None and new.pid != kill.pid and listening("127.0.0.1", kill.port)


def _images(tenant: str, round_: int) -> tuple[str, dict[str, Any]]:
    """A job and the idempotency key that makes its retries safe."""
    return f"{tenant}-{round_}-replicate", {
        "provider": "replicate", "model": "google/nano-banana",
        "items": [{"ref": f"img-{round_}-{i}", "input": {"prompt": f"{tenant} {round_} {i}"}} for i in range(ITEMS)]}


def _posts(tenant: str, round_: int, n: int, name: str) -> tuple[str, dict[str, Any]]:
    return f"{tenant}-{round_}-{name}", {
        "provider": "openai", "model": "gpt-4o-mini",
        "items": [{"ref": f"{name}-{round_}-{i}", "input": {
            "messages": [{"role": "user", "content": f"{tenant} {name} {round_} {i}"}], "max_tokens": 40}}
            for i in range(n)]}


def _submit(tenants: dict[str, Gateways], jobs: list[tuple[str, str]],
            bodies: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
    """Each tenant's jobs, with their idempotency keys; their ids go to `jobs`."""
    for tenant, gateways in tenants.items():
        for key, body in bodies[tenant]:
            reply = gateways.request("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
            assert reply.status_code in (200, 201), reply.text
            jobs.append((tenant, reply.json()["id"]))


def _wait_finished(tenants: dict[str, Gateways], jobs: list[tuple[str, str]]) -> None:
    """Poll the jobs until every one has finished (FINISH_S at most)."""
    deadline = time.monotonic() + FINISH_S
    waiting = list(jobs)
    while waiting:
        tenant, job_id = waiting[0]
        reply = tenants[tenant].request("GET", f"/v1/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        if reply.json()["finished_at"]:
            waiting.pop(0)
            continue
        assert time.monotonic() < deadline, f"{len(waiting)} jobs unfinished, e.g. {reply.json()}"
        time.sleep(POLL_S)


async def _database_checks(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        await ledger_reconciles(conn)
        await counters_match_items(conn)
        statuses = dict(await conn.fetch("SELECT status, count(*) FROM items GROUP BY status"))
        without_output = await conn.fetchval("SELECT count(*) FROM items WHERE output IS NULL")
        attempts = dict(await conn.fetch("SELECT attempts, count(*) FROM items GROUP BY attempts"))
        charges = await conn.fetch(
            "SELECT i.id, i.status, (SELECT count(*) FROM credit_ledger l "
            "WHERE l.item_id = i.id AND l.kind = 'charge') AS charges FROM items i")
        refunds = await conn.fetchval("SELECT count(*) FROM credit_ledger WHERE kind = 'refund'")
        balances = dict(await conn.fetch("SELECT id, credits FROM tenants"))
        jobs = dict(await conn.fetch("SELECT tenant_id, count(*) FROM jobs GROUP BY tenant_id"))
    finally:
        await conn.close()
    return {"statuses": statuses, "without_output": without_output, "attempts": attempts,
            "charged_not_once": [dict(r) for r in charges if r["charges"] != 1],
            "refunds": refunds, "balances": balances, "jobs": jobs}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_item_done_once_within_limits_while_a_process_of_each_service_is_killed_every_round(
    tmp_path: Path, postgres_dsn: str, redis_url: str,
) -> None:
    database_url = asyncio.run(fresh_database(postgres_dsn))
    limits = tmp_path / "limits.yaml"
    limits.write_text(yaml.safe_dump(LIMITS))
    home = tmp_path / "home"
    proc, ports = _start(
        home, DATABASE_URL=database_url, REDIS_URL=redis_url, FAIRWAY_LIMITS=str(limits),
        FAIRWAY_RESTART="always", FAIRWAY_EMULATOR_TIME_SCALE=str(TIME_SCALE),
        # The session's Redis may hold other tests' budgets.
        FAIRWAY_RATELIMITER_KEY_PREFIX=f"chaos:{secrets.token_hex(4)}",
        # A killed predictor's items go to another one after 10 s, not 30.
        FAIRWAY_LEASE_SECONDS="10", FAIRWAY_POLL_INITIAL_SECONDS="0.1", FAIRWAY_POLL_MAX_SECONDS="1",
        # The provider fails too: 500s, and connections cut with no answer (a create whose fate
        # is unknown, which the predictor must find again rather than create twice).
        FAIRWAY_EMULATOR_ERROR_RATE=str(FAULT_RATE), FAIRWAY_EMULATOR_RESET_RATE=str(FAULT_RATE),
        **{f"FAIRWAY_{service.upper()}S": str(n) for service, n in REPLICAS.items()},
    )
    kills: list[Kill] = []
    errors = ""  # what `fairway up` printed on stderr: each death and restart
    try:
        _read_until(proc, "Ctrl-C stops everything")
        urls = [f"http://127.0.0.1:{int(ports['GATEWAY']) + i}" for i in range(REPLICAS["gateway"])]
        with Gateways(urls, (home / "admin_key").read_text().strip()) as admin:
            keys = {}
            for tenant, weight in TENANTS.items():
                reply = admin.request("POST", "/v1/tenants", json={"id": tenant, "weight": weight, "credits": CREDITS})
                assert reply.status_code == 201, reply.text
                keys[tenant] = reply.json()["api_key"]
        tenants = {tenant: Gateways(urls, key) for tenant, key in keys.items()}
        jobs: list[tuple[str, str]] = []
        t0 = time.monotonic()
        for r in range(ROUNDS):
            # Sleeps keep the schedule; nothing here waits for a state by sleeping.
            time.sleep(max(0.0, t0 + r * KILL_INTERVAL_S - time.monotonic()))
            _submit(tenants, jobs, {t: [_images(t, r), _posts(t, r, ITEMS, "post")] for t in tenants})
            time.sleep(max(0.0, t0 + r * KILL_INTERVAL_S + KILL_AFTER_S - time.monotonic()))
            killed = _kill_one_of_each(proc, r, t0)
            kills += killed
            _submit(tenants, jobs, {t: [_posts(t, r, LATE_ITEMS, "late")] for t in tenants})
            for kill in killed:
                wait_until(partial(_restarted, proc, kill), f"{kill.service} on {kill.port} restarted", 30)
        _wait_finished(tenants, jobs)
        finals = [tenants[tenant].request("GET", f"/v1/jobs/{job_id}").json() for tenant, job_id in jobs]
        emulator = httpx.get(f"http://127.0.0.1:{ports['EMULATOR']}/_emulator/stats", timeout=10).json()
        unexpected = [u for gateways in tenants.values() for u in gateways.unexpected]
        print(f"finished {time.monotonic() - t0:.0f}s after the first submit; requests sent again to the other "
              f"gateway: {sum(g.retries for g in tenants.values())}")
        for gateways in tenants.values():
            gateways.close()

        proc.send_signal(signal.SIGINT)
        errors = proc.communicate(timeout=120)[1]
        assert proc.returncode == 0, errors
        database = asyncio.run(_database_checks(database_url))
        print("items by attempts:", database["attempts"], "; emulator:",
              {f"{key}:{endpoint}": counts.get("accepted") for key, endpoints in emulator["keys"].items()
               for endpoint, counts in endpoints.items()})
    finally:
        errors = kill_tree(proc) or errors
        print("kills (s after the first submit, service, port, pid):",
              [(round(k.at_s, 1), k.service, k.port, k.pid) for k in kills])
        print("fairway up said:", errors, sep="\n")

    total = PER_TENANT * len(TENANTS)
    assert unexpected == [], "a gateway answered a 5xx other than 503"
    assert len({job_id for _, job_id in jobs}) == len(jobs), "a retried submit made a second job"
    assert [f for f in finals if f["status"] != "DONE" or f["counts"]["DONE"] != f["items_total"]] == []
    assert database["statuses"] == {"DONE": total} and database["without_output"] == 0
    assert database["jobs"] == {tenant: ROUNDS * 3 for tenant in TENANTS}
    assert database["charged_not_once"] == [] and database["refunds"] == 0
    assert database["balances"] == {tenant: CREDITS - PER_TENANT for tenant in TENANTS}
    creates = emulator["keys"]["r8_emulated"]["replicate.create"]
    assert creates["accepted"] - creates.get("faults", 0) == REPLICATE_ITEMS, "one prediction paid for per item"
    assert emulator["totals"]["rejected"] == 0, emulator["totals"]
