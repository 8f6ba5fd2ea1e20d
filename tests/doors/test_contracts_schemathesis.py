"""schemathesis, a tool nobody on the project wrote, over every OpenAPI document the
gateway serves: with and without credentials, all checks, a fixed seed, 0 failures.

The gateway is the shared test gateway (real HTTP on loopback) with the simulators
behind it. Writing operations of the admin API are pinned to throw-away objects
(a scratch connection, service, client and grant) so that a run never rewires the
services or disables the clients other tests use, and running it again changes
nothing that matters.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from helpers import TESTS, get_token, wait_for_config

# Fixed in CI; a deeper sweep: LGSP_ST_SEED=<any> LGSP_ST_EXAMPLES=100 pytest tests/doors/test_contracts_schemathesis.py
SEED = int(os.environ.get("LGSP_ST_SEED", "20251107"))
MAX_EXAMPLES = int(os.environ.get("LGSP_ST_EXAMPLES", "10"))
PURPOSE = "administrative-procedure"
OWNER = "000.00.12.H30"
# The answers a request that fits the document may get besides 2xx: the token's client may
# lack a grant (403), the record may not exist (404), the object may exist (409), and a
# change the document cannot express may be refused (422 admin.invalid, record.invalid).
ACCEPTED = ["2xx", "401", "403", "404", "409", "422", "502", "503", "504"]


def _fields_of(service: dict) -> list[str]:
    """Every top-level field of the service's answer (free-form answers: a few likely names)."""
    from lgsp.pipeline import grant_fields

    shape = grant_fields.service_shape(service["name"], service["connection"], service["operation"], {})
    if shape is None:
        return ["name", "version", "lists", "province", "commune", "legacy", "entries", "source"]
    return sorted(p for p in shape.paths if "." not in p)


@pytest.fixture(scope="module")
def st_world(business_gateway):
    """A client granted every shared service, an auditor, an admin, and the scratch objects."""
    gw = business_gateway
    admin = gw.extra["admin"]
    admin.set_connection("datastore", "datastore", {})
    from lgsp import specs

    run = uuid.uuid4().hex[:6]
    ids = {"client": f"st-client-{run}", "auditor": f"st-auditor-{run}", "admin": f"st-admin-{run}"}
    secrets = {
        "client": admin.create_client(ids["client"], "schemathesis client", OWNER),
        "auditor": admin.create_client(ids["auditor"], "schemathesis auditor", roles=["auditor"]),
        "admin": admin.create_client(ids["admin"], "schemathesis admin", roles=["admin", "integrator"]),
    }
    shared = {name for api in specs.shared_apis() for name in api.services}
    for service in admin.list_services():
        if service["name"] in shared:
            admin.add_grant(ids["client"], service["name"], _fields_of(service), [PURPOSE])
    scratch_client = f"st-scratch-{run}"
    admin.create_client(scratch_client, "schemathesis scratch client")
    admin.set_connection(f"st-scratch-{run}", "codelists", {})
    scratch_grant = admin.add_grant(scratch_client, "codelists.list", ["lists"], [PURPOSE])
    wait_for_config(gw.url, gw.extra["engine"])
    tokens = {role: get_token(gw, ids[role], secrets[role]) for role in ids}
    return {"gw": gw, "tokens": tokens, "run": run, "scratch_client": scratch_client,
            "scratch_grant": scratch_grant, "scratch_connection": f"st-scratch-{run}",
            "scratch_service": f"st.scratch.s{run}"}


def served_documents(gw) -> dict[str, tuple[str, str]]:
    """name → (URL of the served document, role whose token it takes)."""
    from lgsp import specs

    docs = {api.name: (f"{gw.url}{api.base_path}/openapi.json", "client") for api in specs.shared_apis()}
    for path in specs.control_apis():
        name = path.name.split(".")[0]
        docs[name] = (f"{gw.url}/{name}/v1/openapi.json", "auditor" if name == "audit" else "admin")
    return docs


