"""deploy/k8s renders, validates and starts each service with `fairway run SERVICE`, probed properly.

The manifests are a kustomize base (deploy/k8s/base), components that need an operator
(monitoring, keda, hpa) and two overlays (dev, prod). Each target is rendered with
`kubectl kustomize` (which has kustomize built in) and checked as Kubernetes would see it;
tests/test_deploy_*.py hold the promises about security, network, scaling and the image.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import SERVICES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("dev", "prod")
TARGETS = ("base", *OVERLAYS)
# Fairway's own Deployments in production (the emulator is a stand-in for the providers).
PRODUCTION_SERVICES = frozenset(SERVICES) - {"emulator"}
# Kinds whose schemas come with their operators, not with Kubernetes.
CUSTOM_KINDS = {
    "PodMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "ScaledObject": "keda.sh/v1alpha1",
}
# The oldest Kubernetes the manifests promise to fit (gRPC probes, PDB unhealthyPodEvictionPolicy,
# matchLabelKeys), and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29.0", None)

Doc = dict[str, Any]


def target_path(target: str) -> Path:
    return K8S / target if target == "base" else K8S / "overlays" / target


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not on PATH: install it (kustomize is built in) to render deploy/k8s")
    return found


def build(path: Path) -> tuple[Doc, ...]:
    """`kubectl kustomize PATH`, as a tuple of documents."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@functools.cache
def _render(target: str) -> tuple[Doc, ...]:
    return build(target_path(target))


