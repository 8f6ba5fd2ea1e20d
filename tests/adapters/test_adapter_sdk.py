"""The adapter SDK: `lgsp adapters new` makes a package that installs and passes its own
tests, `lgsp adapters list` shows it, and `lgsp adapters test` (the contract test kit)
passes on healthy connections and fails clearly on broken ones."""
from __future__ import annotations

import os
import py_compile
import re
import secrets
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from helpers import free_port, lgsp_cli, start_server

from lgsp.cli import main
from lgsp.mapping.compile import load_mapping

NAME = "sdk_records"
PACKAGE = f"lgsp_adapter_{NAME}"
DIST = "lgsp-adapter-sdk-records"


def _new(*args: str):
    return CliRunner().invoke(main, ["adapters", "new", *args])


@pytest.fixture(scope="module")
def private_lgsp(tmp_path_factory) -> dict[str, str]:
    """An LGSP database of its own, so the connections made here never reach the shared one."""
    home = tmp_path_factory.mktemp("sdk-home")
    env = {"LGSP_HOME": str(home), "LGSP_DATABASE_URL": f"sqlite:///{home / 'lgsp.db'}",
           "LGSP_SECRET_KEY": secrets.token_urlsafe(32),
           "LGSP_EGRESS_ALLOW": "127.0.0.0/8,::1"}  # its simulator listens on loopback
    lgsp_cli(env, "db", "upgrade")
    return env


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("scaffold") / DIST
    result = _new(NAME, "--directory", str(target))
    assert result.exit_code == 0, result.output
    assert f"created {target}" in result.output
    return target


def test_new_refuses_bad_and_installed_names_and_existing_directories(tmp_path):
    for bad in ("Records", "9records", "land-records", "", "a" * 41):
        result = _new(bad, "--directory", str(tmp_path / "x"))
        assert result.exit_code != 0 and "is not a valid adapter name" in result.output, bad
    result = _new("population", "--directory", str(tmp_path / "x"))
    assert result.exit_code != 0 and "already installed" in result.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    result = _new("fresh", "--directory", str(tmp_path / "taken"))
    assert result.exit_code != 0 and "not an empty directory" in result.output
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]
    assert not (tmp_path / "x").exists()


def test_scaffold_is_complete_rendered_and_well_formed(scaffolded):
    files = {p.relative_to(scaffolded).as_posix() for p in scaffolded.rglob("*") if p.is_file()}
    assert files == {
        "pyproject.toml", "README.md", f"{PACKAGE}/__init__.py", f"{PACKAGE}/mapping.yaml",
        f"{PACKAGE}/simulator/__init__.py", f"{PACKAGE}/simulator/__main__.py", f"{PACKAGE}/simulator/app.py",
        "tests/conftest.py", "tests/test_adapter.py",
    }
    for rel in files:
        text = (scaffolded / rel).read_text(encoding="utf-8")
        assert not re.search(r"\{\{\w+\}\}", text), f"{rel} keeps a placeholder"
        if rel.endswith(".py"):
            py_compile.compile(str(scaffolded / rel), doraise=True)
    project = tomllib.loads((scaffolded / "pyproject.toml").read_text())
    assert project["project"]["name"] == DIST
    assert "lgsp>=0.1" in project["project"]["dependencies"]
    assert project["project"]["entry-points"]["lgsp.adapters"] == {NAME: f"{PACKAGE}:Adapter"}
    assert load_mapping(scaffolded / PACKAGE / "mapping.yaml").operations == ("record.get",)
    assert "record.get" in (scaffolded / "README.md").read_text()


