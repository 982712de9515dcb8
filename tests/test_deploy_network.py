"""deploy/k8s NetworkPolicies: each pod admits exactly its callers and reaches exactly what it needs.

Policies add up, so a pod's allowance is the union of every policy selecting it; the tables
below are that union, as (peer, port): a peer is a workload of the namespace, `monitoring`
(the namespace Prometheus runs in), `dns` (kube-dns), `internet` (public addresses only) or
`any` (a rule without peers: PostgreSQL and Redis wherever they run, the gateway's clients).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy import OVERLAYS, TARGETS, Doc, of_kind, render

PRIVATE = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "fc00::/7", "fe80::/10"}
DNS = {("dns", 53)}
INGRESS = {
    "gateway": {("any", 8080)},
    "scheduler": {("gateway", 50051), ("predictor", 50051), ("monitoring", 9101)},
    "ratelimiter": {("scheduler", 50052), ("predictor", 50052), ("gateway", 50052), ("monitoring", 9102)},
    "predictor": {("monitoring", 9103)},
    "migrate": set(),
}
EGRESS = {
    # the gateway fetches Replicate's webhook secret unless it is given one
    "gateway": DNS | {("scheduler", 50051), ("ratelimiter", 50052), ("internet", 443)},
    "scheduler": DNS | {("any", 5432), ("ratelimiter", 50052)},
    "ratelimiter": DNS | {("any", 6379)},
    "predictor": DNS | {("scheduler", 50051), ("ratelimiter", 50052), ("internet", 443)},
    "migrate": DNS | {("any", 5432)},
}
# dev adds PostgreSQL, Redis and the provider emulator in the namespace.
DEV_INGRESS = {
    "postgres": {("scheduler", 5432), ("migrate", 5432)},
    "redis": {("ratelimiter", 6379)},
    "emulator": {("predictor", 8090), ("gateway", 8090)},
}
DEV_EGRESS = {
    "gateway": {("emulator", 8090)},
    "predictor": {("emulator", 8090)},
    "postgres": set(),
    "redis": set(),
    "emulator": set(),
}


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] not in ("In",):
            raise AssertionError(f"unexpected selector operator {expression['operator']}")
    return True


def _peer(peer: Doc) -> str:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        assert block["cidr"] in ("0.0.0.0/0", "::/0") and set(block.get("except", [])) <= PRIVATE
        covered = {c for c in PRIVATE if (":" in c) == (":" in block["cidr"])}
        assert set(block.get("except", [])) == covered, "internet means every public address, no private one"
        return "internet"
    namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
    if namespaces is not None:
        namespace = namespaces["matchLabels"]["kubernetes.io/metadata.name"]
        if namespace == "kube-system":
            assert pods == {"matchLabels": {"k8s-app": "kube-dns"}}
            return "dns"
        assert pods is None, "a whole namespace or nothing"
        return str(namespace)
    assert pods is not None and set(pods) == {"matchLabels"}
    return str(pods["matchLabels"]["app.kubernetes.io/name"])


def _rules(rules: list[Doc], key: str) -> set[tuple[str, Any]]:
    allowed = set()
    for rule in rules:
        peers = [_peer(p) for p in rule.get(key, [])] or ["any"]
        ports = rule.get("ports") or [{"port": "*"}]
        for port in ports:
            assert port.get("protocol", "TCP") == "TCP" or port["port"] == 53
            for peer in peers:
                allowed.add((peer, port["port"]))
    return allowed


def _allowances(docs: tuple[Doc, ...]) -> dict[str, tuple[set[tuple[str, Any]], set[tuple[str, Any]], set[str]]]:
    """Per workload (by its app.kubernetes.io/name): ingress and egress allowed, policy types."""
    policies = of_kind(docs, "NetworkPolicy")
    result = {}
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        labels = doc["spec"]["template"]["metadata"]["labels"]
        ingress: set[tuple[str, Any]] = set()
        egress: set[tuple[str, Any]] = set()
        types: set[str] = set()
        for policy in policies:
            if not _selects(policy["spec"]["podSelector"], labels):
                continue
            types |= set(policy["spec"]["policyTypes"])
            ingress |= _rules(policy["spec"].get("ingress", []), "from")
            egress |= _rules(policy["spec"].get("egress", []), "to")
        result[labels["app.kubernetes.io/name"]] = (ingress, egress, types)
    return result


def _expected(target: str) -> tuple[dict[str, set[tuple[str, Any]]], dict[str, set[tuple[str, Any]]]]:
    ingress = {k: set(v) for k, v in INGRESS.items()}
    egress = {k: set(v) for k, v in EGRESS.items()}
    if target == "dev":
        ingress |= DEV_INGRESS
        for name, extra in DEV_EGRESS.items():
            egress[name] = egress.get(name, set(DNS)) | extra
    return ingress, egress


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_admits_exactly_its_callers(target: str) -> None:
    ingress, _ = _expected(target)
    found = {name: allowed[0] for name, allowed in _allowances(render(target)).items()}
    assert found == ingress


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_reaches_exactly_what_it_needs(target: str) -> None:
    _, egress = _expected(target)
    found = {name: allowed[1] for name, allowed in _allowances(render(target)).items()}
    assert found == egress


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_isolated_both_ways(target: str) -> None:
    """Without a policy of each type selecting it, a pod would admit (or reach) everything."""
    for name, (_, _, types) in _allowances(render(target)).items():
        assert types == {"Ingress", "Egress"}, name


@pytest.mark.parametrize("target", OVERLAYS)
def test_admitted_ports_are_the_ports_the_containers_listen_on(target: str) -> None:
    docs = render(target)
    ingress, _ = _expected(target)
    for doc in of_kind(docs, "Deployment"):
        name = doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        containers = doc["spec"]["template"]["spec"]["containers"]
        listening = {p["containerPort"] for c in containers for p in c.get("ports", [])}
        assert {port for _, port in ingress[name]} <= listening, name
