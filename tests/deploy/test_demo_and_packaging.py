"""The README's demo command works, and the distribution carries every spec and data file."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, free_port


def test_demo_serves_and_its_curl_commands_return_a_minimised_citizen(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("LGSP_")}
    result = subprocess.run(
        [sys.executable, "-m", "lgsp.cli", "demo", "--check", "--port", str(free_port()),
         "--simulator-port", str(free_port()), "--business-port", str(free_port()),
         "--portal-port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    answers = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    answer = next(a for a in answers if "full_name" in a)
    assert any(a.get("enterprise_code") for a in answers)
    vital = next(a for a in answers if "match" in a)
    assert vital == {"match": False, "vital_status": "deceased", "event_date": "2024-02-10"}
    assert answer["full_name"] and answer["personal_id"]
    assert "religion" not in answer and "father" not in answer  # the demo grant does not allow them
    assert "curl -s -u demo-one-stop-shop:" in result.stdout


def _package_dirs() -> dict[str, Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = cfg["package-dir"]
    found = {}
    for name, src in roots.items():
        for init in (ROOT / src).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / src)
            found[".".join([name, *rel.parts])] = init.parent
    return found


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert set(_package_dirs()) == listed


@pytest.mark.slow
def test_wheel_contains_specs_mappings_code_lists_and_migrations(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("lgsp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in [
        "lgsp_openapi/population.v1.yaml", "lgsp_wsdl/population/population.wsdl",
        "lgsp_wsdl/population/population.xsd", "lgsp_wsdl/documents/documents.wsdl",
        "lgsp_wsdl/documents/documents.xsd", "lgsp_adapters/population/mapping.yaml",
        "lgsp/codelists/data/admin-units.json", "lgsp/storage/migrations/env.py",
        "lgsp/storage/migrations/script.py.mako", "lgsp/storage/migrations/versions/0001_initial.py",
        "lgsp_schemas/edxml/edxml.xsd", "lgsp_adapters/national_axis/mapping.yaml",
        "lgsp/py.typed", "lgsp/mapping/mapping.schema.json",
    ]:
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[lgsp.adapters]" in text and "population = lgsp_adapters.population:PopulationAdapter" in text
