"""The SOAP door end to end, with zeep as the client from the served WSDL."""
from __future__ import annotations

import re
import subprocess
import sys
import uuid

import httpx
import pytest
import zeep
from helpers import NS, audit_of, fault_code, wait_for_config, zeep_client
from lxml import etree
from zeep.wsse.username import UsernameToken

PURPOSE = "administrative-procedure"
FIELDS = ["personal_id", "full_name", "gender", "birth_date", "permanent_address"]


@pytest.fixture(scope="module")
def citizen() -> str:
    out = subprocess.run([sys.executable, "-m", "lgsp_adapters.population.simulator", "--list", "1"],
                         capture_output=True, text=True, check=True).stdout
    return re.findall(r"^(\d{12})\t", out, re.M)[0]


@pytest.fixture(scope="module")
def soap_client(gateway):
    admin = gateway.extra["admin"]
    cid = f"soap-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Legacy document system", "000.00.35.H30")
    admin.add_grant(cid, "population.citizen.get", FIELDS, [PURPOSE])
    admin.add_grant(cid, "population.citizen.verify", ["match"], [PURPOSE])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return cid, secret


def token_for(gateway, cid: str, secret: str) -> str:
    r = httpx.post(f"{gateway.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cid, secret))
    return r.json()["access_token"]


def test_wsdl_is_served_with_this_gateway_as_address(gateway):
    r = httpx.get(f"{gateway.url}/soap/v1?wsdl")
    assert r.status_code == 200 and f'location="{gateway.url}/soap/v1"' in r.text


@pytest.mark.parametrize("port", ["Soap11", "Soap12"])
def test_lookup_with_bearer_token_over_soap_11_and_12(gateway, soap_client, citizen, port):
    client = zeep_client(gateway, token=token_for(gateway, *soap_client))
    service = client.bind("LgspSharedServices", port)
    found = service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE, on_behalf_of="officer-9",
                                         request_id=f"soap-{port}")
    assert found.personal_id == citizen and found.full_name
    assert found.religion is None and found.father is None  # not in the grant
    record = audit_of(gateway, f"soap-{port}")
    assert record["door"] == "soap" and record["outcome"] == "ok" and record["officer"] == "officer-9"


def test_ws_security_username_token(gateway, soap_client, citizen):
    cid, secret = soap_client
    client = zeep_client(gateway, wsse=UsernameToken(cid, secret))
    found = client.service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE)
    assert found.personal_id == citizen
    assert client.service.PopulationCitizenVerify(personal_id=citizen, full_name=found.full_name,
                                                  birth_date=found.birth_date, purpose=PURPOSE) is True


def test_wrong_username_token_is_a_fault(gateway, soap_client, citizen):
    client = zeep_client(gateway, wsse=UsernameToken(soap_client[0], "wrong"))
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE)
    assert fault_code(err.value) == "auth.token_invalid"


@pytest.mark.parametrize("kwargs,code", [
    ({"purpose": "marketing"}, "purpose.not_allowed"),
    ({}, "purpose.missing"),
])
def test_authorization_faults_carry_the_same_codes(gateway, soap_client, citizen, kwargs, code):
    client = zeep_client(gateway, token=token_for(gateway, *soap_client))
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.PopulationCitizenGet(personal_id=citizen, **kwargs)
    assert fault_code(err.value) == code


def test_no_credentials_is_a_fault(gateway, citizen):
    with pytest.raises(zeep.exceptions.Fault) as err:
        zeep_client(gateway).service.PopulationCitizenGet(personal_id=citizen, purpose=PURPOSE)
    assert fault_code(err.value) == "auth.token_missing"


def raw(gateway, body: bytes, content_type: str = "text/xml; charset=utf-8", **headers) -> httpx.Response:
    return httpx.post(f"{gateway.url}/soap/v1", content=body, headers={"Content-Type": content_type, **headers})


def envelope(inner: str) -> bytes:
    return (f'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:l="urn:lgsp:soap:v1"><soap:Body>{inner}</soap:Body></soap:Envelope>').encode()


def fault_of(resp: httpx.Response) -> str:
    assert resp.status_code in (400, 500), resp.text
    doc = etree.fromstring(resp.content)
    return doc.find(".//lgsp:Error/lgsp:code", NS).text


def test_malformed_personal_id_is_refused_before_any_backend(gateway, soap_client):
    token = token_for(gateway, *soap_client)
    r = raw(gateway, envelope("<l:PopulationCitizenGet><l:personal_id>12345</l:personal_id>"
                              f"<l:purpose>{PURPOSE}</l:purpose></l:PopulationCitizenGet>"),
            Authorization=f"Bearer {token}")
    assert fault_of(r) == "personal_id.malformed"
    assert audit_of(gateway, r.headers["x-request-id"])["error_code"] == "personal_id.malformed"


