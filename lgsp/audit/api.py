"""Handlers of the audit API (openapi/audit.v1.yaml), for clients with the auditor role.

connexion routes and validates each request from the spec; a handler checks the
token (scope `audit.read`), runs the query in lgsp.audit.search and answers.
Refusals raise ExchangeError, which the control plane renders as problem+json.
"""
from __future__ import annotations

from typing import Any

from flask import Response, current_app, g, render_template, request
from sqlalchemy import Engine

from lgsp.audit import search as audit_search
from lgsp.audit.writer import note_read
from lgsp.control.auth import claims_from_header
from lgsp.control.console import SECURITY_HEADERS
from lgsp.crypto import subject_hash
from lgsp.errors import ExchangeError

SCOPE = "audit.read"
NO_STORE = {"Cache-Control": "no-store"}
# The spec lists JSON and problem+json (and HTML for the report): name the one sent.
JSON_HEADERS = {**NO_STORE, "Content-Type": "application/json"}


def _engine() -> Engine:
    return current_app.config["LGSP_ENGINE"]


def _authorized_engine() -> Engine:
    engine = _engine()
    g.auditor = claims_from_header(engine, request.headers.get("Authorization"), SCOPE)["sub"]
    return engine


def _noted(action: str, **detail: Any) -> None:
    """Reading the audit trail is itself recorded in it: who looked, at what."""
    note_read(_engine(), f"client:{g.auditor}", action, detail)


def _safe(params: dict[str, Any]) -> dict[str, Any]:
    """Search filters as they may be recorded: a personal ID only as its keyed hash."""
    out = {k: str(v) for k, v in params.items() if v not in (None, "")}
    if "personal_id" in out:
        out["subject_hash"] = subject_hash(out.pop("personal_id"))
    return out


def _invalid(exc: audit_search.InvalidQuery) -> ExchangeError:
    return ExchangeError("request.invalid", str(exc))


def search_records(limit: int = 50, cursor: str | None = None, order: str = "desc", **params: Any):
    engine = _authorized_engine()
    try:
        filters = audit_search.Filters.from_params(params)
        rows, next_cursor = audit_search.search(engine, filters, limit, cursor, order)
    except audit_search.InvalidQuery as exc:
        raise _invalid(exc) from None
    _noted("audit.search", filters=_safe(params), results=len(rows))
    return {"records": [audit_search.to_json(row) for row in rows], "next_cursor": next_cursor}, 200, JSON_HEADERS


def get_record(id: int):  # noqa: A002 - the path parameter's name in the spec
    engine = _authorized_engine()
    if id > audit_search.MAX_RECORD_ID:
        raise ExchangeError("request.invalid", f"A record id is at most {audit_search.MAX_RECORD_ID}.")
    record = audit_search.get_record(engine, id)
    if record is None:
        raise ExchangeError("record.not_found", f"There is no audit record {id}.")
    _noted("audit.read_record", record=id)
    integrity = record.pop("integrity")
    record.pop("chain_status")
    body = audit_search.to_json(record)
    if integrity["seal"]:
        integrity["seal"].pop("problem")  # said in the findings
    body["integrity"] = integrity
    return body, 200, JSON_HEADERS


def citizen_accesses(personal_id: str, format: str = "json", **params: Any):  # noqa: A002
    engine = _authorized_engine()
    try:
        start = audit_search.parse_time(params.get("from"), "from")
        end = audit_search.parse_time(params.get("to"), "to")
    except audit_search.InvalidQuery as exc:
        raise _invalid(exc) from None
    report = audit_search.access_report(engine, personal_id, start, end)
    _noted("audit.access_report", subject_hash=subject_hash(personal_id), accesses=len(report.get("accesses", [])))
    if format == "html":
        html = render_template("console/report.html", report=report, standalone=True)
        return Response(html, 200, {**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"})
    return report, 200, JSON_HEADERS
