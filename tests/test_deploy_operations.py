"""deploy/k8s for operators: disruption budgets and spread, migrations before the rollout,
predictors scaled on the backlog, and monitoring that names metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.test_deploy import (
    K8S,
    OVERLAYS,
    ROOT,
    TARGETS,
    Doc,
    build,
    container,
    env_value,
    fairway_deployments,
    named,
    namespace_of,
    of_kind,
    render,
    scratch_overlay,
    validate_manifests,
)

OPERATIONS = ROOT / "docs" / "operations.md"
# Metrics the manifests use that no service exports yet (docs/operations.md lists them, with
# the service that must add each). A name leaves this list when its service exports it.
PENDING_METRICS = {
    "fairway_scheduler_lane_items",
    "fairway_scheduler_tenant_dispatched_total",
    "fairway_scheduler_refund_failures_total",
}
ALERTS = {
    "FairwayQueueGrowing",
    "FairwayBudgetSaturated",
    "FairwayUpstream429s",
    "FairwayRedisDown",
    "FairwayCreditRefundFailures",
    "FairwayNotServing",
}
METRICS_PORTS = {
    "gateway": ("http", 8080),
    "scheduler": ("metrics", 9101),
    "ratelimiter": ("metrics", 9102),
    "predictor": ("metrics", 9103),
}


def _exported() -> set[str]:
    """Every series name services/*/metrics.py exports, as Prometheus sees it."""
    names = set()
    for path in (ROOT / "services").glob("*/metrics.py"):
        for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*\"([a-z_:]+)\"", path.read_text()):
            if kind == "Counter":
                base = name.removesuffix("_total")
                names |= {f"{base}_total", f"{base}_created"}
            elif kind == "Histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
    return names


def _anchors(markdown: str) -> set[str]:
    return {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    }


# ---- availability ----


@pytest.mark.parametrize("target", TARGETS)
def test_every_service_has_a_disruption_budget_and_spreads(target: str) -> None:
    docs = render(target)
    budgets = of_kind(docs, "PodDisruptionBudget")
    for deployment in fairway_deployments(docs):
        name = deployment["metadata"]["name"]
        if name == "emulator":
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(mine) == 1, f"{name} has one PodDisruptionBudget"
        assert "maxUnavailable" in mine[0]["spec"], f"{name}: maxUnavailable, so one replica never blocks a drain"
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in spread:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items(), name


