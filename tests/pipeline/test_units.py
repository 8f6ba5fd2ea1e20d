"""Unit tests of single functions: personal IDs, minimisation, XML hardening, log masking, audit chains."""
from __future__ import annotations

import datetime as dt
import logging

import pytest
from helpers import ROOT

from lgsp import personal_id, soap
from lgsp.audit.verify import check_chain
from lgsp.audit.writer import GENESIS, record_hash
from lgsp.errors import ERRORS, ExchangeError, problem
from lgsp.logs import JsonFormatter, mask
from lgsp.pipeline.minimize import _tree, project

# -- personal ID ---------------------------------------------------------------------

def test_personal_id_decodes_province_year_and_gender():
    pid = personal_id.parse("001085012345")
    assert (pid.province_code, pid.birth_year, pid.gender) == ("01", 1985, "male")
    assert personal_id.parse("048192054321").birth_year == 1992
    assert personal_id.parse("079212000001").gender == "male" and personal_id.parse("079312000001").gender == "female"
    assert personal_id.parse("079312000001").birth_year == 2012


def test_old_identity_card_is_accepted_as_is():
    assert personal_id.parse("012345678").is_old_card


@pytest.mark.parametrize("value,code", [
    ("", "personal_id.malformed"), ("12345678901", "personal_id.malformed"), ("0010850123456", "personal_id.malformed"),
    ("00108501234a", "personal_id.malformed"), ("００１０８５０１２３４５", "personal_id.malformed"),
    ("003085012345", "personal_id.impossible"), ("101085012345", "personal_id.impossible"),
    ("001985012345", "personal_id.impossible"),
])
def test_personal_id_refusals(value, code):
    with pytest.raises(personal_id.PersonalIdError) as err:
        personal_id.parse(value, today=dt.date(2026, 11, 22))
    assert err.value.code == code


def test_make_round_trips():
    pid = personal_id.make("48", 2003, "female", 42)
    parsed = personal_id.parse(pid)
    assert (parsed.province_code, parsed.birth_year, parsed.gender) == ("48", 2003, "female")


# -- minimisation ----------------------------------------------------------------------

CITIZEN = {
    "full_name": "Lê Thị Mai", "religion": {"code": "0", "name": "Không"},
    "permanent_address": {"province": {"code": "48", "name": "Đà Nẵng"}, "detail": "12 Bạch Đằng"},
    "father": {"full_name": "Lê Văn Ba", "personal_id": "048060000001"},
}


def test_minimize_keeps_only_granted_fields():
    assert project(CITIZEN, _tree(("full_name",))) == {"full_name": "Lê Thị Mai"}


def test_minimize_dotted_paths_allow_part_of_an_object():
    out = project(CITIZEN, _tree(("permanent_address.province", "father.full_name")))
    assert out == {"permanent_address": {"province": {"code": "48", "name": "Đà Nẵng"}},
                   "father": {"full_name": "Lê Văn Ba"}}


def test_minimize_whole_object_wins_over_a_part():
    assert project(CITIZEN, _tree(("father", "father.full_name")))["father"] == CITIZEN["father"]


def test_minimize_empty_grant_gives_nothing():
    assert project(CITIZEN, _tree(())) == {}


# -- XML hardening -----------------------------------------------------------------------

ATTACKS = {
    "billion laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><a>&lol2;</a>',
    "external entity": b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><a>&xxe;</a>',
    "external DTD": b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:1/evil.dtd"><a/>',
    "deep nesting": b"<a>" * 200 + b"</a>" * 200,
    "not XML": b"this is not xml",
}


@pytest.mark.parametrize("name", ATTACKS)
def test_hardened_parser_refuses_attacks(name):
    with pytest.raises(soap.XmlRefused):
        soap.parse(ATTACKS[name])


def test_nesting_limit_is_exact():
    """64 levels (the root is one) are accepted, 65 refused, however wide the levels above are."""
    deepest = b"<a>" * soap.MAX_DEPTH + b"</a>" * soap.MAX_DEPTH
    assert soap.parse(deepest).tag == "a"
    wide = b"<r>" + b"<b/>" * 50 + b"<a>" * soap.MAX_DEPTH + b"</a>" * soap.MAX_DEPTH + b"</r>"
    with pytest.raises(soap.XmlRefused, match="deeper than 64"):
        soap.parse(wide)


def test_to_dict_drops_empty_leaves_and_lists_repeats():
    root = soap.parse(b"<r><a>1</a><b/><c><d>x</d></c><e>1</e><e>2</e><f><g/></f></r>")
    assert soap.to_dict(root) == {"a": "1", "c": {"d": "x"}, "e": ["1", "2"]}


