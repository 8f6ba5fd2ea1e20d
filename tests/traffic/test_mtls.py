"""Certificate-bound clients (RFC 8705) over real TLS: `lgsp serve` terminates TLS with
certificates the test suite makes, clients are httpx and zeep with client certificates, and a
second gateway takes the certificate from a trusted proxy's header."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest
import requests
import tls_certs
import zeep
from cryptography.hazmat.primitives.serialization import Encoding
from helpers import PROBLEM_KEYS, Server, audit_of, free_port, lgsp_cli
from zeep.transports import Transport

PURPOSE = "administrative-procedure"
FIELDS = ["personal_id", "full_name", "gender", "birth_date"]
NS = {"lgsp": "urn:lgsp:soap:v1"}


def x5t(issued: tls_certs.Issued) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(issued.cert.public_bytes(Encoding.DER)).digest()).rstrip(b"=").decode()


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = tls_certs.Authority(folder)
    return {
        "folder": folder, "ca": ca, "server": ca.server(),
        "bound": ca.client(f"motcua-{uuid.uuid4().hex[:6]}"),
        "other": ca.client(f"other-{uuid.uuid4().hex[:6]}"),
        "expired": ca.client(f"expired-{uuid.uuid4().hex[:6]}", days=(-30, -1)),
        "self": tls_certs.self_signed(folder, f"selfsigned-{uuid.uuid4().hex[:6]}"),
        "intruder": tls_certs.self_signed(folder, f"intruder-{uuid.uuid4().hex[:6]}"),
        "late": tls_certs.self_signed(folder, f"late-{uuid.uuid4().hex[:6]}"),
    }


@pytest.fixture(scope="module")
def citizen() -> str:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "1"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\d{12})\t", out, re.MULTILINE)[0]


@pytest.fixture(scope="module")
def clients(gateway, pki):
    """Clients of every kind, registered before the TLS gateway starts."""
    from lgsp.tls import registration

    admin = gateway.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    made = {}
    for kind in ("ca", "self", "expired", "plain", "netlimited", "netproxy", "late"):
        cid = f"mtls-{kind}-{suffix}"
        made[kind] = (cid, admin.create_client(cid, f"{kind} system"))
        admin.add_grant(cid, "population.citizen.get", FIELDS, [PURPOSE])
    registration.put(admin, made["ca"][0], {"method": "tls_client_auth", "subject_dn": pki["bound"].subject})
    registration.put(admin, made["expired"][0], {"method": "tls_client_auth", "subject_dn": pki["expired"].subject})
    registration.put(admin, made["self"][0], {"method": "self_signed_tls_client_auth", "certificate": pki["self"].pem})
    registration.put(admin, made["netlimited"][0], {"allowed_networks": ["10.99.0.0/16"]})
    registration.put(admin, made["netproxy"][0], {"allowed_networks": ["10.99.0.0/16"]})
    return made


def _serve(env: dict, url: str, log: Path, verify, extra: dict) -> Server:
    out = open(log, "wb")
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen([sys.executable, "-m", "lgsp.cli", "serve", "--port", port], stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        try:
            if httpx.get(f"{url}/readyz", verify=verify, timeout=1).status_code == 200:
                return Server(url, proc, log, dict(extra))
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"gateway at {url} did not start: {log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def tls_gateway(gateway, clients, pki, tmp_path_factory):
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {"LGSP_PUBLIC_URL": url, "LGSP_TLS_CERT_FILE": str(pki["server"].cert_file),
           "LGSP_TLS_KEY_FILE": str(pki["server"].key_file), "LGSP_TLS_CLIENT_CA_FILE": str(pki["ca"].cert_file)}
    server = _serve(env, url, tmp_path_factory.mktemp("tlsgw") / "gateway.log",
                    ssl.create_default_context(cafile=str(pki["ca"].cert_file)), gateway.extra)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied_gateway(gateway, clients, pki, tmp_path_factory):
    """Plain HTTP behind a (pretended) TLS-terminating proxy at 127.0.0.2: only its header is believed."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"LGSP_PUBLIC_URL": url, "LGSP_TRUSTED_PROXIES": "127.0.0.2/32",
           "LGSP_TLS_CLIENT_CA_FILE": str(pki["ca"].cert_file)}
    server = _serve(env, url, tmp_path_factory.mktemp("proxygw") / "gateway.log", True, gateway.extra)
    yield server
    server.stop()


