"""The Kubernetes manifests start each service with `fairway run SERVICE` and probe it properly."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.cli import SERVICES

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def _documents() -> list[dict]:  # type: ignore[type-arg]
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_deployment_runs_a_known_service_with_probes() -> None:
    deployments = [d for d in _documents() if d["kind"] == "Deployment"]
    names = {d["metadata"]["name"] for d in deployments}
    assert names == set(SERVICES) - {"emulator"}, "every production service is deployed, the emulator is not"
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [deployment["metadata"]["name"]]
        probe = container["readinessProbe"]
        if deployment["metadata"]["name"] == "gateway":
            assert probe["httpGet"]["path"] == "/readyz"
        else:
            assert "grpc" in probe, "gRPC services are probed with the standard health service"


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_limits_in_the_config_map_load(tmp_path: Path) -> None:
    from services.common.limits import Limits

    config = next(d for d in _documents() if d["kind"] == "ConfigMap")
    path = tmp_path / "limits.yaml"
    path.write_text(config["data"]["limits.yaml"])
    assert Limits.load(path).replicate.create_rpm == 600
