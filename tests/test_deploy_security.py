"""deploy/k8s: every pod runs locked down, gets only the Secrets it needs, and shuts down in time."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from services.emulator.config import EmulatorSettings
from services.gateway.config import Settings as GatewaySettings
from services.predictor.config import PredictorConfig
from services.ratelimiter.config import RateLimiterConfig
from services.scheduler.config import SchedulerConfig
from tests.test_deploy import (
    OVERLAYS,
    ROOT,
    TARGETS,
    Doc,
    container,
    env_value,
    fairway_deployments,
    generated,
    named,
    of_kind,
    render,
    unhashed,
    workloads,
)

UID = 10001  # deploy/Dockerfile's USER
# Each workload's Secrets, and the keys it reads from each: nothing else may reach its pod.
SECRETS = {
    "gateway": {
        "fairway-gateway": {
            "FAIRWAY_ADMIN_KEY",
            "FAIRWAY_SERVICE_TOKEN",
            "REPLICATE_WEBHOOK_SECRET",
            "REPLICATE_API_TOKEN",
        }
    },
    "scheduler": {"fairway-scheduler": {"DATABASE_URL", "FAIRWAY_SERVICE_TOKEN"}},
    "ratelimiter": {"fairway-ratelimiter": {"REDIS_URL"}},
    "predictor": {"fairway-predictor": {"FAIRWAY_SERVICE_TOKEN", "OPENAI_API_KEY", "REPLICATE_API_TOKEN"}},
    "fairway-migrate": {"fairway-scheduler": {"DATABASE_URL"}},
    # dev only
    "emulator": {},
    "postgres": {"postgres": {"POSTGRES_PASSWORD"}},
    "redis": {},
}
# Who calls whom over gRPC (the NetworkPolicies admit the same callers): each server accepts
# the token hashes of exactly these identities.
CALLERS = {"scheduler": {"gateway", "predictor"}, "ratelimiter": {"scheduler", "predictor", "gateway"}}
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "scheduler": SchedulerConfig,
    "ratelimiter": RateLimiterConfig,
    "predictor": PredictorConfig,
    "emulator": EmulatorSettings,
}
# Settings the manifests set that the services do not read yet: being added (docs/operations.md,
# "What the services must add"). Until then they are ignored (every settings class ignores extras).
PENDING_SETTINGS = {"FAIRWAY_SERVICE_TOKEN", "FAIRWAY_ACCEPTED_TOKENS"}
# Read outside the settings classes: services/common/logging.py.
COMMON_SETTINGS = {"FAIRWAY_LOG_LEVEL"}


def _containers(spec: Doc) -> list[Doc]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_non_root_read_only_and_without_capabilities(target: str) -> None:
    for name, spec in workloads(render(target)):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, f"{name} mounts an API token it never uses"
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, name
        for c in _containers(spec):
            sc = c.get("securityContext", {})
            what = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, what
            uid = sc.get("runAsUser", pod.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{what}: a fixed non-root uid"
            if c["image"].split("/")[-1].startswith("fairway"):
                assert uid == UID, f"{what}: the image's own user"
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("privileged") is not True, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("capabilities", {}).get("add"), what
            assert sc.get("seccompProfile", pod.get("seccompProfile")) == {"type": "RuntimeDefault"}, what


@pytest.mark.parametrize("target", TARGETS)
def test_fairway_pods_have_a_writable_tmp_and_nothing_else_writable(target: str) -> None:
    for name, spec in workloads(render(target)):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in _containers(spec):
            if not c["image"].split("/")[-1].startswith("fairway"):
                continue
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]["name"]], f"{name}: /tmp is an emptyDir"
            for path, mount in mounts.items():
                if path != "/tmp":
                    assert mount.get("readOnly") is True, f"{name}: {path} is mounted read-only"


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_requests_resources_and_bounds_memory(target: str) -> None:
    for name, spec in workloads(render(target)):
        for c in _containers(spec):
            resources = c.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
            assert "memory" in resources.get("limits", {}), name


def _secret_refs(spec: Doc) -> dict[str, set[str]]:
    """Every Secret a pod spec can read, with the keys it reads ('*': the whole Secret)."""
    refs: dict[str, set[str]] = {}
    for c in _containers(spec):
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.setdefault(unhashed(ref["name"]), set()).add(ref["key"])
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                refs.setdefault(unhashed(source["secretRef"]["name"]), set()).add("*")
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            refs.setdefault(unhashed(volume["secret"]["secretName"]), set()).add("*")
        for projected in volume.get("projected", {}).get("sources", []):
            if "secret" in projected:
                refs.setdefault(unhashed(projected["secret"]["name"]), set()).add("*")
    for pull in spec.get("imagePullSecrets", []):
        refs.setdefault(unhashed(pull["name"]), set()).add("*")
    return refs


@pytest.mark.parametrize("target", TARGETS)
def test_no_pod_references_a_secret_it_does_not_need(target: str) -> None:
    docs = render(target)
    seen = set()
    for name, spec in workloads(docs):
        assert _secret_refs(spec) == SECRETS[name], f"{name} reads exactly its own Secret's keys"
        seen.add(name)
    assert {"gateway", "scheduler", "ratelimiter", "predictor", "fairway-migrate"} <= seen
    # The Secrets an overlay generates (dev) hold nothing their readers do not use.
    for secret in of_kind(docs, "Secret"):
        wanted = set().union(*(keys.get(unhashed(secret["metadata"]["name"]), set()) for keys in SECRETS.values()))
        assert set(secret.get("data", {})) <= wanted, secret["metadata"]["name"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_each_grpc_server_accepts_exactly_its_callers_tokens(target: str) -> None:
    docs = render(target)
    accepted = generated(docs, "ConfigMap", "fairway-accepted-tokens")
    for server, callers in CALLERS.items():
        value = env_value(container(docs, server), "FAIRWAY_ACCEPTED_TOKENS", docs)
        assert value == accepted["data"][server]
        pairs = dict(entry.split(":", 1) for entry in value.split(","))
        assert set(pairs) == callers, f"{server} accepts {sorted(callers)}"
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in pairs.values()), "sha256 hex digests"
        for caller in callers:
            c = container(docs, caller)
            assert any(v["name"] == "FAIRWAY_SERVICE_TOKEN" for v in c["env"]), f"{caller} sends a token"
            if of_kind(docs, "Secret"):  # dev generates its Secrets: the hashes are those of its tokens
                secret = generated(docs, "Secret", f"fairway-{caller}")
                token = base64.b64decode(secret["data"]["FAIRWAY_SERVICE_TOKEN"])
                assert pairs[caller] == hashlib.sha256(token).hexdigest(), f"{server} accepts {caller}'s dev token"


def _reads(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for field_name, field in settings.model_fields.items():
        alias: Any = field.validation_alias
        if isinstance(alias, str):
            names.add(alias)
        elif isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_every_setting_the_manifests_set_is_one_the_service_reads(target: str) -> None:
    """A misspelt variable would be ignored without a word (the settings ignore extras)."""
    docs = render(target)
    shared = generated(docs, "ConfigMap", "fairway-config")["data"]
    every_read = set().union(*(_reads(s) for s in SETTINGS.values()))
    assert set(shared) <= every_read | COMMON_SETTINGS, "every shared setting is read by some service"
    for deployment in fairway_deployments(docs):
        name = deployment["metadata"]["name"]
        c = container(docs, name)
        for var in c.get("env", []):
            if var["name"].startswith(("FAIRWAY_", "DATABASE_", "REDIS_", "OPENAI_", "REPLICATE_")):
                assert var["name"] in _reads(SETTINGS[name]) | PENDING_SETTINGS | COMMON_SETTINGS, (
                    f"{name} does not read {var['name']}"
                )
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert all(f"`{setting}`" in operations for setting in PENDING_SETTINGS)


def _prestop_sleep(c: Doc) -> float:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return float(command[1])


@pytest.mark.parametrize("target", TARGETS)
def test_each_pod_is_given_the_time_its_drain_takes(target: str) -> None:
    """SIGTERM comes after the preStop sleep (endpoints leave the load balancers first); the
    pod is killed at terminationGracePeriodSeconds, which must cover the sleep, the service's
    drain and what follows it."""
    from services.gateway.main import GRACEFUL_SHUTDOWN_S

    docs = render(target)
    drains = {
        "gateway": float(GRACEFUL_SHUTDOWN_S),
        "scheduler": float(env_value(container(docs, "scheduler"), "FAIRWAY_SCHEDULER_GRACE", docs)),
        "ratelimiter": float(env_value(container(docs, "ratelimiter"), "FAIRWAY_RATELIMITER_GRACE_S", docs)),
        # then items not finished are handed back (Fail, 5 s timeout) and background work ends (5 s)
        "predictor": float(env_value(container(docs, "predictor"), "FAIRWAY_PREDICTOR_GRACE", docs)) + 10,
    }
    for name, drain in drains.items():
        spec = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        sleep = _prestop_sleep(spec["containers"][0])
        assert 0 < sleep <= 10, f"{name}: a short preStop sleep"
        assert spec["terminationGracePeriodSeconds"] > sleep + drain, f"{name} is killed before it has drained"


@pytest.mark.parametrize("target", TARGETS)
def test_the_predictor_drains_longer_than_an_upstream_call_takes(target: str) -> None:
    docs = render(target)
    c = container(docs, "predictor")
    upstream = float(env_value(c, "FAIRWAY_UPSTREAM_TIMEOUT", docs))
    assert upstream >= PredictorConfig.model_fields["request_timeout_seconds"].default
    grace = float(env_value(c, "FAIRWAY_PREDICTOR_GRACE", docs))
    assert grace > upstream, "a paid call in flight at SIGTERM finishes"
    assert named(docs, "Deployment", "predictor")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 150
