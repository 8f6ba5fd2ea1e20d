"""The token endpoint served alone (lgsp.app.token_plane: authlib's framework-free server, no Flask), which a
combined worker answers a client's form with, answers every token request as the control plane's Flask
route does: same status, headers and body (the tokens themselves differ only in their times and ids)."""
from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx
import pytest

from lgsp import auth_throttle
from lgsp.app import control_plane, token_plane, token_request
from lgsp.audit.writer import AuditUnavailable
from lgsp.control import TOKEN_PATH
from lgsp.gateway import Gateway

COMPARED_HEADERS = ("content-type", "cache-control", "pragma", "retry-after", "www-authenticate")


@pytest.fixture(scope="module")
def planes(gateway):
    gw = Gateway()
    return {"alone": token_plane(gw), "control plane": control_plane(gw)}


def client(gateway, prefix: str) -> tuple[str, str]:
    """A client granted one service (a token's scope is its grants': none is invalid_scope)."""
    admin, cid = gateway.extra["admin"], f"{prefix}-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, f"Token plane test {prefix}", "000.00.37.H30")
    admin.add_grant(cid, "codelists.list", ["codelists"], ["reference-data"])
    return cid, secret


def post(app, **kwargs) -> httpx.Response:
    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.post(TOKEN_PATH, **kwargs)

    return asyncio.run(ask())


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def comparable(resp: httpx.Response) -> tuple:
    body = resp.json()
    if "access_token" in body:  # the same claims, issued at another moment
        body["access_token"] = sorted(claims(body["access_token"]))
    return resp.status_code, {h: resp.headers.get(h) for h in COMPARED_HEADERS}, body


def answers(planes, **kwargs) -> list[tuple]:
    return [comparable(post(app, **kwargs)) for app in planes.values()]


def test_a_token_by_either_way_of_sending_the_secret(gateway, planes):
    cid, secret = client(gateway, "alone")
    form = {"grant_type": "client_credentials"}
    basic = answers(planes, data=form, auth=(cid, secret))
    assert basic[0] == basic[1] and basic[0][0] == 200, basic
    posted = answers(planes, data={**form, "client_id": cid, "client_secret": secret})
    assert posted[0] == posted[1] and posted[0][0] == 200, posted
    token = post(planes["alone"], data=form, auth=(cid, secret)).json()["access_token"]
    assert claims(token)["client_id"] == cid and "cnf" not in claims(token)


@pytest.mark.parametrize("case", ["wrong secret", "unknown client", "no credentials", "another grant",
                                  "no grant", "twice the grant", "a scope not granted"])
def test_refusals_are_the_same(gateway, planes, case):
    cid, secret = client(gateway, "refused")
    form = {"grant_type": "client_credentials"}
    auth: tuple[str, str] | None = (cid, secret)
    if case == "wrong secret":
        auth = (cid, "wrong")
    elif case == "unknown client":
        auth = ("nobody-" + uuid.uuid4().hex[:6], "wrong")
    elif case == "no credentials":
        auth = None
    elif case == "another grant":
        form = {"grant_type": "password"}
    elif case == "no grant":
        form = {}
    elif case == "a scope not granted":
        form["scope"] = "no.such.scope"
    content = "grant_type=client_credentials&grant_type=client_credentials" if case == "twice the grant" else None
    kwargs = {"content": content, "headers": {"Content-Type": "application/x-www-form-urlencoded"}} if content else (
        {"data": form})
    alone, flask = answers(planes, auth=auth, **kwargs)
    assert alone == flask
    if case != "twice the grant":  # authlib takes the first of a repeated parameter (both servers alike)
        assert 400 <= alone[0] < 500, alone


def test_repeated_failures_are_throttled_alike(gateway, planes):
    for app in planes.values():
        cid, _ = client(gateway, "throttle")
        codes = [post(app, data={"grant_type": "client_credentials"}, auth=(cid, "bad"))
                 for _ in range(auth_throttle.PER_CLIENT + 1)]
        assert [c.status_code for c in codes] == [401] * auth_throttle.PER_CLIENT + [429]
        assert codes[-1].json()["code"] == "auth.throttled" and codes[-1].headers["retry-after"]


def test_a_form_over_500_kb_is_refused_before_it_is_parsed(planes):
    resp = post(planes["alone"], data={"grant_type": "client_credentials", "pad": "x" * 500_001})
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["code"] == "request.too_large"


@pytest.mark.parametrize("method,content_type,alone", [
    ("POST", b"application/x-www-form-urlencoded", True),
    ("POST", b"application/x-www-form-urlencoded; charset=utf-8", True),
    ("POST", b"application/json", False),
    ("POST", b"multipart/form-data; boundary=x", False),
    ("POST", None, False),
    ("GET", b"application/x-www-form-urlencoded", False),
])
def test_only_a_form_post_is_served_by_the_token_endpoint_alone(method, content_type, alone):
    headers = [(b"content-type", content_type)] if content_type else []
    assert token_request({"type": "http", "path": TOKEN_PATH, "method": method, "headers": headers}) is alone


class FailingServer:
    """A token server whose issue fails as a database outage or a defect would (a unit test's stand-in)."""

    def __init__(self, failure: Exception):
        self.failure = failure

    def issue(self, request, source):
        raise self.failure


@pytest.mark.parametrize("failure,status,code", [(AuditUnavailable("down"), 503, "audit.unavailable"),
                                                 (RuntimeError("a defect"), 500, "internal.error")])
def test_a_failed_issue_is_answered_as_a_problem_without_its_trace(failure, status, code):
    from lgsp.control.token_endpoint import _issue_or_refuse

    got, headers, body = _issue_or_refuse(FailingServer(failure), None, "127.0.0.1")  # type: ignore[arg-type]
    assert (got, headers["Content-Type"], json.loads(body)["code"]) == (status, "application/problem+json", code)
    assert "a defect" not in body.decode() and "Traceback" not in body.decode()
