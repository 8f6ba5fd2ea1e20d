"""The REST door's fast path (lgsp/doors/routes.py) serves and refuses exactly as connexion does.

Every operation the fast path compiles from the served shared-API documents is asked, valid and in
the ways a caller gets it wrong, of the test gateway (fast path on) and of a second gateway process
on the same database with the fast path off (everything through connexion): same status, same
error code, same answer. The unit tests show which requests the fast path takes and which it
hands to connexion.
"""
from __future__ import annotations

import re
import sys
import uuid

import httpx
import pytest
import yaml
from helpers import audit_of, free_port, get_token, start_server, wait_for_config

from lgsp import specs
from lgsp.doors import routes
from lgsp.pipeline import grant_fields

PURPOSE = "administrative-procedure"
# A value each path parameter's pattern accepts (the personal ID is one the population simulator knows).
VALID = {"personal_id": "001085012345", "enterprise_code": "0101234565", "name": "genders",
         "dataset": "business-licences", "key": "SCT-BLR-2024-00017"}


def documents() -> list[dict]:
    return [yaml.safe_load(api.path.read_text(encoding="utf-8")) for api in specs.shared_apis() if api.door == "rest"]


def fast_routes() -> list[routes.FastRoute]:
    return [r for doc in documents() for r in routes.routes_of(doc)]


def path_of(route: routes.FastRoute, **values: str) -> str:
    return re.sub(r"\(\?P<([^>]+)>\[\^/\]\+\)", lambda m: values.get(m[1], VALID[m[1]]),
                  route.pattern.pattern.rstrip("$")).replace("\\", "")


