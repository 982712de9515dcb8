"""Service tokens: the method table, the accepted-tokens setting, the stack's tokens."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from fairway.ratelimiter.v1 import ratelimiter_pb2
from fairway.scheduler.v1 import scheduler_pb2

from services.common.auth import ALLOWED, ENVOY, GATEWAY, PREDICTOR, SCHEDULER, AcceptedTokens, Principal, token_hash
from services.common.entry import load_settings
from services.ratelimiter.server import SERVICE_NAMES as RATELIMITER_SERVICES
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import SERVICE_NAMES as SCHEDULER_SERVICES
from services.stack.tokens import SERVES, ensure_tokens, service_env

SERVICES = [
    *scheduler_pb2.DESCRIPTOR.services_by_name.values(),
    *ratelimiter_pb2.DESCRIPTOR.services_by_name.values(),
    *rls_pb2.DESCRIPTOR.services_by_name.values(),
]


def test_every_method_served_is_in_the_table() -> None:
    served = {f"/{service.full_name}/{method.name}" for service in SERVICES for method in service.methods}
    missing = served - ALLOWED.keys()
    assert not missing, f"add these methods to ALLOWED in services/common/auth.py: {sorted(missing)}"


def test_the_table_grants_what_the_design_says() -> None:
    def who(method: str) -> frozenset[str]:
        return ALLOWED[method]

    assert who("/fairway.scheduler.v1.Scheduler/CreateTenant") == {GATEWAY}
    assert who("/fairway.scheduler.v1.Scheduler/ReportUpstreamResult") == {GATEWAY}
    for method in ("Work", "Heartbeat", "RecordUpstream", "Complete", "Fail"):
        assert who(f"/fairway.scheduler.v1.Dispatch/{method}") == {PREDICTOR}
    for method in ("Acquire", "Adjust", "Settle", "Release", "ReportUpstream"):
        assert who(f"/fairway.ratelimiter.v1.RateLimiter/{method}") == {SCHEDULER, PREDICTOR}
    assert who("/fairway.ratelimiter.v1.RateLimiter/SetTenantCaps") == {SCHEDULER}
    assert who("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit") == {ENVOY}


def test_accepted_tokens_are_parsed_and_compared_by_hash() -> None:
    old, new = token_hash("old-token"), token_hash("new-token")
    accepted = AcceptedTokens.parse(f" gateway:{old}, gateway:{new.upper()} ,predictor:{token_hash('p')}")
    assert accepted.identify("old-token") == accepted.identify("new-token") == "gateway"  # while it rotates
    assert accepted.identify("p") == "predictor"
    assert accepted.identify("") is None and accepted.identify(old) is None  # the hash is no token


@pytest.mark.parametrize(("text", "says"), [
    ("", "no caller is accepted"),
    (" , ", "no caller is accepted"),
    ("gatway:" + "0" * 64, "must be one of"),
    ("gateway:abc", "64 hex digits"),
    ("gateway", "64 hex digits"),
    (f"gateway:{token_hash('t')},predictor:{token_hash('t')}", "both gateway and predictor"),
])
def test_a_bad_accepted_tokens_setting_is_refused(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        AcceptedTokens.parse(text)


def test_a_server_without_accepted_tokens_does_not_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/x")
    monkeypatch.setenv("FAIRWAY_SERVICE_TOKEN", "t")
    monkeypatch.delenv("FAIRWAY_ACCEPTED_TOKENS", raising=False)
    assert load_settings(SchedulerConfig) is None
    assert "bad setting FAIRWAY_ACCEPTED_TOKENS" in caplog.text and "no caller is accepted" in caplog.text


def test_the_principal_is_named_explicitly() -> None:
    assert Principal.of(Principal(admin=True).metadata) == Principal(admin=True)
    assert Principal.of(Principal(admin=False, tenant="a").metadata) == Principal(admin=False, tenant="a")
    for metadata in ((), (("x-fairway-principal", ""),), (("x-fairway-principal", "tenant:"),),
                     (("x-fairway-principal", "root"),),
                     (("x-fairway-principal", "admin"), ("x-fairway-principal", "tenant:a"))):
        assert Principal.of(metadata) is None


def test_fairway_up_makes_tokens_once_readable_by_its_user_only(tmp_path: Path) -> None:
    tokens = ensure_tokens(tmp_path / "home")
    assert set(tokens) == {GATEWAY, SCHEDULER, PREDICTOR} and len(set(tokens.values())) == 3
    path = tmp_path / "home" / "service_tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_tokens(tmp_path / "home") == tokens  # a restart keeps them


def test_fairway_up_gives_each_service_its_token_and_its_callers_hashes(tmp_path: Path) -> None:
    tokens = ensure_tokens(tmp_path)
    assert SERVES["scheduler"] == SCHEDULER_SERVICES and SERVES["ratelimiter"] == RATELIMITER_SERVICES
    envs = {service: service_env(service, tokens) for service in ("gateway", "scheduler", "ratelimiter", "predictor")}
    for caller in (GATEWAY, SCHEDULER, PREDICTOR):
        assert envs[caller]["FAIRWAY_SERVICE_TOKEN"] == tokens[caller]
    assert "FAIRWAY_ACCEPTED_TOKENS" not in envs["gateway"] and "FAIRWAY_ACCEPTED_TOKENS" not in envs["predictor"]
    scheduler = AcceptedTokens.parse(envs["scheduler"]["FAIRWAY_ACCEPTED_TOKENS"])
    assert {i for i, _ in scheduler.entries} == {GATEWAY, PREDICTOR}
    assert scheduler.identify(tokens[PREDICTOR]) == PREDICTOR
    ratelimiter = AcceptedTokens.parse(envs["ratelimiter"]["FAIRWAY_ACCEPTED_TOKENS"])
    assert {i for i, _ in ratelimiter.entries} == {GATEWAY, SCHEDULER, PREDICTOR}
    assert all(token not in envs["scheduler"]["FAIRWAY_ACCEPTED_TOKENS"] for token in tokens.values())
