"""Shared code lists through the gateway: a token and a grant, no purpose, audited."""
from __future__ import annotations

import uuid

import httpx
import pytest
from helpers import get_token, wait_for_config

CODELIST_FIELDS = ["name", "version", "source", "note", "entries", "translations", "provinces", "communes",
                   "legacy_provinces", "legacy_districts", "legacy_communes"]


@pytest.fixture(scope="module")
def token(gateway):
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    cid = f"codes-{uuid.uuid4().hex[:6]}"
    secret = admin.create_client(cid, "Health sector system", "000.00.37.H30")
    admin.add_grant(cid, "codelists.list", ["codelists"], ["reference-data"])
    admin.add_grant(cid, "codelists.get", CODELIST_FIELDS, ["reference-data"])
    admin.add_grant(cid, "codelists.admin_unit.translate", ["province", "commune", "legacy"], ["reference-data"])
    wait_for_config(gateway.url, gateway.extra["engine"])
    return get_token(gateway, cid, secret)


def get(gateway, path: str, token: str | None, **params) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{gateway.url}/api/codelists/v1{path}", params=params, headers=headers)


def test_list_and_read_a_code_list_with_its_source_tables(gateway, token):
    names = {c["name"] for c in get(gateway, "/", token).json()["codelists"]}
    assert {"gender", "ethnic-groups", "religions", "admin-units"} <= names
    gender = get(gateway, "/gender", token).json()
    assert {e["code"] for e in gender["entries"]} >= {"male", "female"}
    assert gender["translations"]["population-db"]["codes"]["1"] == "male"
    assert gender["translations"]["criminal-records"]["codes"]["0"] == "female"


def test_admin_units_translate_old_codes_to_current(gateway, token):
    r = get(gateway, "/admin-units/translate", token, province="77")
    assert r.status_code == 200
    assert r.json()["province"]["code"] == "79" and r.json()["legacy"]["province_code"] == "77"
    assert get(gateway, "/admin-units/translate", token, province="79").json()["legacy"] is None


def test_unknown_code_list_and_no_token(gateway, token):
    r = get(gateway, "/no-such-list", token)
    assert r.status_code == 404 and r.json()["code"] == "record.not_found"
    assert get(gateway, "/gender", None).json()["code"] == "auth.token_missing"
