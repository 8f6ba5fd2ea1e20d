"""The provincial shared data store: datasets, publishing, queries, and both doors end to end.

Runs on the session's database (SQLite, or PostgreSQL with
LGSP_TEST_DATABASES=postgresql scripts/test tests/adapters/test_datastore.py): the
connection uses the LGSP's own database, as the default configuration does.
"""
from __future__ import annotations

import asyncio
import random
import string
import uuid
from xml.sax.saxutils import escape

import httpx
import orjson
import pytest
from helpers import ALL_FIELDS, DATASET, OWNER, assert_problem, audit_of, get_token, licence, wait_for_config
from lxml import etree
from sqlalchemy import select

from lgsp.adapter import CallContext, NotAllowed
from lgsp.pipeline.minimize import _tree, project_page
from lgsp_adapters.datastore import DatastoreAdapter, RecordInvalid
from lgsp_adapters.datastore.datasets import DatasetError, FilterError, build_dataset, load_datasets
from lgsp_adapters.datastore.store import records as records_table

RECEIPT = ["dataset", "key", "outcome", "version"]
# What the one-stop-shop system may see of a licence: no holder name, only the province of the address.
LIMITED = ["licence_number", "licence_type", "status", "address.province_code"]


# -- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_id() -> str:
    """Unique per run, so that tests never see each other's records."""
    return "".join(random.choices(string.ascii_uppercase, k=4))


@pytest.fixture(scope="module")
def store(gateway):
    admin = gateway.extra["admin"]
    admin.register_spec_services()
    admin.set_connection("datastore", "datastore", {})  # bundled datasets, the LGSP's own database
    return gateway


@pytest.fixture(scope="module")
def clients(store):
    """dept: the owner agency's licensing system; shop: a one-stop-shop system that reads, with fewer fields."""
    admin = store.extra["admin"]
    suffix = uuid.uuid4().hex[:6]
    dept, shop = f"licensing-{suffix}", f"one-stop-{suffix}"
    secrets = {dept: admin.create_client(dept, "Licensing system, Dept. of Industry and Trade", OWNER),
               shop: admin.create_client(shop, "One-stop shop", "000.00.31.H30")}
    purposes = ["public-records"]  # an admin grant names purposes; these services need none stated
    admin.add_grant(dept, "datastore.records.publish", RECEIPT, purposes)
    admin.add_grant(dept, "datastore.records.query", ALL_FIELDS, purposes)
    admin.add_grant(dept, "datastore.records.get", ALL_FIELDS, purposes)
    admin.add_grant(shop, "datastore.records.publish", RECEIPT, purposes)  # granted, but not the owner
    admin.add_grant(shop, "datastore.records.query", LIMITED, purposes)
    admin.add_grant(shop, "datastore.records.get", LIMITED, purposes)
    wait_for_config(store.url, store.extra["engine"])
    return {"dept": (dept, secrets[dept]), "shop": (shop, secrets[shop])}


@pytest.fixture(scope="module")
def dept(store, clients) -> dict:
    return {"Authorization": f"Bearer {get_token(store, *clients['dept'])}"}


@pytest.fixture(scope="module")
def shop(store, clients) -> dict:
    return {"Authorization": f"Bearer {get_token(store, *clients['shop'])}"}


def url(gw, path: str = "") -> str:
    return f"{gw.url}/api/datastore/v1/datasets/{DATASET}/records{path}"


def publish(gw, headers: dict, record: dict, key: str | None = None, **extra) -> httpx.Response:
    key = record["licence_number"] if key is None else key
    return httpx.put(url(gw, f"/{key}"), json=record, headers={**headers, **extra}, timeout=15)


def query(gw, headers: dict, **params) -> httpx.Response:
    return httpx.get(url(gw), params=params, headers=headers, timeout=15)


def row_of(gw, key: str) -> dict | None:
    with gw.extra["engine"].connect() as conn:
        row = conn.execute(select(records_table).where(records_table.c.dataset == DATASET,
                                                       records_table.c.key == key)).first()
    return dict(row._mapping) if row else None


