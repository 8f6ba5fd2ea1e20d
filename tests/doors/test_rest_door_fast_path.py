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
from lgsp.delivery import accept as messages
from lgsp.doors import routes
from lgsp.pipeline import grant_fields

PURPOSE = "administrative-procedure"
# A value each path parameter's pattern accepts (the personal ID is one the population simulator knows).
VALID = {"personal_id": "001085012345", "enterprise_code": "0101234565", "name": "genders",
         "dataset": "business-licences", "key": "SCT-BLR-2024-00017", "dossier_no": "HS-FP-0"}


def documents() -> list[dict]:
    return [yaml.safe_load(api.path.read_text(encoding="utf-8")) for api in specs.shared_apis() if api.door == "rest"]


def fast_routes() -> list[routes.FastRoute]:
    """The plain reads (GET) of the fast path."""
    return [r for doc in documents() for r in routes.routes_of(doc) if r.method == "GET"]


def message_routes() -> list[routes.FastRoute]:
    return [r for doc in documents() for r in routes.routes_of(doc) if r.method == "POST"]


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


def test_the_fast_path_knows_the_plain_reads_and_the_messages_of_every_served_document():
    served = {r.service for r in fast_routes()}
    assert {"population.citizen.get", "business.enterprise.get"} <= served
    assert {r.service for r in message_routes()} == set(messages.message_services())
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
        if route.method != "GET":
            continue
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


# -- messages: a POST with a JSON body -------------------------------------------------------

def a_dossier(no: str) -> dict:
    return {"version": 1, "dossier_no": no, "procedure_code": "1.001193",
            "applicant": {"name": "Nguyễn Văn An", "type": "citizen", "email": "an@example.vn"},
            "received_at": "2026-11-30T08:15:00+07:00", "due_at": "2026-12-05T17:00:00+07:00",
            "status": "received", "summary": "Đăng ký khai sinh",
            "fees": [{"name": "Lệ phí", "amount": 8000}], "submitted_files": [{"name": "to-khai.pdf"}]}


def a_step(step_id: str) -> dict:
    return {"step_id": step_id, "handled_at": "2026-11-30T09:00:00+07:00", "status": "processing",
            "content": "Chuyển phòng chuyên môn"}


def _raw(body: dict | list) -> bytes:
    import json

    return json.dumps(body, ensure_ascii=False).encode()


def broken_bodies(valid: dict) -> list[tuple[str, bytes]]:
    """(what, body): the valid body, then the ways a sender gets it wrong (schema, JSON, bytes)."""
    first = next(iter(valid))
    out = [("valid", _raw(valid)),
           ("missing field", _raw({k: v for k, v in valid.items() if k != first})),
           ("unknown field", _raw({**valid, "surprise": 1})),
           ("bad enum", _raw({**valid, "status": "lost"})),
           ("null", _raw({**valid, "status": None})),
           ("a list", _raw([valid])),
           ("a string", b'"dossier"'),
           ("empty", b""),
           ("not JSON", b"{version: 1"),
           ("trailing comma", _raw(valid)[:-1] + b",}"),
           ("NaN", _raw(valid)[:-1] + b', "x": NaN}'),
           ("not UTF-8", _raw(valid).replace("ễ".encode(), b"\xff\xfe") if "dossier_no" in valid else b"\xff"),
           ("BOM", b"\xef\xbb\xbf" + _raw(valid)),
           ("deep", _raw({**valid, "summary": None})[:-1] + b', "x": ' + b"[" * 40 + b"]" * 40 + b"}")]
    if "version" in valid:
        out += [("version 0", _raw({**valid, "version": 0})),
                ("version 1.0", _raw({**valid, "version": 1.0})),
                ("version true", _raw({**valid, "version": True})),
                ("version huge", _raw(valid).replace(b'"version": 1', b'"version": 1' + b"0" * 30)),
                ("bad date", _raw({**valid, "received_at": "30/11/2026"})),
                ("bad email", _raw({**valid, "applicant": {**valid["applicant"], "email": "nobody"}})),
                ("negative fee", _raw({**valid, "fees": [{"name": "x", "amount": -1}]})),
                ("fee as text", _raw({**valid, "fees": [{"name": "x", "amount": "8000"}]})),
                ("bad dossier_no", _raw({**valid, "dossier_no": "HS 1/2"})),
                ("too many fees", _raw({**valid, "fees": [{"name": "x", "amount": 1}] * 51}))]
    else:
        out += [("bad step_id", _raw({**valid, "step_id": "-x"})), ("empty content", _raw({**valid, "content": ""}))]
    return out


