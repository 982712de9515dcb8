"""The console commands' parts that need no stack: where the gateway and key come from, the JSONL
reader, splitting, paging and the event stream's resume (over httpx's mock transport)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.console.api import Api, ApiFailure, Target, UsageError, resolve_target
from services.console.events import follow
from services.console.items import read_items, split

# ---- the gateway and the key ----


def test_flags_win_over_environment_and_local_stack(tmp_path: Path) -> None:
    (tmp_path / ".fairway").mkdir()
    (tmp_path / ".fairway" / "admin_key").write_text("local-admin\n")
    env = {"FAIRWAY_URL": "http://10.0.0.5:9000/", "FAIRWAY_KEY": "env-key"}
    assert resolve_target("http://127.0.0.1:1", "flag-key", env, tmp_path) == Target(
        "http://127.0.0.1:1", "flag-key", "--key")
    assert resolve_target(None, None, env, tmp_path) == Target("http://10.0.0.5:9000", "env-key", "FAIRWAY_KEY")
    local = resolve_target(None, None, {}, tmp_path)
    assert (local.url, local.key) == ("http://127.0.0.1:8080", "local-admin")


def test_local_admin_key_is_found_from_a_subdirectory_or_fairway_home(tmp_path: Path) -> None:
    (tmp_path / ".fairway").mkdir()
    (tmp_path / ".fairway" / "admin_key").write_text("parent-admin\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert resolve_target(None, None, {}, deep).key == "parent-admin"
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "admin_key").write_text("home-admin")
    env = {"FAIRWAY_HOME": str(tmp_path / "home"), "FAIRWAY_GATEWAY_PORT": "9999"}
    assert resolve_target(None, None, env, deep) == Target(
        "http://127.0.0.1:9999", "home-admin", str(tmp_path / "home" / "admin_key"))
    assert resolve_target(None, None, {"FAIRWAY_ADMIN_KEY": "from-env"}, deep).key == "from-env"


def test_a_local_admin_key_is_never_sent_to_another_host(tmp_path: Path) -> None:
    (tmp_path / ".fairway").mkdir()
    (tmp_path / ".fairway" / "admin_key").write_text("local-admin")
    with pytest.raises(UsageError, match="no API key"):
        resolve_target("https://fairway.example.com", None, {}, tmp_path)
    with pytest.raises(UsageError, match="not a gateway URL"):
        resolve_target("127.0.0.1:8080", "k", {}, tmp_path)


# ---- the JSONL file ----


def _file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_items_wrapped_or_bare_keep_their_line_numbers(tmp_path: Path) -> None:
    items = read_items(_file(
        tmp_path,
        '{"ref": "a", "input": {"prompt": "x"}}',
        "",
        '{"prompt": "bare"}',
        '{"input": "Hi", "max_output_tokens": 5}',  # an OpenAI response input, not an item
        '{"input": {"prompt": "no ref"}}',
    ))
    assert [(i.line, i.ref) for i in items] == [(1, "a"), (3, "3"), (4, "4"), (5, "5")]
    assert items[1].input == {"prompt": "bare"}
    assert items[2].input == {"input": "Hi", "max_output_tokens": 5}
    assert items[3].input == {"prompt": "no ref"}


def test_every_bad_line_is_named_with_its_reason(tmp_path: Path) -> None:
    path = _file(tmp_path, '{"prompt": "ok"}', "{oops", "[1]", '{"ref": 7, "input": {}}', '{"x": NaN}')
    with pytest.raises(UsageError) as raised:
        read_items(path)
    message = raised.value.message
    assert "4 bad lines; nothing was submitted" in message
    assert "line 2: not valid JSON" in message
    assert "line 3: expected a JSON object" in message
    assert "line 4: ref: must be a string" in message
    assert "line 5: " in message and "NaN" in message
    with pytest.raises(UsageError, match="no items"):
        read_items(_file(tmp_path, "", "  "))
    with pytest.raises(UsageError, match="No such file"):
        read_items(str(tmp_path / "missing.jsonl"))


def test_split_by_items_and_bytes(tmp_path: Path) -> None:
    items = read_items(_file(tmp_path, *(json.dumps({"prompt": "p" * 100}) for _ in range(10))))
    assert [len(part) for part in split(items, 4)] == [4, 4, 2]
    assert [len(part) for part in split(items, 100, max_bytes=3 * items[0].size)] == [3, 3, 3, 1]
    with pytest.raises(UsageError, match="line 1: the item is"):
        split(items, 100, max_bytes=10)


# ---- paging and the event stream, over a mock transport ----

Handler = Callable[[httpx.Request], httpx.Response]


def _api(handler: Handler) -> Api:
    return Api(Target("http://gateway", "k", "--key"), transport=httpx.MockTransport(handler))


async def test_pages_follow_next_to_the_end() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after", "")
        seen.append(after)
        pages = {"": (["a", "b"], "b"), "b": (["c", "d"], "d"), "d": (["e"], None)}
        ids, nxt = pages[after]
        return httpx.Response(200, json={"tenants": [{"id": i} for i in ids], "next": nxt})

    async with _api(handler) as api:
        assert [t["id"] async for t in api.pages("/v1/tenants", "tenants")] == ["a", "b", "c", "d", "e"]
    assert seen == ["", "b", "d"]


class _Cut(httpx.AsyncByteStream):
    """A body that sends `chunks`, then breaks as a dropped connection does."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset by peer")


def _event(name: str, seq: int, data: dict[str, Any]) -> bytes:
    return f"event: {name}\nid: {seq}\ndata: {json.dumps(data)}\n\n".encode()


async def test_event_stream_resumes_with_last_event_id_after_a_drop_and_an_early_end() -> None:
    job = {"id": "j", "items_total": 2, "counts": {}}
    asked: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("last-event-id"))
        if len(asked) == 1:  # two events, then the connection drops
            body = [_event("item", 5, {"id": "i1", "status": "DONE"}), b": keepalive\n\n",
                    _event("job", 6, {**job, "status": "PROCESSING"})]
            return httpx.Response(200, stream=_Cut(body), headers={"content-type": "text/event-stream"})
        if len(asked) == 2:  # a stream that ends cleanly before the job does
            return httpx.Response(200, content=_event("item", 9, {"id": "i2", "status": "DONE"}))
        return httpx.Response(200, content=_event("job", 10, {**job, "status": "DONE"}) + _event("job", 11, job))

    gaps: list[str] = []
    async with _api(handler) as api:
        events = [(name, data.get("id"), data["status"]) async for name, data in follow(api, "j", on_gap=gaps.append)]
    assert events == [("item", "i1", "DONE"), ("job", "j", "PROCESSING"), ("item", "i2", "DONE"), ("job", "j", "DONE")]
    assert asked == [None, "6", "9"]
    assert len(gaps) == 2 and "after event 6" in gaps[0]


async def test_event_stream_of_an_unknown_job_is_the_servers_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "job 'x' does not exist"}})

    async with _api(handler) as api:
        with pytest.raises(ApiFailure) as raised:
            _ = [e async for e in follow(api, "x")]
    assert raised.value.message == "job 'x' does not exist (HTTP 404)"