def walk(gw, headers: dict, limit: int, **filters) -> list[list[dict]]:
    """Every page of a query, following next_cursor."""
    params = {f"filter[{k}]": v for k, v in filters.items()}
    pages, cursor = [], None
    while True:
        r = query(gw, headers, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        pages.append(r.json()["items"])
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100


# -- publishing ------------------------------------------------------------------------

def test_publish_creates_then_is_idempotent_then_updates(store, clients, dept, run_id):
    record = licence(run_id, 1)
    key = record["licence_number"]
    r = publish(store, dept, record, **{"X-Request-ID": f"ds-create-{run_id}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"dataset": DATASET, "key": key, "outcome": "created", "version": 1}
    row = row_of(store, key)
    assert row["data"] == record and row["version"] == 1 and row["published_by"] == clients["dept"][0]
    record_ = audit_of(store, f"ds-create-{run_id}")
    assert record_["service"] == "datastore.records.publish" and record_["outcome"] == "ok"
    assert record_["client_id"] == clients["dept"][0] and record_["upstream"] == f"datastore:{DATASET}"

    again = publish(store, dept, dict(record))
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged" and again.json()["version"] == 1
    assert row_of(store, key)["updated_at"] == row["updated_at"]  # nothing was written

    changed = publish(store, dept, dict(record, status="suspended", status_reason="Quyết định 12/QĐ-SCT"))
    assert changed.status_code == 200 and changed.json()["outcome"] == "updated" and changed.json()["version"] == 2
    assert row_of(store, key)["data"]["status"] == "suspended"
    with store.extra["engine"].connect() as conn:
        rows = conn.execute(select(records_table.c.key).where(records_table.c.key == key)).all()
    assert len(rows) == 1


def test_record_that_does_not_fit_the_schema_is_refused_with_every_reason(store, dept, run_id):
    bad = licence(run_id, 2, status="closed", issued_on="2024-02-30", enterprise_code="12345")
    del bad["holder_name"]
    body = assert_problem(publish(store, dept, bad), 422, "record.invalid")
    for reason in ("status", "'closed'", "issued_on", "enterprise_code", "holder_name"):
        assert reason in body["detail"], body["detail"]
    assert row_of(store, bad["licence_number"]) is None


def test_key_in_the_address_must_be_the_records_key(store, dept, run_id):
    record = licence(run_id, 3)
    body = assert_problem(publish(store, dept, record, key=f"SCT-{run_id}-2024-99999"), 422, "record.invalid")
    assert record["licence_number"] in body["detail"]


def test_only_the_owner_agency_may_publish(store, clients, shop, run_id):
    record = licence(run_id, 4)
    r = publish(store, shop, record, **{"X-Request-ID": f"ds-notowner-{run_id}"})
    body = assert_problem(r, 403, "access.not_owner")
    assert OWNER in body["detail"] and clients["shop"][0] in body["detail"]
    assert row_of(store, record["licence_number"]) is None
    assert audit_of(store, f"ds-notowner-{run_id}")["outcome"] == "refused"


def test_publish_needs_a_json_object_body(store, dept, run_id):
    r = httpx.put(url(store, f"/SCT-{run_id}-2024-00005"), content=b"[1, 2]",
                  headers={**dept, "Content-Type": "application/json"})
    assert_problem(r, 400, "request.invalid")


# -- reading ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(store, dept, run_id) -> dict[str, dict]:
    """Eleven licences of one enterprise of this run, with varied type, status and dates."""
    code = "".join(random.choices(string.digits, k=10))
    out = {}
    for n in range(10, 21):
        record = licence(run_id, n, enterprise_code=code,
                         licence_type="tobacco-retail" if n % 3 == 0 else "alcohol-retail",
                         status="revoked" if n % 4 == 0 else "valid",
                         address={"detail": f"{n} Lê Lợi", "commune_code": "26743" if n % 2 else "20236",
                                  "province_code": "79" if n % 2 else "48"})
        assert publish(store, dept, record).json()["outcome"] == "created"
        out[record["licence_number"]] = record
    return out


def test_pages_cover_every_record_once_in_key_order(store, dept, published):
    code = next(iter(published.values()))["enterprise_code"]
    pages = walk(store, dept, 4, enterprise_code=code)
    assert [len(p) for p in pages] == [4, 4, 3]
    keys = [item["licence_number"] for page in pages for item in page]
    assert keys == sorted(published)
    assert pages[0][0] == published[keys[0]]  # whole records for a grant of all fields


def test_cursor_is_stable_while_records_are_published(store, dept, run_id):
    """Records present for the whole walk are each seen exactly once, whatever is published meanwhile."""
    code = "".join(random.choices(string.digits, k=10))
    keys = []
    for n in range(70, 78):
        record = licence(run_id, n, enterprise_code=code)
        assert publish(store, dept, record).json()["outcome"] == "created"
        keys.append(record["licence_number"])
    first = query(store, dept, limit=5, **{"filter[enterprise_code]": code}).json()
    # While the walk goes on: one record that sorts before the page already read, one after it.
    early = licence(run_id, 69, enterprise_code=code)
    late = licence(run_id, 99, enterprise_code=code)
    for record in (early, late):
        assert publish(store, dept, record).json()["outcome"] == "created"
    seen = [i["licence_number"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = query(store, dept, limit=5, cursor=cursor, **{"filter[enterprise_code]": code}).json()
        seen += [i["licence_number"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert seen == sorted(keys + [late["licence_number"]])  # each once, in key order; the early one is behind


def test_filters_on_declared_fields(store, dept, published):
    code = next(iter(published.values()))["enterprise_code"]

    def keys(**filters) -> set[str]:
        return {i["licence_number"] for page in walk(store, dept, 200, enterprise_code=code, **filters) for i in page}

    def expected(pred) -> set[str]:
        return {k for k, r in published.items() if pred(r)}

    assert keys(status="revoked") == expected(lambda r: r["status"] == "revoked") != set()
    assert keys(licence_type="tobacco-retail", status="valid") == expected(
        lambda r: r["licence_type"] == "tobacco-retail" and r["status"] == "valid")
    assert keys(**{"address.province_code": "79"}) == expected(lambda r: r["address"]["province_code"] == "79")
    assert keys(**{"issued_on.gte": "2024-03-15", "issued_on.lte": "2024-06-15"}) == expected(
        lambda r: "2024-03-15" <= r["issued_on"] <= "2024-06-15") != set()


@pytest.mark.parametrize("params,fragment", [
    ({"filter[holder_name]": "x"}, "cannot be filtered on 'holder_name'"),
    ({"filter[status.gte]": "a"}, "equality only"),
    ({"filter[issued_on.gte]": "15/03/2024"}, "YYYY-MM-DD"),
    ({"limit": "500"}, "maximum of 200"),
    ({"colour": "red"}, "colour"),
])
def test_bad_query_parameters_are_refused_with_a_sentence(store, dept, params, fragment):
    body = assert_problem(query(store, dept, **params), 400, "request.invalid")
    assert fragment in body["detail"], body["detail"]


def test_get_one_record_and_unknown_ones(store, dept, published):
    key = sorted(published)[0]
    r = httpx.get(url(store, f"/{key}"), headers=dept)
    assert r.status_code == 200 and r.json() == published[key]
    body = assert_problem(httpx.get(url(store, "/SCT-NONE-2024-00000"), headers=dept), 404, "record.not_found")
    assert "SCT-NONE-2024-00000" in body["detail"]
    other = httpx.get(f"{store.url}/api/datastore/v1/datasets/land-parcels/records/x", headers=dept)
    assert DATASET in assert_problem(other, 404, "request.not_found")["detail"]


def test_minimisation_applies_to_each_record_of_a_page(store, shop, published, run_id):
    kind = next(iter(published.values()))["licence_type"]  # a filter on a field the grant shows
    r = query(store, {**shop, "X-Request-ID": f"ds-min-{run_id}"}, limit=3, **{"filter[licence_type]": kind})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["next_cursor"]  # the page's own members stay
    assert len(page["items"]) == 3
    for item in page["items"]:
        assert set(item) == {"licence_number", "licence_type", "status", "address"}
        assert set(item["address"]) == {"province_code"}
    assert audit_of(store, f"ds-min-{run_id}")["fields"] == ["address", "licence_number", "licence_type", "status"]
    one = httpx.get(url(store, f"/{sorted(published)[0]}"), headers=shop).json()
    assert set(one) == {"licence_number", "licence_type", "status", "address"} and "holder_name" not in one


# -- the other doors ---------------------------------------------------------------------

def test_call_by_name_takes_flat_filters_and_text_limit(store, dept, published):
    """The services API and the SOAP door pass parameters as flat name/value text."""
    code = next(iter(published.values()))["enterprise_code"]
    r = httpx.post(f"{store.url}/api/services/v1/datastore.records.query", headers=dept,
                   json={"dataset": DATASET, "filter.enterprise_code": code, "filter.status": "revoked", "limit": "2"})
    assert r.status_code == 200, r.text
    assert {i["licence_number"] for i in r.json()["items"]} <= {k for k, v in published.items()
                                                                if v["status"] == "revoked"}


def test_soap_door_publishes_and_queries(store, dept, run_id):
    record = licence(run_id, 40, licence_type="lpg-retail")

    def call(service: str, **params: str) -> etree._Element:
        pairs = "".join(f"<l:param><l:name>{k}</l:name><l:value>{v}</l:value></l:param>" for k, v in params.items())
        body = (f'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
                f'xmlns:l="urn:lgsp:soap:v1"><soap:Body><l:CallService><l:service>{service}</l:service>{pairs}'
                f'</l:CallService></soap:Body></soap:Envelope>').encode()
        r = httpx.post(f"{store.url}/soap/v1", content=body,
                       headers={**dept, "Content-Type": "text/xml; charset=utf-8"})
        assert r.status_code == 200, r.text
        return etree.fromstring(r.content)

    # The record travels as JSON text in a name/value pair.
    doc = call("datastore.records.publish", dataset=DATASET, record=escape(orjson.dumps(record).decode()))
    assert doc.findtext(".//{urn:lgsp:soap:v1}outcome") == "created"
    doc = call("datastore.records.get", dataset=DATASET, key=record["licence_number"])
    assert doc.findtext(".//{urn:lgsp:soap:v1}licence_type") == "lpg-retail"


# -- the adapter on its own ----------------------------------------------------------------

def test_concurrent_publishes_of_one_record_create_it_once(lgsp_env, run_id):
    adapter = DatastoreAdapter({}, database_url=lgsp_env["LGSP_DATABASE_URL"])
    record = licence(run_id, 50)
    context = CallContext(request_id="concurrent", client_id="licensing", agency_code=OWNER)

    async def burst() -> list[str]:
        calls = [adapter.call("records.publish", {"dataset": DATASET, "record": record}, context) for _ in range(6)]
        return [r.data["outcome"] for r in await asyncio.gather(*calls)]

    outcomes = asyncio.run(burst())
    assert sorted(outcomes) == ["created"] + ["unchanged"] * 5


def test_a_connection_may_keep_its_records_in_another_database(tmp_path, run_id):
    adapter = DatastoreAdapter({}, database_url=f"sqlite:///{tmp_path / 'store.db'}")
    context = CallContext(request_id="other-db", client_id="licensing", agency_code=OWNER)
    record = licence(run_id, 60)

    async def roundtrip():
        await adapter.call("records.publish", {"dataset": DATASET, "record": record}, context)
        return await adapter.call("records.get", {"dataset": DATASET, "key": record["licence_number"]}, context)

    assert asyncio.run(roundtrip()).data == record
    with pytest.raises(NotAllowed):
        asyncio.run(adapter.call("records.publish", {"dataset": DATASET, "record": record},
                                 CallContext(request_id="x", client_id="shop", agency_code="000.00.31.H30")))
    with pytest.raises(RecordInvalid):
        asyncio.run(adapter.call("records.publish", {"dataset": DATASET, "record": "{not json"}, context))


def test_bundled_declaration_loads_and_bad_declarations_say_why(tmp_path):
    dataset = load_datasets([_bundled()])[DATASET]
    assert dataset.owner == OWNER and dataset.key_fields == ("licence_number",)
    assert dataset.filters["issued_on"].ranged and not dataset.filters["status"].ranged
    base = {"name": "x", "version": 1, "owner": OWNER, "key": "id",
            "schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"},
                                                                            "tags": {"type": "array"}}}}
    assert build_dataset(base).name == "x"
    for change, fragment in [({"key": "nope"}, "key field 'nope'"), ({"filters": ["tags"]}, "filter 'tags'"),
                             ({"filters": ["missing"]}, "not a property"), ({"owner": None}, "owner"),
                             ({"schema": {"type": "nonsense"}}, "not valid JSON Schema")]:
        with pytest.raises(DatasetError) as err:
            build_dataset({**base, **change})
        assert fragment in str(err.value)
    (tmp_path / "a.yaml").write_text("name: [unclosed")
    with pytest.raises(DatasetError, match="a.yaml"):
        load_datasets(str(tmp_path))
    with pytest.raises(FilterError):
        dataset.conditions({"expires_on.gte": "2024-1-1"})


def _bundled() -> str:
    from lgsp_adapters.datastore import bundled_datasets

    return f"{bundled_datasets()}/{DATASET}.yaml"


def test_project_page_keeps_the_envelope_and_projects_each_record():
    page = {"items": [{"a": 1, "b": 2, "c": {"d": 3, "e": 4}}, {"a": None, "b": 5}], "next_cursor": "x"}
    out, fields = project_page(page, "items", _tree(("a", "c.d")))
    assert out == {"items": [{"a": 1, "c": {"d": 3}}, {"a": None}], "next_cursor": "x"}
    assert fields == ["a", "c"]
