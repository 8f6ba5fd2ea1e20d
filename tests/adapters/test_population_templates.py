"""The population adapter's request templates: rendered from the WSDL by zeep at start-up, filled per
exchange without zeep. Each filled template must be valid against the WSDL's schema and say exactly
what zeep itself would send for the same request (same elements, order, namespaces and values)."""
from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from lgsp.adapter import CallContext
from lgsp_adapters.population import LIST_OPERATIONS, SOAP_OPERATIONS, PopulationAdapter, default_wsdl

SETTINGS = {"endpoint": "http://127.0.0.1:9/dancu", "integration_code": "TICH-HOP", "account": "tai-khoan",
            "agency_code": "000.00.00.H30"}
WSDL = "http://schemas.xmlsoap.org/wsdl/"
XSD = "http://www.w3.org/2001/XMLSchema"
# Values a template slot must carry safely: markup characters, Vietnamese text, a slot-like string.
AWKWARD = "Nguyễn <Văn> & \"An\" 'x' LGSPSLOT000X"


@pytest.fixture(scope="module")
def adapter():
    return PopulationAdapter(SETTINGS)


@pytest.fixture(scope="module")
def schema():
    """The WSDL's types (with the schema they import) as an lxml schema."""
    wsdl = etree.parse(default_wsdl())
    inline = wsdl.find(f"{{{WSDL}}}types/{{{XSD}}}schema")
    doc = etree.fromstring(etree.tostring(inline), base_url=Path(default_wsdl()).as_uri())
    return etree.XMLSchema(doc)


def requests() -> list[tuple[str, dict, CallContext]]:
    """Every single-person operation, in its start-up shape and in the rarer shapes."""
    officer = CallContext(request_id="r-1", client_id="clerk", agency_code="000.00.31.H30", officer=AWKWARD)
    nobody = CallContext(request_id="r-2", client_id="clerk")
    out = []
    for operation, params in PopulationAdapter.examples.items():
        if operation in LIST_OPERATIONS:
            continue
        out += [(operation, params, officer), (operation, params, nobody),
                (operation, {**params, "personal_id": "012345678"}, officer)]  # a 9-digit ID: SoCMND
    verify = PopulationAdapter.examples["citizen.verify"]
    out += [("citizen.verify", {**verify, "birth_date": "1985", "full_name": AWKWARD}, officer)]
    return out


def canonical(xml: bytes) -> bytes:
    return etree.tostring(etree.fromstring(xml), method="c14n")


def test_templates_are_ready_before_the_first_exchange(adapter):
    prepared = {operation for operation, _ in adapter._templates}
    assert prepared == set(SOAP_OPERATIONS) - set(LIST_OPERATIONS)
    # Every shape below was rendered at start-up, by zeep in a child process: this one never loaded it.
    for operation, params, context in requests():
        adapter._envelope(operation, adapter._request_fields(operation, params, context, "trace-1"))
    assert adapter._contract is None


@pytest.mark.parametrize("operation,params,context", requests())
def test_a_filled_template_is_what_zeep_sends_and_fits_the_schema(adapter, schema, operation, params, context):
    fields = adapter._request_fields(operation, params, context, "trace-1")
    sent = adapter._envelope(operation, fields)
    zeep_sent = adapter.contract.message(operation, {k: v for k, v in fields.items() if v is not None})
    assert canonical(sent) == canonical(zeep_sent)
    body = etree.fromstring(sent).find("{*}Body")[0]
    assert schema.validate(body), schema.error_log
    if context.officer:  # the awkward value arrives as text, not as markup or a slot
        assert AWKWARD in [el.text for el in body.iter()]


def test_rendered_templates_are_kept_by_content_not_by_name(tmp_path, monkeypatch):
    """A connection change that moves only the endpoint reuses the rendering; a WSDL or schema file
    changed in place is rendered again; a WSDL on the network is rendered every time."""
    import shutil

    import lgsp_adapters.population as population

    for path in Path(default_wsdl()).parent.glob("*.[wx]s*"):
        shutil.copy(path, tmp_path / path.name)
    rendered: list[str] = []
    monkeypatch.setattr(population, "wsdl_directory", lambda: tmp_path)
    monkeypatch.setattr(population, "_PREPARED", {})

    def render(asked: dict) -> dict:
        rendered.append(asked["endpoint"])
        return {}

    monkeypatch.setattr(population, "_render_in_child", render)
    asked = {"wsdl": str(tmp_path / "population.wsdl"), "directory": str(tmp_path), "operations": {}, "shapes": []}

    population.prepare_in_child({**asked, "endpoint": "http://a.example/dancu"})
    population.prepare_in_child({**asked, "endpoint": "http://b.example/dancu"})
    assert rendered == ["http://a.example/dancu"]
    schema = tmp_path / "population.xsd"
    schema.write_bytes(schema.read_bytes() + b"\n<!-- changed -->\n")
    population.prepare_in_child({**asked, "endpoint": "http://b.example/dancu"})
    assert rendered == ["http://a.example/dancu", "http://b.example/dancu"]
    online = {**asked, "wsdl": "http://wsdl.example/dancu?wsdl", "endpoint": "http://c.example/dancu"}
    population.prepare_in_child(online)
    population.prepare_in_child(online)
    assert rendered[2:] == ["http://c.example/dancu"] * 2