# Operations whose parameters carry rules a JSON Schema cannot state, answered 400 with
# their own code: personal IDs (a province code, a birth year not in the future), calendar
# dates (1985-02-30 fits the pattern), opaque cursors (only those the API gave out),
# parameters of a service called by name (checked against its adapter's schema), the
# persons of a list (duplicates), and record field names XML cannot carry (OpenAPI 3.0 has no
# propertyNames).
MEANING_CHECKED = ["population.citizen.get", "population.citizen.verify", "population.household.get",
                   "population.household_head.verify", "population.relatives.verify",
                   "population.marital_status.verify", "population.vital_status.verify",
                   "population.bulk_verification.submit", "datastore.records.query", "datastore.records.publish",
                   "services.call", "lgsp.audit.api.search_records",
                   "lgsp.tls.admin_api.put_binding",  # a certificate, distinguished name or CIDR that does not parse
                   # dossiers: real dates in order, a known procedure code, a callback the egress policy allows
                   "portal.dossier.sync", "portal.dossier.progress",
                   # an edXML package: well-formed, valid, signed by a trusted certificate, from the caller's agency
                   "documents.send"]


def _config(world: dict, path: Path, admin: bool) -> Path:
    """schemathesis.toml: what 'accepted' means, and the admin API's writes pinned to scratch objects."""
    text = f"""
[checks.positive_data_acceptance]
expected-statuses = {json.dumps(ACCEPTED)}

[[operations]]
include-operation-id = {json.dumps(MEANING_CHECKED)}
checks.positive_data_acceptance.expected-statuses = {json.dumps(["400", *ACCEPTED])}
"""
    if admin:
        text += f"""
[[operations]]
include-path = "/connections/{{name}}"
parameters = {{ "path.name" = "{world['scratch_connection']}" }}

[[operations]]
include-path = "/services/{{name}}"
parameters = {{ "path.name" = "{world['scratch_service']}" }}

[[operations]]
include-path = "/clients/{{client_id}}"
parameters = {{ "path.client_id" = "{world['scratch_client']}" }}

[[operations]]
include-path = "/clients/{{client_id}}/binding"
parameters = {{ "path.client_id" = "{world['scratch_client']}" }}

[[operations]]
include-path = "/grants/{{grant_id}}"
parameters = {{ "path.grant_id" = {world['scratch_grant']} }}

[[operations]]
include-path = "/agencies/{{code}}"
parameters = {{ "path.code" = "000.00.99.H99" }}

[[operations]]
include-path = "/agencies-sync"
parameters = {{ "query.connection" = "{world['scratch_connection']}" }}
"""
    path.write_text(text)
    return path


def run_schemathesis(url: str, config: Path, token: str | None, report: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TESTS / "st_cli.py"), "--config-file", str(config), "run", url,
           "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
           "--no-shrink", "--generation-database", "none", "--workers", "2", "--request-timeout", "10",
           "--phases", "examples,coverage,fuzzing", "--no-color", "--max-redirects", "0",
           "--report", "ndjson", "--report-ndjson-path", str(report)]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}", "-H", f"X-Purpose: {PURPOSE}"]
    # Run in the report's directory: schemathesis keeps a cache in its working directory.
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300 * max(1, MAX_EXAMPLES // 10),
                          cwd=report.parent,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""})


@pytest.mark.parametrize("credentials", ["token", "anonymous"])
def test_every_served_document_keeps_its_contract(st_world, tmp_path, credentials):
    gw = st_world["gw"]
    failed, ran = {}, {}
    for name, (url, role) in served_documents(gw).items():
        config = _config(st_world, tmp_path / f"{name}.toml", admin=name == "admin")
        assert httpx.get(url).status_code == 200, f"{url} is not served"
        token = st_world["tokens"][role] if credentials == "token" else None
        result = run_schemathesis(url, config, token, tmp_path / f"{name}.ndjson")
        if result.returncode != 0:
            failed[name] = result.stdout[-20000:] + result.stderr[-2000:]
            continue
        selected = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", result.stdout)
        cases = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
        assert selected and cases, result.stdout[-3000:]
        total, tested = int(selected[2]), int(selected[3])
        assert tested == total, f"{name}: schemathesis tested {tested} of {total} operations"
        ran[name] = (tested, int(cases[1]))
    assert not failed, "\n\n".join(f"=== {name}\n{out}" for name, out in failed.items())
    print(f"schemathesis ({credentials}): " + ", ".join(f"{n} {ops} operations/{cases} cases"
                                                      for n, (ops, cases) in ran.items()))
