"""The Helm chart in helm/lgsp, checked offline by helm/check_chart.py (no helm binary here)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "helm" / "check_chart.py"

_spec = importlib.util.spec_from_file_location("check_chart", SCRIPT)
cc = importlib.util.module_from_spec(_spec)
sys.modules["check_chart"] = cc
_spec.loader.exec_module(cc)

MINIMAL = cc.EXAMPLES["minimal"]


def objects(overrides: dict) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in cc.manifests(cc.render(overrides))}


def container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def env_of(obj: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(obj)["env"]}


def test_check_script_passes():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "chart OK" in run.stdout


def test_static_check_is_clean():
    assert cc.static_check() == []


def test_minimal_install_renders_the_two_planes_and_the_migration_job():
    objs = objects(MINIMAL)
    assert set(objs) == {
        ("Deployment", "lgsp-data"), ("Deployment", "lgsp-control"),
        ("Service", "lgsp-data"), ("Service", "lgsp-control"),
        ("Job", "lgsp-migrate"), ("PodDisruptionBudget", "lgsp-data"),
    }  # no Secret: both come from existing ones
    data, control = objs[("Deployment", "lgsp-data")], objs[("Deployment", "lgsp-control")]
    assert data["spec"]["replicas"] == 2 and control["spec"]["replicas"] == 1
    assert "--plane=data" in container(data)["args"] and "--workers=2" in container(data)["args"]
    assert "--plane=control" in container(control)["args"]
    assert "--host=0.0.0.0" in container(data)["args"]

    c = container(data)
    assert c["image"] == "lgsp/lgsp:0.1.0"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    c = container(control)
    assert "tcpSocket" in c["livenessProbe"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/.well-known/jwks.json"

    job = objs[("Job", "lgsp-migrate")]
    assert container(job)["command"] == ["lgsp", "db", "upgrade"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"

    for obj in (data, control, job):
        env = env_of(obj)
        assert env["LGSP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "lgsp-db", "key": "database-url"}
        assert env["LGSP_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "lgsp-master", "key": "secret-key"}
        assert "value" not in env["LGSP_SECRET_KEY"]
        for name in ("LGSP_PUBLIC_URL", "LGSP_TOKEN_TTL", "LGSP_CONFIG_POLL_SECONDS", "LGSP_LOG_LEVEL",
                     "LGSP_MAX_BODY_BYTES"):
            assert isinstance(env[name]["value"], str)
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = container(obj)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container(obj)["volumeMounts"]
        assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]

    # Both planes name the same issuer.
    assert env_of(data)["LGSP_PUBLIC_URL"] == env_of(control)["LGSP_PUBLIC_URL"]
    # Services select their own plane only.
    for plane in ("data", "control"):
        svc = objs[("Service", f"lgsp-{plane}")]
        assert svc["spec"]["selector"]["app.kubernetes.io/component"] == plane
        assert svc["spec"]["selector"].items() <= objs[("Deployment", f"lgsp-{plane}")]["spec"]["template"][
            "metadata"]["labels"].items()


@pytest.mark.parametrize("overrides, message", [
    ({}, "SQLite"),
    ({"database": {"url": "sqlite:////data/lgsp.db"}, "secrets": MINIMAL["secrets"]}, "SQLite"),
    ({"database": {"url": "postgresql://a@b/c", "existingSecret": "x"}, "secrets": MINIMAL["secrets"]},
     "only one of database"),
    ({"database": MINIMAL["database"]}, "master secret"),
    ({"database": MINIMAL["database"], "secrets": {"create": True}}, "secrets.secretKey"),
    ({"database": MINIMAL["database"], "secrets": {"create": True, "secretKey": "k", "existingSecret": "s"}},
     "only one of secrets"),
])
def test_unusable_configurations_fail_the_render(overrides, message):
    with pytest.raises(cc.TemplateFail, match=message):
        cc.render(overrides)


def test_chart_made_secret_is_a_hook_that_precedes_the_migration():
    objs = objects({"database": {"url": "postgresql://lgsp:pw@pg:5432/lgsp"},
                    "secrets": {"create": True, "secretKey": "dev"}})
    secret = objs[("Secret", "lgsp")]
    assert set(secret["data"]) == {"secret-key", "database-url"}
    hook = secret["metadata"]["annotations"]
    assert "pre-install" in hook["helm.sh/hook"] and "pre-upgrade" in hook["helm.sh/hook"]
    job_weight = objs[("Job", "lgsp-migrate")]["metadata"]["annotations"]["helm.sh/hook-weight"]
    assert int(hook["helm.sh/hook-weight"]) < int(job_weight)
    env = env_of(objs[("Deployment", "lgsp-data")])
    assert env["LGSP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "lgsp", "key": "database-url"}
    assert env["LGSP_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "lgsp", "key": "secret-key"}


def test_database_url_with_existing_master_secret_makes_a_secret_for_the_url_only():
    objs = objects({"database": {"url": "postgresql://lgsp:pw@pg:5432/lgsp"}, "secrets": MINIMAL["secrets"]})
    assert set(objs[("Secret", "lgsp")]["data"]) == {"database-url"}


def test_autoscaling_replaces_the_replica_count():
    objs = objects({**MINIMAL, "dataPlane": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8}}})
    hpa = objs[("HorizontalPodAutoscaler", "lgsp-data")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "lgsp-data"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert "replicas" not in objs[("Deployment", "lgsp-data")]["spec"]


def test_no_disruption_budget_on_a_single_pod():
    objs = objects({**MINIMAL, "dataPlane": {"replicaCount": 1}})
    assert ("PodDisruptionBudget", "lgsp-data") not in objs
    assert not any(kind == "PodDisruptionBudget" for kind, _ in objs)  # nor for the control plane


def test_ingress_sends_control_prefixes_to_the_control_plane():
    objs = objects({**MINIMAL, "ingress": {"enabled": True, "hosts": ["lgsp.example.gov.vn"]}})
    ing = objs[("Ingress", "lgsp")]
    rule = ing["spec"]["rules"][0]
    assert rule["host"] == "lgsp.example.gov.vn"
    routes = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert routes == {"/oauth": "lgsp-control", "/.well-known": "lgsp-control", "/admin": "lgsp-control",
                      "/console": "lgsp-control", "/": "lgsp-data"}
    # Without publicUrl the issuer follows the Ingress host.
    assert env_of(objs[("Deployment", "lgsp-data")])["LGSP_PUBLIC_URL"]["value"] == "http://lgsp.example.gov.vn"


def test_ingress_without_hosts_matches_any_host():
    objs = objects({**MINIMAL, "ingress": {"enabled": True}})
    rules = objs[("Ingress", "lgsp")]["spec"]["rules"]
    assert len(rules) == 1 and "host" not in rules[0]


def test_service_monitor_selects_the_data_service():
    objs = objects({**MINIMAL, "metrics": {"serviceMonitor": {"enabled": True}}})
    sm = objs[("ServiceMonitor", "lgsp-data")]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    svc_labels = objs[("Service", "lgsp-data")]["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()
    assert ("ServiceMonitor", "lgsp-data") not in objects(MINIMAL)


def test_values_and_options_reach_the_pods():
    objs = objects(cc.EXAMPLES["everything"])
    data = objs[("Deployment", "lgsp-data")]
    env = env_of(data)
    assert env["LGSP_MAX_BODY_BYTES"]["value"] == "10485760"  # not 1.048576e+07
    assert env["LGSP_PUBLIC_URL"]["value"] == "https://lgsp.example.gov.vn"
    assert env["LGSP_AUDIT_BATCH_MAX"]["value"] == "128"
    pod = data["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "lgsp" and pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["nodeSelector"] == {"pool": "api"}
    assert data["spec"]["template"]["metadata"]["labels"]["tier"] == "api"
    assert "checksum/secret" in data["spec"]["template"]["metadata"]["annotations"]


def test_long_release_names_stay_within_dns_label_length():
    # Helm allows release names of up to 53 characters.
    names = [o["metadata"]["name"] for o in cc.manifests(cc.render(MINIMAL, release="x" * 53))]
    assert names and all(len(n) <= 63 for n in names)


def test_go_number_printing_matches_helm():
    assert cc._go_str(80.0) == "80"
    assert cc._go_str(0.5) == "0.5"
    assert cc._go_str(1000000.0) == "1e+06"
    assert cc._go_str(10485760.0) == "1.048576e+07"


def test_the_checker_catches_broken_templates(tmp_path):
    chart = tmp_path / "lgsp"
    shutil.copytree(cc.CHART_DIR, chart)
    (chart / "templates" / "broken.yaml").write_text(
        "a: {{ .Values.dataPlane.nope }}\n"
        "{{- $dp := .Values.dataPlane }}\n"
        "b: {{ $dp.autoscaling.missing }}\n"
        "c: {{ include \"lgsp.undefined\" . }}\n"
        "{{- if .Values.ingress.enabled }}\n"
    )
    (chart / "templates" / "unclosed.yaml").write_text("a: {{ .Values.image.tag \n")
    errors = "\n".join(cc.static_check(chart))
    assert ".Values.dataPlane.nope" in errors
    assert ".Values.dataPlane.autoscaling.missing" in errors
    assert "lgsp.undefined" in errors
    assert "unclosed block" in errors
    assert "unclosed.yaml" in errors