def headers_of(route: routes.FastRoute, token: str | None) -> dict[str, str]:
    h = {"X-Purpose": PURPOSE, "X-On-Behalf-Of": "officer-7", "X-Request-ID": f"fp-{uuid.uuid4().hex[:12]}"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


def query_of(route: routes.FastRoute) -> str:
    required = [p.name for p in route.params if p.where == "query" and p.required]
    return "?" + "&".join(f"{name}=01" for name in required) if required else ""


def variants(route: routes.FastRoute, token: str) -> list[tuple[str, str, str, dict[str, str]]]:
    """(what, method, address, headers): the valid request and the usual ways of getting it wrong."""
    path, query, good = path_of(route), query_of(route), headers_of(route, token)
    without = {k: v for k, v in good.items() if k != "X-Purpose"}
    out = [("valid", "GET", path + query, good),
           ("no X-Purpose", "GET", path + query, without),
           ("bad X-Purpose", "GET", path + query, {**good, "X-Purpose": "Not A Purpose!"}),
           ("bad X-Request-ID", "GET", path + query, {**good, "X-Request-ID": "no spaces allowed"}),
           ("unknown query parameter", "GET", path + query + ("&" if query else "?") + "surprise=1", good),
           ("no token", "GET", path + query, headers_of(route, None)),
           ("other method", "DELETE", path + query, good),
           ("trailing slash", "GET", path + "/" + query, good)]
    for p in route.params:
        if p.where == "path":
            out.append((f"bad {p.name}", "GET", path_of(route, **{p.name: "12ab!" + "x" * 300}) + query, good))
        if p.where == "query":
            bad = query.replace(f"{p.name}=01", f"{p.name}=x") if f"{p.name}=01" in query else \
                (query + "&" if query else "?") + f"{p.name}=x"
            out.append((f"bad {p.name}", "GET", path + bad, good))
    return out


# -- which requests the fast path takes -----------------------------------------------------

def scope_of(method: str, address: str, headers: dict[str, str]) -> dict:
    path, _, query = address.partition("?")
    return {"type": "http", "method": method, "path": path, "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


def test_the_fast_path_knows_the_plain_reads_of_every_served_document():
    served = {r.service for r in fast_routes()}
    assert {"population.citizen.get", "business.enterprise.get"} <= served
    for doc in documents():
        for item in doc["paths"].values():
            for method, op in item.items():
                if isinstance(op, dict) and op.get("operationId") in served:
                    assert method == "get" and "requestBody" not in op  # the rest stays with connexion


def declares(route: routes.FastRoute, header: str, what: str) -> bool:
    """Whether the operation's spec checks that header in the way the variant breaks it."""
    return any(p.name == header and (p.required or not what.startswith("no ")) for p in route.params)


def test_the_fast_path_takes_valid_requests_only_and_declines_every_refusal():
    fast = routes.FastPath(None, None, None, documents())  # type: ignore[arg-type]
    assert fast.routes
    for route in fast.routes:
        for what, method, address, headers in variants(route, "a-token"):
            found = fast.match(scope_of(method, address, headers))
            if what == "valid":
                assert found is not None and found[0].service == route.service, (route.service, address)
                assert set(found[1]) == {p.name for p in route.params if p.where != "header" and
                                         (p.required or p.where == "path")}
            elif what == "no token" or (what.endswith("X-Purpose") and not declares(route, "x-purpose", what)):
                # not a parameter of the spec's (the token is identify's): the pipeline decides, on either path
                assert found is not None, (route.service, what)
            else:
                assert found is None, (route.service, what)


def test_requests_with_a_body_or_repeated_headers_go_to_connexion():
    fast = routes.FastPath(None, None, None, documents())  # type: ignore[arg-type]
    route = next(r for r in fast.routes if r.service == "population.citizen.get")
    good = headers_of(route, "t")
    assert fast.match(scope_of("GET", path_of(route), good)) is not None
    assert fast.match(scope_of("GET", path_of(route), {**good, "Content-Length": "2"})) is None
    scope = scope_of("GET", path_of(route), good)
    scope["headers"].append((b"x-purpose", b"other"))
    assert fast.match(scope) is None
    assert fast.match(scope_of("GET", "/api/population/v1/citizens/verify", good)) is None  # a POST-only address


def test_operations_the_fast_path_cannot_check_itself_are_left_to_connexion():
    doc = {"servers": [{"url": "{{ public_url }}/api/x/v1"}], "paths": {
        "/things/{n}": {"get": {"operationId": "x.thing.get", "x-lgsp-service": {},
                                "parameters": [{"name": "n", "in": "path", "required": True,
                                                "schema": {"type": "integer"}}]}},
        "/list": {"get": {"operationId": "x.list", "x-lgsp-service": {},
                          "parameters": [{"name": "limit", "in": "query",
                                          "schema": {"type": "string", "default": "5"}}]}},
        "/plain/{id}": {"get": {"operationId": "x.plain.get", "x-lgsp-service": {},
                                "parameters": [{"name": "id", "in": "path", "required": True,
                                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}]}}}}
    assert [r.service for r in routes.routes_of(doc)] == ["x.plain.get"]


# -- the same answers, fast path on and off ---------------------------------------------------

@pytest.fixture(scope="module")
def connexion_only(gateway, lgsp_env, tmp_path_factory):
    """A second gateway on the same database and keys, with the fast path off."""
    port = free_port()
    server = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)],
                          f"http://127.0.0.1:{port}", "/readyz", tmp_path_factory.mktemp("gw") / "connexion.log",
                          env={"LGSP_REST_FAST_PATH": "0"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reader(gateway):
    admin = gateway.extra["admin"]
    client = f"fast-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(client, "Fast path reader", "000.00.31.H30")
    for service in sorted({r.service for r in fast_routes()} - {"codelists.get", "codelists.admin_unit.translate"}):
        shape = grant_fields.service_shape(service)  # two of the answer's own top-level fields
        if shape and shape.paths:  # a service of open shape (a dataset's records) is asked without a grant
            admin.add_grant(client, service, sorted(p for p in shape.paths if "." not in p)[:2], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, client, secret)


def _comparable(resp: httpx.Response) -> tuple:
    body = resp.json() if "json" in resp.headers.get("content-type", "") else resp.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("request_id", "instance")}
    names = {k for k in resp.headers if k not in ("date", "server", "x-request-id", "content-length")}
    return resp.status_code, resp.headers.get("content-type"), body, names


def test_every_fast_route_answers_as_connexion_does(gateway, connexion_only, reader):
    wait_for_config(connexion_only.url, gateway.extra["engine"])
    compared = 0
    for route in fast_routes():
        for what, method, address, headers in variants(route, reader):
            fast = httpx.request(method, gateway.url + address, headers=headers, timeout=15)
            slow = httpx.request(method, connexion_only.url + address, headers=headers, timeout=15)
            assert _comparable(fast) == _comparable(slow), (route.service, what, fast.text, slow.text)
            compared += 1
    assert compared >= 8 * len(fast_routes())


def test_an_answer_of_the_fast_path_is_audited(gateway, reader):
    route = next(r for r in fast_routes() if r.service == "population.citizen.get")
    headers = headers_of(route, reader)
    r = httpx.get(gateway.url + path_of(route), headers=headers, timeout=15)
    assert r.status_code == 200, r.text
    record = audit_of(gateway, headers["X-Request-ID"])
    assert record["service"] == "population.citizen.get" and record["door"] == "rest"
    assert record["purpose"] == PURPOSE and record["officer"] == "officer-7" and record["status"] == 200