def tls_client(pki, cert: str | None = None) -> httpx.Client:
    """An httpx client trusting the test CA, presenting the client certificate `cert` (or none)."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"].cert_file))
    if cert:
        ctx.load_cert_chain(*pki[cert].pair)
    return httpx.Client(verify=ctx, timeout=15)


def mtls_token(http: httpx.Client, gw: Server, client_id: str, **kw) -> httpx.Response:
    return http.post(f"{gw.url}/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id}, **kw)


def lookup(http: httpx.Client, gw: Server, pid: str, token: str | None, **headers) -> httpx.Response:
    h = {"X-Purpose": PURPOSE, "X-Request-ID": f"mtls-{uuid.uuid4().hex[:12]}", **headers}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return http.get(f"{gw.url}/api/population/v1/citizens/{pid}", headers=h)


def assert_refused(resp: httpx.Response, status: int, code: str, gw: Server) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert set(body) == PROBLEM_KEYS and body["code"] == code, body
    record = audit_of(gw, body["request_id"])
    assert record["outcome"] == "refused" and record["error_code"] == code, record
    return body


# -- tls_client_auth over the gateway's own TLS ----------------------------------------------

def test_metadata_offers_certificate_authentication(tls_gateway, pki):
    with tls_client(pki) as http:
        meta = http.get(f"{tls_gateway.url}/.well-known/oauth-authorization-server").json()
    assert {"tls_client_auth", "self_signed_tls_client_auth"} <= set(meta["token_endpoint_auth_methods_supported"])
    assert meta["tls_client_certificate_bound_access_tokens"] is True
    assert meta["issuer"].startswith("https://")


def test_ca_issued_certificate_gets_a_bound_token_that_works_with_it(tls_gateway, pki, clients, citizen):
    with tls_client(pki, "bound") as http:
        r = mtls_token(http, tls_gateway, clients["ca"][0])
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert claims_of(token)["cnf"] == {"x5t#S256": x5t(pki["bound"])}
        found = lookup(http, tls_gateway, citizen, token)
    assert found.status_code == 200, found.text
    assert found.json()["personal_id"] == citizen
    assert audit_of(tls_gateway, found.headers["x-request-id"])["outcome"] == "ok"


def test_bound_token_without_the_certificate_is_refused_and_audited(tls_gateway, pki, clients, citizen):
    with tls_client(pki, "bound") as http:
        token = mtls_token(http, tls_gateway, clients["ca"][0]).json()["access_token"]
    with tls_client(pki) as http:  # no client certificate: still a problem+json answer
        assert_refused(lookup(http, tls_gateway, citizen, token), 401, "token.binding", tls_gateway)
    with tls_client(pki, "other") as http:  # another certificate of the same CA
        assert_refused(lookup(http, tls_gateway, citizen, token), 401, "token.binding", tls_gateway)


def test_bound_client_cannot_use_its_secret_or_another_certificate(tls_gateway, pki, clients):
    cid, secret = clients["ca"]
    with tls_client(pki, "bound") as http:
        basic = http.post(f"{tls_gateway.url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(cid, secret))
    assert basic.status_code == 401 and basic.json()["error"] == "invalid_client"
    with tls_client(pki, "other") as http:  # chained to the CA, but another subject
        assert mtls_token(http, tls_gateway, cid).status_code == 401
    with tls_client(pki) as http:
        assert mtls_token(http, tls_gateway, cid).status_code == 401


def test_expired_certificate_does_not_complete_the_handshake(tls_gateway, pki, clients):
    with tls_client(pki, "expired") as http, pytest.raises(httpx.TransportError):
        mtls_token(http, tls_gateway, clients["expired"][0])


def test_client_without_certificate_binding_still_served_over_tls(tls_gateway, pki, clients, citizen):
    cid, secret = clients["plain"]
    with tls_client(pki) as http:
        r = http.post(f"{tls_gateway.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
        token = r.json()["access_token"]
        assert "cnf" not in claims_of(token)
        assert lookup(http, tls_gateway, citizen, token).status_code == 200
        assert_refused(lookup(http, tls_gateway, citizen, None), 401, "auth.token_missing", tls_gateway)


# -- self_signed_tls_client_auth -----------------------------------------------------------------

def test_self_signed_certificate_registered_gets_a_bound_token(tls_gateway, pki, clients, citizen):
    with tls_client(pki, "self") as http:
        r = mtls_token(http, tls_gateway, clients["self"][0])
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert claims_of(token)["cnf"]["x5t#S256"] == x5t(pki["self"])
        assert lookup(http, tls_gateway, citizen, token).status_code == 200
    with tls_client(pki, "bound") as http:  # the CA's client certificate is not the registered one
        assert mtls_token(http, tls_gateway, clients["self"][0]).status_code == 401
        assert_refused(lookup(http, tls_gateway, citizen, token), 401, "token.binding", tls_gateway)


def test_unregistered_self_signed_certificate_is_refused_at_the_handshake(tls_gateway, pki, clients):
    with tls_client(pki, "intruder") as http, pytest.raises(httpx.TransportError):
        mtls_token(http, tls_gateway, clients["self"][0])


def test_self_signed_certificate_registered_while_running_is_trusted_soon(tls_gateway, gateway, pki, clients):
    from lgsp.tls import registration

    cid = clients["late"][0]
    registration.put(gateway.extra["admin"], cid, {"method": "self_signed_tls_client_auth",
                                                    "certificate": pki["late"].pem})
    deadline = time.monotonic() + 10
    while True:
        try:
            with tls_client(pki, "late") as http:
                r = mtls_token(http, tls_gateway, cid)
            break
        except httpx.TransportError:  # TLS 1.3: the refusal comes after the client finished its part
            assert time.monotonic() < deadline, "the new certificate was never trusted"
            time.sleep(0.1)
    assert r.status_code == 200, r.text


# -- allowed networks --------------------------------------------------------------------------

def test_client_outside_its_networks_is_refused_and_audited(tls_gateway, gateway, pki, clients, citizen):
    from lgsp.tls import registration

    cid, secret = clients["netlimited"]
    with tls_client(pki) as http:
        token = http.post(f"{tls_gateway.url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(cid, secret)).json()["access_token"]
        body = assert_refused(lookup(http, tls_gateway, citizen, token), 403, "access.source_not_allowed", tls_gateway)
        assert cid in body["detail"]
        registration.put(gateway.extra["admin"], cid, {"allowed_networks": ["10.99.0.0/16", "127.0.0.0/8"]})
        deadline = time.monotonic() + 10
        while (r := lookup(http, tls_gateway, citizen, token)).status_code == 403:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert r.status_code == 200, r.text


# -- SOAP with zeep --------------------------------------------------------------------------------

def zeep_client(gw: Server, pki, token: str | None, cert: str | None) -> zeep.Client:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would replace the test CA
    session.verify = str(pki["ca"].cert_file)
    if cert:
        session.cert = pki[cert].pair
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return zeep.Client(f"{gw.url}/soap/v1?wsdl", transport=Transport(session=session))


def soap_refusal(client: zeep.Client, citizen: str) -> tuple[str, str]:
    """(code, request id) of a SOAP call that must end in a Fault."""
    rid = f"mtls-soap-{uuid.uuid4().hex[:8]}"
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE, request_id=rid)
    client.transport.session.close()
    return err.value.detail.find(".//lgsp:code", NS).text, rid


def test_soap_door_with_zeep_and_a_client_certificate(tls_gateway, pki, clients, citizen):
    with tls_client(pki, "bound") as http:
        token = mtls_token(http, tls_gateway, clients["ca"][0]).json()["access_token"]
    client = zeep_client(tls_gateway, pki, token, "bound")
    found = client.service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE,
                                                request_id=f"mtls-soap-{uuid.uuid4().hex[:8]}")
    client.transport.session.close()
    assert found.personal_id == citizen
    code, rid = soap_refusal(zeep_client(tls_gateway, pki, token, None), citizen)
    assert code == "token.binding" and audit_of(tls_gateway, rid)["error_code"] == "token.binding"


def test_bound_client_cannot_use_a_ws_security_password(tls_gateway, pki, clients, citizen):
    from zeep.wsse.username import UsernameToken

    cid, secret = clients["ca"]
    client = zeep_client(tls_gateway, pki, None, "bound")
    client.wsse = UsernameToken(cid, secret)
    code, rid = soap_refusal(client, citizen)
    assert code == "token.binding" and audit_of(tls_gateway, rid)["outcome"] == "refused"


# -- behind a TLS-terminating proxy --------------------------------------------------------------

def from_proxy(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=15)


def escaped(issued: tls_certs.Issued) -> str:
    return urllib.parse.quote(issued.pem, safe="")  # as nginx's $ssl_client_escaped_cert


def test_certificate_header_from_the_trusted_proxy(proxied_gateway, pki, clients, citizen):
    header = {"X-Client-Cert": escaped(pki["bound"])}
    with from_proxy("127.0.0.2") as http:
        r = mtls_token(http, proxied_gateway, clients["ca"][0], headers=header)
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert claims_of(token)["cnf"] == {"x5t#S256": x5t(pki["bound"])}
        assert lookup(http, proxied_gateway, citizen, token, **header).status_code == 200
        assert_refused(lookup(http, proxied_gateway, citizen, token), 401, "token.binding", proxied_gateway)
        expired = mtls_token(http, proxied_gateway, clients["expired"][0],
                             headers={"X-Client-Cert": escaped(pki["expired"])})
        assert expired.status_code == 401  # the gateway checks the validity period itself
        garbage = lookup(http, proxied_gateway, citizen, token, **{"X-Client-Cert": "not%20a%20certificate"})
        assert_refused(garbage, 401, "token.binding", proxied_gateway)


def test_certificate_header_from_anyone_else_is_ignored(proxied_gateway, pki, clients, citizen):
    header = {"X-Client-Cert": escaped(pki["bound"])}
    with from_proxy("127.0.0.2") as http:
        token = mtls_token(http, proxied_gateway, clients["ca"][0], headers=header).json()["access_token"]
    with from_proxy("127.0.0.1") as http:
        assert mtls_token(http, proxied_gateway, clients["ca"][0], headers=header).status_code == 401
        assert_refused(lookup(http, proxied_gateway, citizen, token, **header), 401, "token.binding",
                       proxied_gateway)


def test_client_address_from_the_trusted_proxy_only(proxied_gateway, clients, citizen):
    cid, secret = clients["netproxy"]
    inside = {"X-Forwarded-For": "10.99.7.7"}
    with from_proxy("127.0.0.2") as http:
        token = http.post(f"{proxied_gateway.url}/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(cid, secret)).json()["access_token"]
        assert lookup(http, proxied_gateway, citizen, token, **inside).status_code == 200
        assert_refused(lookup(http, proxied_gateway, citizen, token, **{"X-Forwarded-For": "10.98.0.1"}), 403,
                       "access.source_not_allowed", proxied_gateway)
    with from_proxy("127.0.0.1") as http:  # not the proxy: its X-Forwarded-For is not believed
        assert_refused(lookup(http, proxied_gateway, citizen, token, **inside), 403, "access.source_not_allowed",
                       proxied_gateway)


# -- bad input at the admin API and `lgsp apply` ------------------------------------------------

@pytest.fixture(scope="module")
def admin_token(gateway) -> str:
    from helpers import get_token

    cid = f"mtls-admin-{uuid.uuid4().hex[:6]}"
    return get_token(gateway, cid, gateway.extra["admin"].create_client(cid, "admin desk", roles=["admin"]))


def test_bound_admin_token_needs_its_certificate_at_the_admin_api(tls_gateway, gateway, pki, clients):
    from lgsp.tls import registration

    admin = gateway.extra["admin"]
    cid = f"mtls-boundadmin-{uuid.uuid4().hex[:6]}"
    admin.create_client(cid, "admin desk with a certificate", roles=["admin"])
    registration.put(admin, cid, {"method": "tls_client_auth", "subject_dn": pki["other"].subject})
    with tls_client(pki, "other") as http:
        token = mtls_token(http, tls_gateway, cid).json()["access_token"]
        assert http.get(f"{tls_gateway.url}/admin/v1/clients", headers={"Authorization": f"Bearer {token}"}
                        ).status_code == 200
    with tls_client(pki) as http:
        r = http.get(f"{tls_gateway.url}/admin/v1/clients", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.json()["code"] == "token.binding", r.text


def test_admin_api_binds_and_refuses_malformed_input(gateway, pki, clients, admin_token):
    cid = clients["plain"][0]
    url = f"{gateway.url}/admin/v1/clients/{cid}/binding"
    auth = {"Authorization": f"Bearer {admin_token}"}
    good = httpx.put(url, json={"method": "self_signed_tls_client_auth", "certificate": pki["intruder"].pem,
                                "allowed_networks": ["127.0.0.0/8"]}, headers=auth)
    assert good.status_code == 200, good.text
    assert good.json()["thumbprint"] == x5t(pki["intruder"])
    broken_pem = pki["intruder"].pem.replace("\n", "", 3)[:-80] + "\n-----END CERTIFICATE-----\n"
    for body, code in [
        ({"method": "self_signed_tls_client_auth", "certificate": broken_pem}, "admin.certificate_invalid"),
        ({"method": "self_signed_tls_client_auth", "certificate": "hello"}, "admin.certificate_invalid"),
        ({"method": "tls_client_auth", "subject_dn": "no equals sign"}, "admin.certificate_invalid"),
        ({"method": "tls_client_auth", "subject_dn": pki["bound"].subject, "allowed_networks": ["10.0.0.0/33"]},
         "admin.network_invalid"),
        ({"allowed_networks": ["10.0.0.1/8"]}, "admin.network_invalid"),
    ]:
        r = httpx.put(url, json=body, headers=auth)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
        assert "Traceback" not in r.text
    after = httpx.get(url, headers=auth).json()
    assert after["thumbprint"] == x5t(pki["intruder"]) and after["allowed_networks"] == ["127.0.0.0/8"]
    assert httpx.delete(url, headers=auth).status_code == 204
    assert httpx.get(url, headers=auth).status_code == 404
    unknown = httpx.put(f"{gateway.url}/admin/v1/clients/no-such-client/binding", json={"allowed_networks": []},
                        headers=auth)
    assert unknown.status_code in (400, 404, 422) and unknown.json()["code"].startswith("admin.")


def test_apply_with_a_malformed_certificate_applies_nothing(gateway, pki, tmp_path):
    cid = f"mtls-apply-{uuid.uuid4().hex[:6]}"
    good = tmp_path / "good.yaml"
    good.write_text(f"clients:\n  {cid}:\n    name: Applied\n    binding:\n      method: tls_client_auth\n"
                    f"      subject_dn: \"{pki['bound'].subject}\"\n      allowed_networks: [10.1.0.0/16]\n")
    first = lgsp_cli({}, "apply", "-f", str(good), check=False)
    assert first.returncode == 0 and f"+ binding {cid}" in first.stdout, first.stdout + first.stderr
    again = lgsp_cli({}, "apply", "-f", str(good), check=False)
    assert again.stdout.strip().endswith("no changes"), again.stdout
    newcomer = f"mtls-apply-{uuid.uuid4().hex[:6]}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"clients:\n  {newcomer}:\n    name: Never\n  {cid}:\n    name: Applied\n    binding:\n"
                   f"      method: self_signed_tls_client_auth\n      certificate: \"-----BEGIN CERTIFICATE-----\\n"
                   f"AAAA\\n-----END CERTIFICATE-----\\n\"\n")
    refused = lgsp_cli({}, "apply", "-f", str(bad), check=False)
    assert refused.returncode != 0 and "certificate" in refused.stderr and "Traceback" not in refused.stderr
    assert newcomer not in {c["client_id"] for c in gateway.extra["admin"].list_clients()}
    from lgsp.tls import registration

    assert registration.get(gateway.extra["admin"], cid)["method"] == "tls_client_auth"
