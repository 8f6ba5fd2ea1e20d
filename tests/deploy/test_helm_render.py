"""The Helm chart rendered by Helm's own template engine (helm-python-sdk embeds Helm v4 as a
library: no helm binary, no cluster), and every rendered manifest validated against the
Kubernetes JSON schemas of a current release (kubernetes-validate, strict: unknown fields fail).

Rendered for the minimal values an installation needs and for helm/ci/production-values.yaml
(several replicas, HPA, Ingress with TLS, ServiceMonitor, existing Secrets). helm/check_chart.py
stays beside this: it finds `.Values` paths that values.yaml does not define, which Helm renders
silently as empty.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import helm_python.chart as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.errors import HelmRenderError, HelmValuesError
from helpers import ROOT
from kubernetes_validate import utils as kv_utils

CHART = ROOT / "helm" / "lgsp"
PRODUCTION = yaml.safe_load((ROOT / "helm" / "ci" / "production-values.yaml").read_text())
MINIMAL = {"database": {"url": "postgresql://lgsp:pw@postgres:5432/lgsp"},
           "secrets": {"create": True, "secretKey": "k" * 48}}
# Custom resources with no schema in kubernetes-validate: checked field by field below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def render(values: dict, chart: Path = CHART) -> list[dict]:
    out = helm.Chart.load(str(chart)).render(values, name="lgsp", namespace="lgsp", is_install=True)
    return [doc for path, text in sorted(out.items()) if path.endswith((".yaml", ".yml"))
            for doc in yaml.safe_load_all(text) if doc]


def schema_findings(docs: list[dict]) -> list[str]:
    version = kv_utils.latest_version()
    findings = []
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(map(str, exc.path))
            findings.append(f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    return findings


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_the_chart_refuses_to_render_without_a_database():
    with pytest.raises(HelmRenderError) as caught:
        render({})
    assert "set database.url" in str(caught.value) and "SQLite" in str(caught.value)


@pytest.mark.parametrize("values, kinds", [
    (MINIMAL, {"Deployment": 2, "Service": 2, "Job": 1, "Secret": 1, "PodDisruptionBudget": 1}),
    (PRODUCTION, {"Deployment": 2, "Service": 2, "Job": 1, "PodDisruptionBudget": 1, "HorizontalPodAutoscaler": 1,
                  "Ingress": 1, "ServiceMonitor": 1}),
], ids=["minimal", "production"])
def test_every_rendered_manifest_matches_the_kubernetes_schemas(values, kinds):
    docs = render(values)
    assert {k: len(v) for k, v in by_kind(docs).items()} == kinds
    assert schema_findings(docs) == []


def test_helm_lint_strict_has_no_warnings():
    report = helm.lint(str(CHART), PRODUCTION, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_the_production_render_keeps_its_promises():
    kinds = by_kind(render(PRODUCTION))
    data = next(d for d in kinds["Deployment"] if d["metadata"]["name"].endswith("-data"))
    assert "replicas" not in data["spec"]  # the HPA owns the replica count
    hpa = kinds["HorizontalPodAutoscaler"][0]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    pod = data["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsUser"] == 10001 and container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LGSP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "lgsp-db", "key": "uri"}
    assert env["LGSP_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "lgsp-master"
    assert "Secret" not in kinds  # existing Secrets: the chart makes none
    ingress = kinds["Ingress"][0]["spec"]
    assert ingress["tls"][0]["secretName"] == "lgsp-tls"
    monitor = kinds["ServiceMonitor"][0]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = next(d for d in kinds["Service"] if d["metadata"]["name"].endswith("-data"))
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names  # scrapes a port the Service has
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_schema_validation_catches_a_broken_manifest(tmp_path):
    copy = tmp_path / "lgsp"
    shutil.copytree(CHART, copy)
    template = copy / "templates" / "service-data.yaml"
    template.write_text(template.read_text().replace("spec:\n", "spec:\n  replica: 3\n", 1))
    findings = schema_findings(render(MINIMAL, copy))
    assert len(findings) == 1 and "replica" in findings[0], findings


@pytest.mark.parametrize("values, where", [
    ({**MINIMAL, "dataPlane": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
    ({**MINIMAL, "dataPlane": {"replicaCount": "three"}}, "/dataPlane/replicaCount"),
    ({**MINIMAL, "publicUrl": "https://lgsp.example.gov.vn/"}, "/publicUrl"),
], ids=["misspelt-key", "wrong-type", "trailing-slash"])
def test_values_outside_the_schema_are_refused(values, where):
    """values.schema.json: Helm refuses a misspelt or mistyped value instead of ignoring it."""
    with pytest.raises(HelmValuesError) as caught:
        render(values)
    assert where in str(caught.value)