def connexion_decides(route: routes.FastRoute, raw: bytes) -> bool:
    """What connexion's own body validator (Draft 4, nullable, its format checker) says of a body."""
    import json

    from connexion.json_schema import Draft4RequestValidator
    from jsonschema import Draft4Validator

    doc = next(d for d in documents() for item in d["paths"].values() for op in item.values()
               if isinstance(op, dict) and op.get("operationId") == route.service)
    op = next(op for item in doc["paths"].values() for op in item.values()
              if isinstance(op, dict) and op.get("operationId") == route.service)
    schema = {"components": doc["components"], "allOf": [op["requestBody"]["content"]["application/json"]["schema"]]}
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        return False
    validator = Draft4RequestValidator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
    return body is not None and validator.is_valid(body)


def test_the_fast_path_takes_a_message_body_only_if_connexion_would():
    checked = 0
    for route in message_routes():
        valid = a_dossier("HS-FP-1") if route.service == "portal.dossier.sync" else a_step("B1")
        for what, raw in broken_bodies(valid):
            fast = routes._valid_body(route, raw) is not None
            if what == "valid":
                assert fast, route.service
            elif what not in ("NaN", "deep"):  # the fast path declines those (connexion and the guard decide)
                assert fast == connexion_decides(route, raw), (route.service, what)
            assert not fast or connexion_decides(route, raw), (route.service, what)
            checked += 1
    assert checked > 30


def message_scope(route: routes.FastRoute, body: bytes, **header: str) -> dict:
    address = path_of(route, dossier_no="HS-FP-2")
    headers = {**headers_of(route, "t"), "Content-Type": "application/json", "Content-Length": str(len(body)),
               **header}
    return scope_of("POST", address, {k: v for k, v in headers.items() if v})


def test_a_message_is_declined_unless_its_head_says_json_within_the_limit():
    fast = routes.FastPath(None, None, None, documents())  # type: ignore[arg-type]
    route = next(r for r in fast.routes if r.service == "portal.dossier.sync")
    body = _raw(a_dossier("HS-FP-2"))
    assert fast.match(message_scope(route, body)) is not None
    assert fast.match(message_scope(route, body, **{"Content-Type": "application/json; charset=UTF-8"})) is not None
    for header in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json; charset=latin-1"},
                   {"Content-Type": ""}, {"Content-Length": ""}, {"Content-Length": "0"},
                   {"Content-Length": str(fast.body_limit + 1)}, {"Transfer-Encoding": "chunked"},
                   {"Idempotency-Key": "with space"}, {"X-Callback-URL": "ftp://x"}, {"X-Purpose": ""}):
        assert fast.match(message_scope(route, body, **header)) is None, header
    assert fast.match({**message_scope(route, body), "method": "PUT"}) is None


@pytest.fixture(scope="module")
def message_gateways(tmp_path_factory, lgsp_env):
    """A delivery rig's gateway (fast path on) and a second one on its database with the fast path off."""
    from delivery_rig import running_rig

    with running_rig(tmp_path_factory.mktemp("fast-messages"), "fast-messages") as rig:
        port = free_port()
        slow = start_server([sys.executable, "-m", "lgsp.cli", "serve", "--port", str(port)],
                            f"http://127.0.0.1:{port}", "/readyz", rig.log_dir / "connexion.log",
                            env={**rig.env, "LGSP_REST_FAST_PATH": "0", "LGSP_DELIVERY_WORKER": "0"})
        try:
            yield rig, slow, rig.token()
        finally:
            slow.stop()


