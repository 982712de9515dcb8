"""`fairway tenants|submit|jobs|job|cancel|stats` as a person runs them: `python -m services.cli ...`
as a subprocess against a live stack (every service a process, the emulator 20 times faster),
checking what they print and their exit codes (docs/cli.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.embedded import free_port
from tests.e2e.stack import E2EStack

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = re.compile(r"submitted job ([0-9a-f-]{36})")
KEY = re.compile(r"api key:\s+(\S+)")


@dataclass
class Run:
    code: int
    out: str
    err: str


class Fairway:
    """The `fairway` command, pointed at the stack with FAIRWAY_URL and FAIRWAY_KEY (the admin's
    unless a key is given); nothing else of this machine's environment reaches it."""

    def __init__(self, stack: E2EStack, home: Path) -> None:
        self.stack = stack
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRWAY_")}
        self.env.update(FAIRWAY_URL=stack.gateway_url, FAIRWAY_HOME=str(home), PYTHONUNBUFFERED="1")

    def __call__(self, *args: str, key: str | None = None, **env: str) -> Run:
        """Run it with `key` (None: the admin's; "": no FAIRWAY_KEY at all) and `env` over the rest."""
        key = self.stack.admin_key if key is None else key
        proc = subprocess.run(
            [sys.executable, "-m", "services.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**self.env, **({"FAIRWAY_KEY": key} if key else {}), **env},
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def tenant(self, tenant_id: str, *flags: str) -> str:
        """Create a tenant; its key."""
        run = self("tenants", "create", tenant_id, *flags)
        assert run.code == 0, run.err
        found = KEY.search(run.out)
        assert found, run.out
        return found[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, postgres_dsn: str, redis_url: str) -> Iterator[E2EStack]:
    from tests.conftest import fresh_database

    database_url = asyncio.run(fresh_database(postgres_dsn))
    with E2EStack(tmp_path_factory.mktemp("cli"), database_url, redis_url, time_scale=20.0) as running:
        yield running


@pytest.fixture(scope="module")
def fairway(stack: E2EStack, tmp_path_factory: pytest.TempPathFactory) -> Fairway:
    return Fairway(stack, tmp_path_factory.mktemp("no-local-stack"))


def _jsonl(path: Path, lines: Sequence[object]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _chat(text: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 16, **extra}


def test_tenants_create_show_list_credits(fairway: Fairway) -> None:
    created = fairway("tenants", "create", "cli-store", "--credits", "100", "--max-concurrency", "4", "--weight", "2")
    assert created.code == 0, created.err
    assert "created tenant cli-store" in created.out and "shown only this once" in created.out
    assert KEY.search(created.out)
    shown = json.loads(fairway("tenants", "show", "cli-store", "--json").out)
    assert (shown["credits"], shown["max_concurrency"], shown["weight"]) == (100, 4, 2.0)
    topped = fairway("tenants", "credits", "cli-store", "50")
    assert topped.code == 0 and "cli-store now has 150" in topped.out
    listed = fairway("tenants", "list")
    assert listed.code == 0 and re.search(r"cli-store\s.*\s150\s", listed.out), listed.out
    again = fairway("tenants", "create", "cli-store")
    assert again.code == 3 and "already exists" in again.err and "HTTP 409" in again.err


def test_submit_watch_runs_to_done_and_exits_0(fairway: Fairway, tmp_path: Path) -> None:
    key = fairway.tenant("cli-watch")
    lines = [{"ref": f"img-{i}", "input": {"prompt": f"photo {i}"}} for i in range(6)] + [{"prompt": "bare"}]
    run = fairway("submit", _jsonl(tmp_path / "ok.jsonl", lines), "--provider", "replicate",
                  "--model", "google/nano-banana", "--watch", key=key)
    assert run.code == 0, run.out + run.err
    job_id = JOB_ID.search(run.out)
    assert job_id, run.out
    assert f"job {job_id[1]} DONE: 7 done, 0 failed, 0 canceled in " in run.out
    assert "items/s" in run.out

    items = [json.loads(line) for line in fairway("job", job_id[1], "--items", "--json", key=key).out.splitlines()]
    assert sorted(i["ref"] for i in items) == sorted([f"img-{i}" for i in range(6)] + ["7"])  # a bare input: its line
    assert all(i["status"] == "DONE" and i["output"] for i in items)
    shown = fairway("job", job_id[1], key=key)
    assert shown.code == 0 and "DONE" in shown.out and "7 done" in shown.out
    listed = fairway("jobs", "--status", "done", key=key)
    assert listed.code == 0 and job_id[1] in listed.out


def test_failed_items_exit_1_and_are_named(fairway: Fairway, tmp_path: Path) -> None:
    key = fairway.tenant("cli-fail")
    # n=0 passes the gateway (it checks messages and max_tokens) and OpenAI refuses it with a 400.
    lines = [_chat(f"post {i}") for i in range(3)] + [{"ref": "refused", "input": _chat("x", n=0)}]
    run = fairway("submit", _jsonl(tmp_path / "fail.jsonl", lines), "--provider", "openai", "--model", "gpt-4o-mini",
                  "--watch", key=key)
    assert run.code == 1, run.out + run.err
    assert "FAILED: 3 done, 1 failed, 0 canceled" in run.out
    assert re.search(r"failed refused: .*400", run.out), run.out


def test_a_bad_line_is_named_and_nothing_is_submitted(fairway: Fairway, tmp_path: Path) -> None:
    key = fairway.tenant("cli-bad")
    lines = [_chat("fine"), _chat("fine too"), '{"messages": [}', "[1, 2]"]
    run = fairway("submit", _jsonl(tmp_path / "bad.jsonl", lines), "--provider", "openai", "--model", "gpt-4o-mini",
                  key=key)
    assert run.code == 2
    assert "2 bad lines; nothing was submitted" in run.err
    assert "line 3: not valid JSON" in run.err and "line 4: expected a JSON object" in run.err
    assert json.loads(fairway("jobs", "--json", key=key).out) == []
    # What only the gateway checks is reported by line too, and nothing is queued either.
    run = fairway("submit", _jsonl(tmp_path / "empty.jsonl", [_chat("a"), {"messages": []}]), "--provider", "openai",
                  "--model", "gpt-4o-mini", key=key)
    assert run.code == 3 and "line 2: items[1].input.messages" in run.err and "HTTP 422" in run.err
    assert json.loads(fairway("jobs", "--json", key=key).out) == []


def test_a_file_bigger_than_the_queue_is_refused_or_split(fairway: Fairway, tmp_path: Path) -> None:
    key = fairway.tenant("cli-small", "--max-queued", "3")
    path = _jsonl(tmp_path / "five.jsonl", [_chat(str(i)) for i in range(5)])
    refused = fairway("submit", path, "--provider", "openai", "--model", "gpt-4o-mini", key=key)
    assert refused.code == 2 and "at most 3 items" in refused.err and "--split" in refused.err
    assert json.loads(fairway("jobs", "--json", key=key).out) == []
    split = fairway("submit", path, "--provider", "openai", "--model", "gpt-4o-mini", "--split", "--watch", key=key)
    assert split.code == 0, split.out + split.err
    assert len(JOB_ID.findall(split.out)) == 2
    assert "2 jobs: 5 done, 0 failed, 0 canceled" in split.out


def test_cancel_then_watch_exits_5(fairway: Fairway, tmp_path: Path) -> None:
    key = fairway.tenant("cli-cancel", "--max-concurrency", "1")
    path = _jsonl(tmp_path / "slow.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    run = fairway("submit", path, "--provider", "replicate", "--model", "google/nano-banana", key=key)
    assert run.code == 0, run.err
    job_id = JOB_ID.search(run.out)
    assert job_id and f"fairway job {job_id[1]} --watch" in run.out
    canceled = fairway("cancel", job_id[1], key=key)
    assert canceled.code == 0 and f"canceled job {job_id[1]}" in canceled.out
    watched = fairway("job", job_id[1], "--watch", key=key)
    assert watched.code == 5, watched.out + watched.err
    assert "CANCELED" in watched.out


def test_stats_shows_budgets_lanes_and_tenants(fairway: Fairway) -> None:
    run = fairway("stats")
    assert run.code == 0, run.err
    for heading in ("Upstream budgets", "replicate:create", "openai:gpt-4o-mini", "Lanes", "Tenants"):
        assert heading in run.out
    document = json.loads(fairway("stats", "--json").out)
    assert {"ratelimiter", "queue"} <= set(document) and document["ratelimiter"]["buckets"]


def test_server_errors_print_the_servers_message_and_status(fairway: Fairway) -> None:
    key = fairway.tenant("cli-errors")
    bad_key = fairway("jobs", key="fw_not_a_key")
    assert bad_key.code == 3
    assert "The API key is not valid" in bad_key.err and "HTTP 401" in bad_key.err and "FAIRWAY_KEY" in bad_key.err
    forbidden = fairway("stats", key=key)
    assert forbidden.code == 3 and "admin key" in forbidden.err and "HTTP 403" in forbidden.err
    missing = fairway("job", str(uuid.uuid4()), key=key)
    assert missing.code == 3 and "does not exist" in missing.err and "HTTP 404" in missing.err
    assert fairway("tenants", "show", "nobody-here").code == 3


def test_unreachable_gateway_is_one_line_and_exit_4(fairway: Fairway) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = fairway("jobs", FAIRWAY_URL=url)
    assert run.code == 4
    assert run.out == "" and run.err.count("\n") == 1, run.err
    assert url in run.err and "connection refused" in run.err and "make run" in run.err


def test_a_local_stacks_admin_key_is_found_without_a_key(fairway: Fairway, tmp_path: Path) -> None:
    (tmp_path / "admin_key").write_text(fairway.stack.admin_key + "\n")
    found = fairway("tenants", "list", key="", FAIRWAY_HOME=str(tmp_path))
    assert found.code == 0, found.err
    none = fairway("tenants", "list", key="", FAIRWAY_HOME=str(tmp_path / "absent"))
    assert none.code == 2 and "no API key" in none.err


def test_rotate_key_makes_the_old_key_fail(fairway: Fairway) -> None:
    old = fairway.tenant("cli-rotate")
    assert fairway("jobs", key=old).code == 0  # the key is now in the gateway's cache
    rotated = fairway("tenants", "rotate-key", "cli-rotate")
    assert rotated.code == 0, rotated.err
    found = KEY.search(rotated.out)
    assert found and found[1] != old
    refused = fairway("jobs", key=old)
    assert refused.code == 3 and "HTTP 401" in refused.err
    assert fairway("jobs", key=found[1]).code == 0
    unknown = fairway("tenants", "rotate-key", "cli-nobody")
    assert unknown.code == 3 and "HTTP 404" in unknown.err