def test_unknown_operation_is_a_fault(gateway, soap_client):
    r = raw(gateway, envelope("<l:DropAllTables/>"), Authorization=f"Bearer {token_for(gateway, *soap_client)}")
    assert fault_of(r) == "request.not_found"


LAUGHS = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{"&lol%s;" % ("" if i == 1 else i - 1) * 10}">' for i in range(1, 10))
          + ']><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&lol9;</soap:Body></soap:Envelope>')
ATTACKS = {
    "billion laughs": LAUGHS.encode(),
    "quadratic blow-up": ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "' + "x" * 20000 + '">]>'
                          '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
                          + "&x;" * 2000 + "</soap:Body></soap:Envelope>").encode(),
    "external entity": envelope("<l:PopulationCitizenGet><l:personal_id>&xxe;</l:personal_id></l:PopulationCitizenGet>")
    .replace(b"<?xml version=\"1.0\"?>", b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'),
    "external DTD": envelope("<l:PopulationCitizenGet/>").replace(
        b'<?xml version="1.0"?>', b'<?xml version="1.0"?><!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">'),
    "deeply nested": envelope("<l:x>" * 5000 + "</l:x>" * 5000),
    "not XML": b"hello, this is not xml",
}


@pytest.mark.parametrize("name", ATTACKS)
def test_xml_attacks_are_refused_with_a_fault_and_audited(gateway, soap_client, name):
    r = raw(gateway, ATTACKS[name], Authorization=f"Bearer {token_for(gateway, *soap_client)}")
    code = fault_of(r)
    assert code in ("request.invalid", "request.too_large"), code
    assert "root:" not in r.text  # nothing of /etc/passwd
    assert audit_of(gateway, r.headers["x-request-id"])["outcome"] == "refused"
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200  # and the gateway is still there


def test_oversized_message_is_refused(gateway, soap_client):
    r = raw(gateway, envelope("<l:PopulationCitizenGet>" + "<!-- pad -->" * 10000 + "</l:PopulationCitizenGet>"),
            Authorization=f"Bearer {token_for(gateway, *soap_client)}")
    assert fault_of(r) == "request.too_large"


def test_soap12_fault_has_sender_code(gateway):
    body = envelope("<l:PopulationCitizenGet/>").replace(
        b"http://schemas.xmlsoap.org/soap/envelope/", b"http://www.w3.org/2003/05/soap-envelope")
    r = raw(gateway, body, "application/soap+xml; charset=utf-8")
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/soap+xml")
    assert b"soap:Sender" in r.content and fault_of(r) == "auth.token_missing"


PARAM = "<l:param><l:name>personal_id</l:name><l:value>{}</l:value></l:param>"
ODD_PARAMS = {
    "a name given twice": PARAM.format("{citizen}") + PARAM.format("001188012346"),
    "a param that is text": "<l:param>personal_id</l:param>",
    "a name with elements in it": "<l:param><l:name><l:x>1</l:x></l:name><l:value>v</l:value></l:param>",
}


@pytest.mark.parametrize("case", ODD_PARAMS)
def test_call_service_params_that_are_not_one_name_and_value_are_refused(gateway, soap_client, citizen, case):
    # The last of two names won, and a <param> that was not a name and a value was a soap:Server internal.error.
    body = envelope(f"<l:CallService><l:service>population.citizen.get</l:service>"
                    f"{ODD_PARAMS[case].format(citizen=citizen)}<l:purpose>{PURPOSE}</l:purpose></l:CallService>")
    r = raw(gateway, body, Authorization=f"Bearer {token_for(gateway, *soap_client)}")
    assert fault_of(r) == "request.invalid" and b"soap:Client" in r.content, r.text
    record = audit_of(gateway, r.headers["x-request-id"])
    assert record["outcome"] == "refused" and record["upstream"] is None


def test_call_service_by_name(gateway, soap_client, citizen):
    client = zeep_client(gateway, token=token_for(gateway, *soap_client))
    result = client.service.CallService(service="population.citizen.get",
                                        param=[{"name": "personal_id", "value": citizen}], purpose=PURPOSE)
    values = {etree.QName(el).localname: el.text for el in result}  # xs:any: zeep hands back the elements
    assert values["personal_id"] == citizen and values["full_name"]
    with pytest.raises(zeep.exceptions.Fault) as err:
        client.service.CallService(service="population.citizen.get", param=[], purpose=PURPOSE)
    assert fault_code(err.value) == "request.invalid"