def _comparable_message(resp: httpx.Response) -> tuple:
    status, content_type, body, names = _comparable(resp)
    if isinstance(body, dict) and resp.status_code == 202:  # a new message each: its own id, time, key
        body = {k: v for k, v in body.items() if k not in ("message_id", "status_url", "accepted_at", "key",
                                                           "next_attempt_at")}
    return status, content_type, body, names


def message_variants(route: routes.FastRoute, token: str, n: int) -> list[tuple[str, str, str, dict, bytes]]:
    """(what, method, address, headers, body) of one message route: valid, the broken bodies, broken heads."""
    sync = route.service == "portal.dossier.sync"
    valid = a_dossier(f"HS-FP-{n}") if sync else a_step(f"B{n}")
    address = path_of(route, dossier_no=f"HS-FP-{n}")
    good = {**headers_of(route, token), "Content-Type": "application/json"}
    out = [(what, "POST", address, good, raw) for what, raw in broken_bodies(valid)]
    raw = _raw(valid)
    out += [("text/plain", "POST", address, {**good, "Content-Type": "text/plain"}, raw),
            ("no X-Purpose", "POST", address, {k: v for k, v in good.items() if k != "X-Purpose"}, raw),
            ("bad Idempotency-Key", "POST", address, {**good, "Idempotency-Key": "a b"}, raw),
            ("no token", "POST", address, headers_of(route, None) | {"Content-Type": "application/json"}, raw),
            ("PUT", "PUT", address, good, raw),
            ("too large", "POST", address, good, raw[:-1] + b', "x": "' + b"y" * 70000 + b'"}')]
    if sync:
        out += [("unknown procedure", "POST", address, good, _raw({**valid, "procedure_code": "9.999999"})),
                ("impossible date", "POST", address, good, _raw({**valid, "due_at": "2026-02-30T08:00:00+07:00"})),
                ("due before received", "POST", address, good, _raw({**valid, "due_at": "2026-11-01T08:00:00+07:00"}))]
    else:
        out.append(("bad dossier_no", "POST", path_of(route, dossier_no="HS 1!"), good, raw))
    return out


def test_every_message_answers_as_connexion_does(message_gateways):
    rig, slow, token = message_gateways
    wait_for_config(slow.url, rig.db_url)
    compared, n = 0, 0
    for route in message_routes():
        for what, method, address, headers, body in message_variants(route, token, n := n + 1):
            answers = []
            for url, name in ((rig.url, "fast"), (slow.url, "slow")):
                name = name if what == "valid" else "FP"  # an accepted message: each its own dossier (or step)
                content = body.replace(b"HS-FP-", f"HS-{name}-".encode())
                answers.append(httpx.request(method, url + address.replace("HS-FP-", f"HS-{name}-"),
                                             headers={**headers, "X-Request-ID": f"fp-{uuid.uuid4().hex[:12]}"},
                                             content=content, timeout=15))
            fast, slow_answer = answers
            assert _comparable_message(fast) == _comparable_message(slow_answer), (route.service, what, fast.text,
                                                                                   slow_answer.text)
            assert fast.status_code == (202 if what == "valid" else fast.status_code)
            compared += 1
    assert compared >= 40


def test_a_message_through_the_fast_path_is_stored_once_with_its_record(message_gateways):
    rig, _slow, token = message_gateways
    route = next(r for r in message_routes() if r.service == "portal.dossier.sync")
    headers = {**headers_of(route, token), "Content-Type": "application/json", "Idempotency-Key": "fp-once"}
    body = _raw(a_dossier("HS-FP-ONCE"))
    first = httpx.post(rig.url + path_of(route), headers=headers, content=body, timeout=15)
    again = httpx.post(rig.url + path_of(route), headers={**headers, "X-Request-ID": "fp-again"}, content=body,
                       timeout=15)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert first.json()["message_id"] == again.json()["message_id"] and again.json()["replayed"] is True
    assert first.headers["location"] == first.json()["status_url"]
    from lgsp.storage import engine_for

    rig.gateway.extra["engine"] = engine_for(rig.db_url)
    record = audit_of(rig.gateway, headers["X-Request-ID"])
    assert record["service"] == "portal.dossier.sync" and record["status"] == 202 and record["door"] == "rest"