def test_production_control_replicas_never_share_a_node() -> None:
    docs = render("prod")
    for name in ("gateway", "scheduler", "ratelimiter"):
        deployment = named(docs, "Deployment", name)
        assert deployment["spec"]["replicas"] >= 2
        by_key = {c["topologyKey"]: c for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert by_key["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"


# ---- migrations ----


@pytest.mark.parametrize("target", TARGETS)
def test_migrations_run_in_a_job_not_at_scheduler_start(target: str) -> None:
    docs = render(target)
    job = named(docs, "Job", "fairway-migrate")
    spec = job["spec"]["template"]["spec"]
    (migrate,) = spec["containers"]
    assert migrate["command"] == ["fairway", "migrate"]
    assert migrate["image"] == container(docs, "scheduler")["image"], "the release's own migrations"
    assert spec["restartPolicy"] == "Never"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    assert env_value(container(docs, "scheduler"), "FAIRWAY_SCHEDULER_MIGRATE", docs) == "false"


# ---- autoscaling ----


def _concurrency(docs: tuple[Doc, ...]) -> int:
    return int(env_value(container(docs, "predictor"), "FAIRWAY_PREDICTOR_CONCURRENCY", docs))


def test_production_scales_predictors_on_the_backlog_with_keda() -> None:
    docs = render("prod")
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "predictor"
    assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"] >= 2
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert int(trigger["metadata"]["threshold"]) == _concurrency(docs), "one predictor's slots per replica"
    query = trigger["metadata"]["query"]
    for part in (
        'state="queued"',
        'state="processing"',
        "fairway_scheduler_lane_items",
        "fairway_ratelimiter_usage_ratio",
        f'namespace="{namespace_of(docs)}"',
    ):
        assert part in query
    assert set(re.findall(r'namespace="([^"]+)"', query)) == {namespace_of(docs)}
    assert "replicas" not in named(docs, "Deployment", "predictor")["spec"], "KEDA owns the replica count"
    assert of_kind(docs, "HorizontalPodAutoscaler") == [], "KEDA makes its own HPA: never two"


def test_the_hpa_alternative_renders_and_validates(tmp_path: Path) -> None:
    prod = yaml.safe_load((K8S / "overlays" / "prod" / "kustomization.yaml").read_text())
    assert "# - ../../components/hpa" in (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    components = [c for c in prod["components"] if not c.endswith("keda")] + ["../../components/hpa"]
    overlay = scratch_overlay(tmp_path, {**prod, "components": components}, like="prod")
    docs = build(overlay)
    assert validate_manifests(docs) == []
    (hpa,) = of_kind(docs, "HorizontalPodAutoscaler")
    assert of_kind(docs, "ScaledObject") == []
    assert hpa["spec"]["scaleTargetRef"]["name"] == "predictor"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"namespace": namespace_of(docs)}
    assert int(metric["external"]["target"]["averageValue"]) == _concurrency(docs)
    assert "replicas" not in named(docs, "Deployment", "predictor")["spec"]


# ---- observability ----


def test_every_metrics_port_is_scraped() -> None:
    docs = render("prod")
    monitors = of_kind(docs, "PodMonitor")
    for name, (port_name, port) in METRICS_PORTS.items():
        labels = named(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        (monitor,) = [m for m in monitors if m["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["port"] == port_name and endpoint["path"] == "/metrics"
        c = container(docs, name)
        assert {"name": port_name, "containerPort": port} in c["ports"]
        if name != "gateway":
            assert env_value(c, f"FAIRWAY_{name.upper()}_METRICS_PORT", docs) == str(port)


def _monitoring(docs: tuple[Doc, ...]) -> tuple[Doc, Doc, list[Doc]]:
    (rules,) = of_kind(docs, "PrometheusRule")
    dashboard_map = named(docs, "ConfigMap", "fairway-dashboard")
    return rules, dashboard_map, of_kind(docs, "ScaledObject")


def test_rules_dashboard_and_scaling_use_metrics_that_exist_or_are_listed() -> None:
    rules, dashboard_map, scaled = _monitoring(render("prod"))
    text = json.dumps([rules["spec"], dashboard_map["data"], [s["spec"] for s in scaled]])
    used = set(re.findall(r"\b(fairway_[a-z0-9_]+)", text))
    recorded = {r["record"] for g in rules["spec"]["groups"] for r in g["rules"] if "record" in r}
    unknown = used - _exported() - PENDING_METRICS - recorded
    assert unknown == set(), "a metric no service exports and docs/operations.md does not list"
    operations = OPERATIONS.read_text()
    for metric in PENDING_METRICS - _exported():
        listed = re.search(rf"`{metric}[`{{]", operations)
        assert listed, f"docs/operations.md lists {metric} as still to be added"
    for record in re.findall(r"\b(fairway:[a-z_:]+)", text):
        assert record in recorded, f"{record} is recorded by the rules"


def test_alerts_cover_what_operators_asked_for() -> None:
    rules, _, _ = _monitoring(render("prod"))
    alerts = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) >= ALERTS
    anchors = _anchors(OPERATIONS.read_text())
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"], name
        runbook = alert["annotations"]["runbook"]
        assert runbook.startswith("docs/operations.md#") and runbook.split("#")[1] in anchors, name
    assert "fairway_ratelimiter_redis_up" in alerts["FairwayRedisDown"]["expr"]
    assert 'outcome="429"' in alerts["FairwayUpstream429s"]["expr"]


def test_the_dashboard_loads_in_grafana_and_shows_what_was_asked() -> None:
    _, dashboard_map, _ = _monitoring(render("prod"))
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (raw,) = dashboard_map["data"].values()
    assert len(raw) < 256 * 1024, "kubectl apply keeps a copy in an annotation of at most 256 KiB"
    dashboard = json.loads(raw)
    assert dashboard["uid"] == "fairway-overview"
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("budget use", "dispatch per tenant", "dispatch per lane", "queue depth", "latency", "errors"):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    slots = f"* {_concurrency(render('prod'))}"
    assert any(slots in t["expr"] for p in dashboard["panels"] for t in p["targets"]), "slots per predictor"


@pytest.mark.parametrize("target", OVERLAYS)
def test_dev_needs_no_operator_and_prod_has_monitoring(target: str) -> None:
    kinds = {d["kind"] for d in render(target)}
    if target == "dev":
        assert kinds.isdisjoint({"PodMonitor", "PrometheusRule", "ScaledObject"}), "dev runs on a bare cluster"
    else:
        assert {"PodMonitor", "PrometheusRule", "ScaledObject"} <= kinds