def test_to_dict_reads_local_names_and_skips_what_is_not_an_element():
    root = soap.parse(b'<r xmlns="urn:x" xmlns:y="urn:y"><y:a> 1 </y:a><a>2</a><c>  </c><d><y:e/></d>'
                      b"<f><![CDATA[z]]></f></r>")
    assert soap.to_dict(root) == {"a": ["1", "2"], "f": "z"}


def test_fault_is_read_from_soap11_body():
    env = soap.parse(
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        b"<faultcode>s:Client</faultcode><faultstring>Bad ID</faultstring>"
        b"<detail><Loi><MaLoi>03</MaLoi></Loi></detail></s:Fault></s:Body></s:Envelope>"
    )
    fault = soap.fault_of(soap.body_of(env))
    assert (fault.code, fault.message, fault.detail) == ("s:Client", "Bad ID", {"Loi": {"MaLoi": "03"}})


# -- errors and logs ------------------------------------------------------------------------

def test_every_error_code_renders_as_problem():
    for code, kind in ERRORS.items():
        body = problem(code, "A sentence.", "rid")
        assert body["status"] == kind.status and body["code"] == code and body["type"].endswith(code)
        assert ExchangeError(code, "x").outcome == ("refused" if kind.status < 500 else "failed")


def test_unknown_error_code_is_a_programming_error():
    with pytest.raises(ValueError):
        ExchangeError("no.such.code", "x")


def test_logs_mask_personal_ids():
    assert mask("lookup 001085012345 and card 012345678 at 2026") == "lookup 001********* and card 012****** at 2026"
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed for %s", ("079040067890",), None)
    assert "079040067890" not in JsonFormatter().format(record)


# -- audit chain -----------------------------------------------------------------------------

def _chain(n: int) -> list[dict]:
    rows, prev = [], GENESIS
    for i in range(1, n + 1):
        row = {"id": i, "chain": "c", "seq": i, "prev_hash": prev, "at": dt.datetime(2026, 11, 22, tzinfo=dt.timezone.utc),
               "kind": "exchange", "outcome": "ok", "status": 200, "fields": ["full_name"], "latency_ms": 1.5}
        row["hash"] = prev = record_hash(row)
        rows.append(row)
    return rows


def verify_rows(rows):
    return check_chain("c", rows, [], {})[0]


def test_intact_chain_has_no_findings():
    assert verify_rows(_chain(5)) == []


def test_edited_record_is_found():
    rows = _chain(5)
    rows[2]["outcome"] = "refused"
    assert [(f.kind, f.record_ids) for f in verify_rows(rows)] == [("edited", (3,))]


def test_deleted_and_reordered_records_are_found():
    rows = _chain(5)
    assert verify_rows(rows[:2] + rows[3:])
    assert verify_rows([rows[0], rows[2], rows[1], rows[3], rows[4]])


def test_naive_and_aware_timestamps_hash_alike():
    row = _chain(1)[0]
    naive = dict(row, at=row["at"].replace(tzinfo=None))
    assert record_hash(naive) == row["hash"]


def test_population_request_envelope_escapes_values_and_cannot_be_confused_by_slots():
    from lxml import etree

    from lgsp.adapter import CallContext
    from lgsp_adapters.population import PopulationAdapter

    adapter = PopulationAdapter({"endpoint": "http://127.0.0.1:9/dancu", "integration_code": "I",
                                 "account": "A", "agency_code": "000.00.00.H30"})
    ctx = CallContext(request_id="r-1", client_id="c", agency_code=None, officer="LGSPSLOT006X<&>")
    fields = adapter._request_fields("citizen.get", {"personal_id": "001085012345"}, ctx, "r-1")
    body = adapter._envelope("citizen.get", fields)
    again = adapter._envelope("citizen.get", fields)  # from the cached template
    assert body == again
    values = {etree.QName(el).localname: el.text for el in etree.fromstring(body).iter() if len(el) == 0}
    assert values["MaCanBo"] == "LGSPSLOT006X<&>" and values["SoDinhDanh"] == "001085012345"
    assert values["MaYeuCau"] == "r-1" and values["MaDonVi"] == "000.00.00.H30"


def test_every_error_code_is_documented():
    
    doc = (ROOT / "docs" / "errors.md").read_text()
    assert [code for code in ERRORS if f"`{code}`" not in doc] == []


def test_the_error_code_type_lists_exactly_the_table():
    """ErrorCode (a Literal, for the type checker) and the ERRORS table name the same codes."""
    from typing import get_args

    from lgsp.errors import ErrorCode

    assert sorted(get_args(ErrorCode)) == sorted(ERRORS)