def render(target: str) -> tuple[Doc, ...]:
    return _render(target)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def generated(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    """A ConfigMap or Secret of a kustomize generator: its name carries a hash suffix."""
    found = [d for d in of_kind(docs, kind) if re.fullmatch(rf"{name}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {name}-<hash>, found {len(found)}"
    return found[0]


def unhashed(name: str) -> str:
    return re.sub(r"-[a-z0-9]{10}$", "", name)


def workloads(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    """(name, pod spec) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def fairway_deployments(docs: tuple[Doc, ...]) -> list[Doc]:
    return [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] in SERVICES]


def container(docs: tuple[Doc, ...], deployment: str) -> Doc:
    containers: list[Doc] = named(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_value(c: Doc, name: str, docs: tuple[Doc, ...]) -> str:
    """The value a container sees for `name`: its own env, else the ConfigMaps it takes whole."""
    for var in c.get("env", []):
        if var["name"] == name:
            if "value" in var:
                return str(var["value"])
            ref = var["valueFrom"]["configMapKeyRef"]
            return str(named(docs, "ConfigMap", ref["name"])["data"][ref["key"]])
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            data = named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
            if name in data:
                return str(data[name])
    raise KeyError(f"{c['name']} has no {name}")


def scratch_overlay(tmp_path: Path, kustomization: Doc, like: str | None = None) -> Path:
    """An overlay beside the others in a copy of deploy/k8s (kustomize refuses absolute paths
    to a base), with the files of overlay `like` if given."""
    shutil.copytree(K8S, tmp_path / "k8s", dirs_exist_ok=True)
    overlay = tmp_path / "k8s" / "overlays" / "scratch"
    if like is None:
        overlay.mkdir()
    else:
        shutil.copytree(K8S / "overlays" / like, overlay)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def namespace_of(docs: tuple[Doc, ...]) -> str:
    spaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(spaces) == 1, f"one namespace per overlay, found {spaces}"
    return str(spaces.pop())


# ---- the promises ----


@pytest.mark.parametrize("target", TARGETS)
def test_every_deployment_runs_a_known_service_with_probes(target: str) -> None:
    docs = render(target)
    deployments = fairway_deployments(docs)
    names = {d["metadata"]["name"] for d in deployments}
    if target == "dev":
        assert names == set(SERVICES), "dev runs every service, the provider emulator included"
    else:
        assert names == PRODUCTION_SERVICES, "every production service is deployed, the emulator is not"
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        if name == "emulator":
            continue
        c = container(docs, name)
        assert c["args"] == [name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, f"{name} has no {probe}"
        if name == "gateway":
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        else:
            assert "grpc" in c["readinessProbe"], "gRPC services are probed with the standard health service"
            assert (
                c["readinessProbe"]["grpc"]["port"]
                == next(p for p in c["ports"] if p["name"] == "grpc")["containerPort"]
            )


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_renders_in_one_namespace(target: str) -> None:
    docs = render(target)
    if target == "base":
        assert all("namespace" not in d["metadata"] for d in docs), "the base leaves the namespace to overlays"
        return
    namespace = namespace_of(docs)
    assert named(docs, "Namespace", namespace)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@pytest.mark.parametrize("kustomization", _kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_each_kustomization_uses_every_manifest_beside_it(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    used = {r for r in spec.get("resources", []) if not r.startswith("..")}
    for patch in spec.get("patches", []):
        if "path" in patch:
            used.add(patch["path"])
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        for entry in generator.get("files", []) + generator.get("envs", []):
            used.add(entry.split("=", 1)[-1])
    here = kustomization.parent
    beside = {str(p.relative_to(here)) for p in here.rglob("*") if p.is_file()} - {"kustomization.yaml"}
    # Files of a nested kustomization belong to it.
    beside = {
        f
        for f in beside
        if not any(
            (here / f).is_relative_to(k.parent)
            for k in _kustomizations()
            if k.parent != here and k.parent.is_relative_to(here)
        )
    }
    assert used == beside, "a manifest beside a kustomization that it does not use is never deployed"


@pytest.mark.parametrize("target", TARGETS)
def test_limits_in_the_config_map_load(target: str, tmp_path: Path) -> None:
    from services.common.limits import Limits

    docs = render(target)
    config = generated(docs, "ConfigMap", "fairway-limits")
    path = tmp_path / "limits.yaml"
    path.write_text(config["data"]["limits.yaml"])
    assert Limits.load(path).replicate.create_rpm > 0


@pytest.mark.parametrize("target", TARGETS)
def test_a_limits_change_rolls_the_pods_that_read_it(target: str) -> None:
    """The limits ConfigMap's name carries a hash of its content, and the pods that read the
    file mount it by that name: a new limits file is a new pod template, hence a rollout."""
    docs = render(target)
    limits = generated(docs, "ConfigMap", "fairway-limits")["metadata"]["name"]
    for name in ("scheduler", "ratelimiter"):
        spec = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        path = Path(env_value(spec["containers"][0], "FAIRWAY_LIMITS", docs))
        assert volumes[mounts[str(path.parent)]]["configMap"]["name"] == limits
        assert path.name == "limits.yaml"
    config = generated(docs, "ConfigMap", "fairway-config")["metadata"]["name"]
    for deployment in fairway_deployments(docs):
        sources = deployment["spec"]["template"]["spec"]["containers"][0].get("envFrom", [])
        if deployment["metadata"]["name"] != "emulator":
            assert {"configMapRef": {"name": config}} in sources


def test_a_limits_change_changes_the_config_map_name(tmp_path: Path) -> None:
    overlay = scratch_overlay(
        tmp_path,
        {
            "resources": ["../../base"],
            "configMapGenerator": [{"name": "fairway-limits", "behavior": "replace", "files": ["limits.yaml"]}],
        },
    )
    (overlay / "limits.yaml").write_text("utilization: 0.5\n")
    before = generated(render("base"), "ConfigMap", "fairway-limits")["metadata"]["name"]
    after_docs = build(overlay)
    after = generated(after_docs, "ConfigMap", "fairway-limits")["metadata"]["name"]
    assert before != after
    volumes = named(after_docs, "Deployment", "scheduler")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "limits", "configMap": {"name": after}} in volumes


@pytest.mark.parametrize("target", OVERLAYS)
def test_grpc_clients_balance_over_the_headless_services(target: str) -> None:
    docs = render(target)
    namespace = namespace_of(docs)
    for service, port in (("scheduler", 50051), ("ratelimiter", 50052)):
        headless = named(docs, "Service", f"{service}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["selector"] == {"app.kubernetes.io/name": service}
        assert [p["port"] for p in headless["spec"]["ports"]] == [port]
        want = f"dns:///{service}-headless.{namespace}.svc.cluster.local:{port}"
        for client in ("gateway", "scheduler", "predictor"):
            if client == service:
                continue
            assert env_value(container(docs, client), f"FAIRWAY_{service.upper()}_ADDR", docs) == want


# ---- tools: schemas and lint ----


def validate_manifests(docs: tuple[Doc, ...]) -> list[str]:
    import kubernetes_validate

    problems = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata'].get('name')}"
        if doc["kind"] in CUSTOM_KINDS:
            # Their schemas ship with their operators: check the shape every one of them has.
            if doc["apiVersion"] != CUSTOM_KINDS[doc["kind"]]:
                problems.append(f"{what}: apiVersion {doc['apiVersion']}")
            if not isinstance(doc.get("spec"), dict) or not doc["metadata"].get("name"):
                problems.append(f"{what}: no name or no spec")
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version or kubernetes_validate.latest_version(), strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{what} (Kubernetes {exc.version}): {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{what}: {exc.message}")
    return problems


@pytest.mark.parametrize("target", TARGETS)
def test_manifests_pass_kubernetes_validate(target: str) -> None:
    assert validate_manifests(render(target)) == []


def test_the_validator_rejects_what_kubernetes_would() -> None:
    """A typo in a field name fails: the validation above is not vacuous."""
    deployment = dict(named(render("base"), "Deployment", "gateway"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    assert validate_manifests((deployment,)) != []
    monitor: Doc = {"apiVersion": "monitoring.coreos.com/v1beta1", "kind": "PodMonitor", "metadata": {"name": "x"}}
    assert validate_manifests((monitor,)) != []


def test_yaml_under_deploy_is_lint_clean() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    problems = []
    for path in sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml")) + [DEPLOY / ".yamllint"]:
        for problem in linter.run(path.read_text(), config, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{problem.line}:{problem.column} {problem.message}")
    assert problems == []
