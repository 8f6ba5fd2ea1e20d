"""What operators get: the Grafana dashboard and the Prometheus alert rules in ops/ are valid
(promtool), their rules behave as their unit tests say, and every metric they read is one a live
gateway exports, except the few that other parts of the LGSP add (listed in docs/operations.md)."""
from __future__ import annotations

import json
import re
import subprocess

import httpx
import pytest
import yaml
from helpers import ROOT
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = ROOT / "ops" / "grafana" / "lgsp.json"
RULES = ROOT / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "ops" / "prometheus" / "alerts.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b(lgsp_[a-z0-9_]+)\b")


@pytest.fixture(scope="module")
def promtool() -> str:
    found = subprocess.run([str(ROOT / "scripts" / "promtool")], capture_output=True, text=True, check=False)
    if found.returncode != 0:
        pytest.fail(f"promtool is needed (Debian package prometheus): {found.stderr}")
    return found.stdout.strip()


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in doc["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def pending_metrics() -> dict[str, str]:
    """The allow-list: metrics other parts of the LGSP add, as docs/operations.md lists them."""
    text = OPERATIONS.read_text()
    section = text.split("<!-- metrics-pending -->")[1].split("<!-- /metrics-pending -->")[0]
    return dict(re.findall(r"^\| `(lgsp_[a-z0-9_]+)` \| [^|]+ \| ([^|]+) \|", section, re.MULTILINE))


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name, *(family.name + s for s in ("_total", "_bucket", "_sum", "_count", "_created"))}
        names |= {s.name for s in family.samples}
    return names


def test_alert_rules_are_valid_and_pass_their_unit_tests(promtool):
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False,
                          cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_rule_unit_tests_would_catch_a_broken_rule(promtool, tmp_path):
    """The unit test is not vacuous: the same tests fail against a rule with a wrong threshold."""
    (tmp_path / "alerts.yml").write_text(RULES.read_text().replace("> 0.05", "> 0.5"))
    (tmp_path / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    unit = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], capture_output=True, text=True, check=False,
                          cwd=tmp_path)
    assert unit.returncode != 0 and "LgspErrorRatioHigh" in unit.stdout + unit.stderr


def test_every_panel_has_a_query_and_a_unique_id():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for topic in ("per service", "per client", "errors", "latency", "quota", "circuit"):
        assert topic in titles, topic


def test_dashboard_and_rules_read_metrics_the_gateway_exports(gateway):
    httpx.get(f"{gateway.url}/api/population/v1/citizens/001085012345")  # one exchange: labelled series exist
    names = exported(httpx.get(f"{gateway.url}/metrics").text)
    pending = pending_metrics()  # may be empty: every metric read is exported
    referenced = {m for expr in dashboard_exprs() + rule_exprs() for m in METRIC.findall(expr)}
    unknown = sorted(m for m in referenced - names if m not in pending)
    assert not unknown, f"the dashboard or alert rules read metrics the gateway does not export: {unknown}"
    stale = sorted(m for m in pending if m in names)
    assert not stale, f"exported now, so take them off the allow-list in docs/operations.md: {stale}"
    unused = sorted(set(pending) - referenced)
    assert not unused, f"allow-listed but read by no panel or rule: {unused}"
