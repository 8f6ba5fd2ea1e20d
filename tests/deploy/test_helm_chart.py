"""helm/check_chart.py: static checks Helm itself does not make (a `.Values` path missing from values.yaml
renders silently as empty). Rendering by Helm's engine and schema validation: tests/deploy/test_helm_render.py."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

SCRIPT = ROOT / "helm" / "check_chart.py"

_spec = importlib.util.spec_from_file_location("check_chart", SCRIPT)
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    """A copy of the real chart to break."""
    copy = tmp_path / "lgsp"
    shutil.copytree(cc.CHART_DIR, copy)
    return copy


def test_the_real_chart_passes():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "chart OK"


def test_an_unbroken_copy_passes(chart, capsys):
    assert cc.main([str(chart)]) == 0
    assert capsys.readouterr().out.strip() == "chart OK"


def _drop_last_end(chart: Path) -> None:
    hpa = chart / "templates" / "hpa.yaml"
    text = hpa.read_text()
    assert text.rstrip().endswith("{{- end }}")
    hpa.write_text(text.rstrip()[: -len("{{- end }}")])


def _write(name: str, text: str):
    return lambda chart: (chart / "templates" / name).write_text(text)


@pytest.mark.parametrize("breakage, finding", [
    (_drop_last_end, "hpa.yaml:2: unclosed block 'if'"),
    (_write("extra.yaml", "{{- end }}\n"), "extra.yaml:1: 'end' without an open block"),
    (_write("extra.yaml", "apiVersion: v1\nkind: X\na: {{ .Values.dataPlane.nope }}\n"),
     "extra.yaml:3: .Values.dataPlane.nope is not in values.yaml"),
    (_write("extra.yaml", "{{- $dp := .Values.dataPlane }}\napiVersion: v1\nkind: X\n"
                          "{{- $as := $dp.autoscaling }}\nb: {{ $as.missing }}\n"),
     "extra.yaml:5: $as.missing (.Values.dataPlane.autoscaling.missing) is not in values.yaml"),
    (_write("extra.yaml", "apiVersion: v1\nkind: X\nc: {{ include \"lgsp.undefined\" . }}\n"),
     "extra.yaml:3: include of undefined template 'lgsp.undefined'"),
    (_write("extra.yaml", "apiVersion: v1\nkind: X\na: {{ .Values.image.tag\n"), "extra.yaml:3: '{{' never closed"),
    (_write("extra.yaml", "{{- if .Values.ingress.enabled }}\napiVersion: v1\nmetadata: {}\n{{- end }}\n"),
     "extra.yaml:1: document without a top-level 'kind:'"),
], ids=["unbalanced-block", "stray-end", "unknown-values-path", "unknown-path-via-variable",
        "undefined-include", "unclosed-action", "missing-kind"])
def test_a_broken_copy_fails(chart, capsys, breakage, finding):
    breakage(chart)
    assert cc.main([str(chart)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 problem(s)" and lines[0].startswith(finding), lines  # that finding, nothing else