def _throwaway_venv(path: Path) -> Path:
    """A venv that sees the main venv's packages (lgsp, pytest) but installs into itself.

    `--system-site-packages` alone would expose the base interpreter's site-packages, not
    the main venv's, so a .pth line adds the latter (with its own .pth files: the editable lgsp)."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)],
                   check=True, timeout=60)
    python = path / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    main_site = sysconfig.get_paths()["purelib"]
    Path(own, "_lgsp_main_venv.pth").write_text(f"import site; site.addsitedir({main_site!r})\n")
    return python


def _run(python: Path, *args: str, cwd: Path | None = None, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(python), *args], cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=180)
    if check:
        assert result.returncode == 0, f"{args}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_generated_package_installs_passes_its_tests_is_listed_and_keeps_the_contract(
        scaffolded, private_lgsp, tmp_path):
    python = _throwaway_venv(tmp_path / "venv")
    # A regular (non-editable) install: the wheel must carry the mapping file.
    _run(python, "-m", "pip", "install", "-q", "--no-deps", str(scaffolded))
    assert any(p.parent.name == PACKAGE for p in (tmp_path / "venv" / "lib").rglob("mapping.yaml"))

    # -P: the installed copy is tested, not the source tree in the working directory.
    tests = _run(python, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=scaffolded)
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    listing = _run(python, "-m", "lgsp.cli", "adapters", "list").stdout
    row = next(line.split() for line in listing.splitlines() if line.startswith(NAME + " "))
    assert row[:3] == [NAME, "0.1.0", DIST]

    port = free_port()
    sim = start_server([str(python), "-m", f"{PACKAGE}.simulator", "--port", str(port)],
                       f"http://127.0.0.1:{port}", "/_sim/faults", tmp_path / "sim.log")
    try:
        settings = f'{{"endpoint": "http://127.0.0.1:{port}", "timeout": 5, "api_key": "not-shown"}}'
        _run(python, "-m", "lgsp.cli", "connections", "set", "records", "--adapter", NAME, "--settings", settings,
             env=private_lgsp)
        kit = _run(python, "-m", "lgsp.cli", "adapters", "test", NAME, "--connection", "records", env=private_lgsp)
    finally:
        sim.stop()
    assert "0 failed, 0 skipped: the contract holds" in kit.stdout, kit.stdout
    for check in ("call", "mapping", "not found", "fault slow", "fault down", "fault malformed", "fault fault"):
        assert _status(kit.stdout, "record.get", check) == "PASS", check


def _status(table: str, subject: str, check: str) -> str | None:
    """The STATUS column of the kit's row (subject, check); columns are 2+ spaces apart."""
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line, maxsplit=3)
        if cells[:2] == [subject, check]:
            return cells[2]
    return None


def test_contract_kit_passes_on_the_population_simulator(gateway, population_sim, lgsp_env):
    result = lgsp_cli(lgsp_env, "adapters", "test", "population", "--connection", "population", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.splitlines()[0].split() == ["SUBJECT", "CHECK", "STATUS", "DETAIL"]
    from lgsp_adapters.population import SOAP_OPERATIONS, PopulationAdapter

    for op in SOAP_OPERATIONS:  # every operation, every fault mode
        for check in ("example", "call", "mapping", "fault slow", "fault down", "fault malformed", "fault fault"):
            assert _status(out, op, check) == "PASS", (op, check, out)
    for op in PopulationAdapter.not_found_examples:
        assert _status(out, op, "not found") == "PASS", (op, out)
    assert "UpstreamTimeout (upstream.timeout)" in out and "UpstreamFault (upstream.fault)" in out
    assert "0 failed" in out and "the contract holds" in out
    assert httpx.get(f"{population_sim.url}/_sim/faults").json()["mode"] == "normal"


def test_contract_kit_fails_clearly_on_a_closed_port(private_lgsp):
    settings = (f'{{"endpoint": "http://127.0.0.1:{free_port()}/dancu", "timeout": 2, '
                f'"integration_code": "LGSP-TEST", "account": "lgsp-test", "agency_code": "000.00.00.H30"}}')
    lgsp_cli(private_lgsp, "connections", "set", "population-closed", "--adapter", "population", "--settings", settings)
    result = lgsp_cli(private_lgsp, "adapters", "test", "population", "--connection", "population-closed",
                      check=False)
    assert result.returncode == 1
    assert _status(result.stdout, "citizen.get", "call") == "FAIL"
    assert "UpstreamUnavailable (upstream.unavailable): The population database could not be reached." \
        in result.stdout
    assert "the contract is broken" in result.stdout


def test_contract_kit_names_unknown_connections_and_wrong_adapters(private_lgsp):
    result = lgsp_cli(private_lgsp, "adapters", "test", "population", "--connection", "nowhere", check=False)
    assert result.returncode == 1 and "No connection 'nowhere'" in result.stderr
    settings = (f'{{"endpoint": "http://127.0.0.1:{free_port()}/dancu", "integration_code": "X", '
                f'"account": "a", "agency_code": "000.00.00.H30"}}')
    lgsp_cli(private_lgsp, "connections", "set", "population-other", "--adapter", "population", "--settings", settings)
    result = lgsp_cli(private_lgsp, "adapters", "test", "business", "--connection", "population-other", check=False)
    assert result.returncode == 1 and "uses the adapter 'population', not 'business'" in result.stderr
