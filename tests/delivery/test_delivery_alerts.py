"""The delivery alert rules are valid Prometheus rules and fire when they should (promtool's own tests)."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import ROOT

RULES = ROOT / "ops" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_delivery_alert_rules_check_and_pass_their_tests():
    check = subprocess.run(["promtool", "check", "rules", str(RULES / "delivery-alerts.yml")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(["promtool", "test", "rules", str(RULES / "delivery-alerts.test.yml")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
