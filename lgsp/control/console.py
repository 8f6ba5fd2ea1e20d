"""The review console for security teams: server-rendered pages under /console.

Login takes the client id and secret of a client with the auditor role (the
same credentials as for an OAuth2 token; there is no other account and no
default password). The session is a signed cookie holding only the client id,
a session id, a CSRF token and the login time: HttpOnly, SameSite=Strict, scoped
to /console, 30 minutes idle. The session is also held on the server (table
console_sessions, by the SHA-256 of its id), so signing out ends it there: the
old cookie no longer opens a page. The client is re-read on every page, so
disabling it or taking its role away ends the session at once. No JavaScript:
forms and links only.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, send_file, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete, insert, select, update
from werkzeug.exceptions import HTTPException

from lgsp import auth_throttle, secret_check
from lgsp.audit import search as audit_search
from lgsp.audit.writer import note_read
from lgsp.control import records as control_audit
from lgsp.control.clients import query_client
from lgsp.crypto import derive_key, subject_hash
from lgsp.storage.schema import console_sessions

blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                      static_folder="static", static_url_path="/static")

SCOPE = "audit.read"
COOKIE = "lgsp_console"
IDLE_SECONDS = 30 * 60
MAX_SESSION_SECONDS = 10 * 3600   # a working day, however active
PUBLIC_ENDPOINTS = {"console.login", "console.static"}
# Vietnam has one time zone and no daylight saving time: the console shows and reads ICT.
ICT = dt.timezone(dt.timedelta(hours=7), "ICT")
PERSONAL_ID = re.compile(r"^([0-9]{12}|[0-9]{9})$")
FILTERS = ("client_id", "officer", "service", "purpose", "outcome", "kind", "subject_hash", "request_id")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- session ------------------------------------------------------------------------------

@dataclass
class Session:
    csrf: str
    client_id: str | None = None
    since: float | None = None   # login time (for the absolute limit)
    sid: str | None = None       # the server-side session (console_sessions), ended by signing out

    @classmethod
    def anonymous(cls) -> "Session":
        return cls(csrf=secrets.token_urlsafe(32))


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(derive_key("lgsp/console-session"), salt="lgsp.control.console.session")


def _load_session() -> Session | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer().loads(raw, max_age=IDLE_SECONDS)
        session = Session(**data)
    except (BadSignature, TypeError):
        return None
    if session.since is not None and time.time() - session.since > MAX_SESSION_SECONDS:
        return None
    return session


def _engine():
    return current_app.config["LGSP_ENGINE"]


def _auditor(client_id: str):
    """The active client if it still holds the auditor scope; else None."""
    client = query_client(_engine(), client_id)
    return client if client is not None and SCOPE in client.granted else None


@blueprint.before_request
def _authenticate():
    if request.endpoint == "console.static":
        return None
    g.session = _load_session() or Session.anonymous()
    if request.method == "POST" and not _csrf_ok():
        return _page("console/error.html", 403, message="The form has expired; open the page again and resend it.")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    live = g.session.client_id and _session_live(g.session)
    client = _auditor(g.session.client_id) if live else None
    if client is None:
        g.session = Session.anonymous()
        return redirect(url_for("console.login"), 303)
    g.client = client
    return None


def _csrf_ok() -> bool:
    sent = request.form.get("csrf", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), g.session.csrf.encode())


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _session_live(session: Session) -> bool:
    """The session was opened by a sign-in of this client and has not been ended."""
    if not session.sid:
        return False
    with _engine().connect() as conn:
        row = conn.execute(select(console_sessions.c.client_id, console_sessions.c.ended_at)
                           .where(console_sessions.c.id == _sid_hash(session.sid))).first()
    return row is not None and row.ended_at is None and row.client_id == session.client_id


def _open_session(client_id: str) -> Session:
    sid, now = secrets.token_urlsafe(32), dt.datetime.now(dt.timezone.utc)
    with _engine().begin() as conn:
        # Sessions past the absolute limit can no longer be used: forget them.
        conn.execute(delete(console_sessions).where(
            console_sessions.c.created_at < now - dt.timedelta(seconds=MAX_SESSION_SECONDS)))
        conn.execute(insert(console_sessions).values(id=_sid_hash(sid), client_id=client_id, created_at=now))
    control_audit.record(_engine(), action="console.sign_in", target="console", actor=f"console:{client_id}")
    return Session(csrf=secrets.token_urlsafe(32), client_id=client_id, since=time.time(), sid=sid)


def _end_session(session: Session) -> None:
    if session.sid:
        with _engine().begin() as conn:
            conn.execute(update(console_sessions).where(console_sessions.c.id == _sid_hash(session.sid))
                         .values(ended_at=dt.datetime.now(dt.timezone.utc)))
        control_audit.record(_engine(), action="console.sign_out", target="console",
                             actor=f"console:{session.client_id}")


@blueprint.after_request
def _finish(response: Response) -> Response:
    if request.endpoint == "console.static":
        return response
    session = g.get("session")
    secure = current_app.config["LGSP_SETTINGS"].public_url.startswith("https://")
    if session is None:
        response.delete_cookie(COOKIE, path="/console", secure=secure, httponly=True, samesite="Strict")
    else:  # re-signed on every page: the idle timeout counts from the last one
        response.set_cookie(COOKIE, _serializer().dumps(asdict(session)), max_age=IDLE_SECONDS, path="/console",
                            secure=secure, httponly=True, samesite="Strict")
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@blueprint.errorhandler(Exception)
def _failed(exc: Exception):
    """An HTML page, not the control plane's JSON, when a console page fails."""
    if isinstance(exc, HTTPException):
        return exc
    current_app.logger.exception("console page failed")
    return _page("console/error.html", 500, message="The page could not be made; the error has been logged.")


def _page(template: str, status: int = 200, **context: Any) -> Response:
    html = render_template(template, session=g.get("session"), client=g.get("client"), **context)
    return Response(html, status, mimetype="text/html")


# -- login ---------------------------------------------------------------------------------

@blueprint.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return _page("console/login.html")
    client_id = request.form.get("client_id", "").strip()
    secret = request.form.get("client_secret", "")
    wait = auth_throttle.retry_after("console", client_id, request.remote_addr)
    client = _auditor(client_id) if client_id and wait is None else None
    try:
        # an unknown id is checked against a dummy hash: same cost, so ids are not told apart by timing
        accepted = wait is None and secret_check.check(secret, client.row.secret_hash if client else None)
    except secret_check.Busy:
        accepted, wait = False, 1
    if wait is not None:
        response = _page("console/login.html", 429, client_id=client_id,
                         error=f"Too many failed sign-ins; try again in {wait} seconds.")
        response.headers["Retry-After"] = str(wait)
        return response
    if not accepted:
        auth_throttle.failed("console", client_id, request.remote_addr)
        current_app.logger.warning("console login refused for client %r", client_id[:64])
        return _page("console/login.html", 401, client_id=client_id,
                     error="Client id or secret not accepted, or the client does not have the auditor role.")
    g.session = _open_session(client_id)
    current_app.logger.info("console login: client %s", client_id)
    return redirect(url_for("console.records"), 303)


@blueprint.post("/logout")
def logout():
    _end_session(g.session)
    g.session = None
    return redirect(url_for("console.login"), 303)


@blueprint.get("", strict_slashes=False)
@blueprint.get("/")
def home():
    return redirect(url_for("console.records"), 303)


# -- search ------------------------------------------------------------------------------

def _noted(action: str, **detail: Any) -> None:
    """Reading the audit trail is itself recorded in it: who looked, at what."""
    note_read(_engine(), f"console:{g.client.get_client_id()}", action, detail)


def _form_time(value: str | None, name: str) -> dt.datetime | None:
    """A datetime-local value is Vietnam time; a full RFC 3339 value keeps its offset."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise audit_search.InvalidQuery(f"'{name}' is not a date and time.") from None
    return audit_search.parse_time(parsed if parsed.tzinfo else parsed.replace(tzinfo=ICT), name)


def _filters(args) -> audit_search.Filters:
    values = {name: (args.get(name) or "").strip() or None for name in FILTERS}
    return audit_search.Filters(start=_form_time(args.get("from"), "from"), end=_form_time(args.get("to"), "to"),
                                **values)


@blueprint.get("/records")
def records():
    args = request.args
    order = args.get("order") if args.get("order") in ("asc", "desc") else "desc"
    rows, next_cursor, error = [], None, None
    try:
        rows, next_cursor = audit_search.search(_engine(), _filters(args), 50, args.get("cursor") or None, order)
        _noted("audit.search", filters={k: v for k, v in args.items() if v}, results=len(rows))
    except audit_search.InvalidQuery as exc:
        error = str(exc)
    for row in rows:
        row["hash_ok"] = audit_search.hash_ok(row)
    query = {k: v for k, v in args.items() if k != "cursor" and v}
    next_url = url_for("console.records") + "?" + urlencode({**query, "cursor": next_cursor}) if next_cursor else None
    first_url = url_for("console.records") + "?" + urlencode(query) if args.get("cursor") else None
    return _page("console/records.html", 400 if error else 200, rows=rows, args=args, order=order,
                 error=error, next_url=next_url, first_url=first_url)


@blueprint.post("/records")
def search_form():
    """The search form posts (so a personal ID never lands in a URL) and is redirected to
    a plain GET address in which the ID is replaced by its keyed hash."""
    form = request.form
    query = {k: form.get(k, "").strip() for k in ("from", "to", "order", *FILTERS)}
    pid = form.get("personal_id", "").strip()
    if pid:
        if not PERSONAL_ID.match(pid):
            return _page("console/records.html", 400, rows=[], args=query, order="desc",
                         error="A personal ID has 12 digits (or 9 for an old identity card).")
        query["subject_hash"] = subject_hash(pid)
    query = {k: v for k, v in query.items() if v}
    return redirect(url_for("console.records") + ("?" + urlencode(query) if query else ""), 303)


@blueprint.get("/records/<int:record_id>")
def record(record_id: int):
    found = audit_search.get_record(_engine(), record_id)
    if found is None:
        return _page("console/error.html", 404, message=f"There is no audit record {record_id}.")
    _noted("audit.read_record", record=record_id)
    return _page("console/record.html", record=found, integrity=found["integrity"], chain=found["chain_status"])


# -- chains and seals --------------------------------------------------------------------

@blueprint.get("/chains")
def chains():
    from lgsp.audit.verify import verify_database

    started = time.perf_counter()
    report = verify_database(_engine())
    return _page("console/chains.html", report=report, flagged=sorted(report.flagged_ids()),
                 seconds=time.perf_counter() - started)


# -- citizen access report -------------------------------------------------------------

@blueprint.route("/report", methods=["GET", "POST"])
def report():
    if request.method == "GET":
        return _page("console/report_form.html")
    form = request.form
    pid = form.get("personal_id", "").strip()
    try:
        if not PERSONAL_ID.match(pid):
            raise audit_search.InvalidQuery("A personal ID has 12 digits (or 9 for an old identity card).")
        start, end = _form_time(form.get("from"), "from"), _form_time(form.get("to"), "to")
    except audit_search.InvalidQuery as exc:
        return _page("console/report_form.html", 400, error=str(exc), form=form)
    data = audit_search.access_report(_engine(), pid, start, end)
    _noted("audit.access_report", subject_hash=subject_hash(pid), accesses=len(data.get("accesses", [])))
    return _page("console/report.html", report=data, standalone=False)


# -- export ---------------------------------------------------------------------------

@blueprint.get("/export")
def export():
    args = request.args
    if not args.get("from") and not args.get("to"):
        return _page("console/export.html")
    try:
        start, end = _form_time(args.get("from"), "from"), _form_time(args.get("to"), "to")
        if not (start and end) or start >= end:
            raise audit_search.InvalidQuery("Choose a time range: a start before an end.")
    except audit_search.InvalidQuery as exc:
        return _page("console/export.html", 400, error=str(exc), args=args)
    return _export_file(start, end)


def _export_file(start: dt.datetime, end: dt.datetime) -> Response:
    """JSON Lines with the seals and keys to verify it offline (`lgsp audit verify --file`)."""
    from lgsp.audit.export import export_jsonl

    out = tempfile.TemporaryFile()  # spooled to disk: an export can be large
    counts = export_jsonl(_engine(), start, end, out)
    _noted("audit.export", start=start.isoformat(), end=end.isoformat(), **counts)
    out.seek(0)
    current_app.logger.info("console export %s..%s by %s", start.isoformat(), end.isoformat(), g.client.get_client_id())
    name = f"lgsp-audit-{start:%Y%m%dT%H%M%SZ}-{end:%Y%m%dT%H%M%SZ}.jsonl"
    return send_file(out, mimetype="application/x-ndjson", as_attachment=True, download_name=name)


# -- template helpers ------------------------------------------------------------------

@blueprint.app_template_filter("ict")
def _ict(value: dt.datetime | str | None) -> str:
    """A time as Vietnam time with its offset, e.g. 2025-07-01 08:00:05 +07:00."""
    if not value:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return audit_search.utc(value).astimezone(ICT).strftime("%Y-%m-%d %H:%M:%S +07:00")


@blueprint.app_template_filter("utc_iso")
def _utc_iso(value: dt.datetime | None) -> str:
    return audit_search.iso(value) or ""


@blueprint.app_template_filter("ict_input")
def _ict_input(value: str | None) -> str:
    """Echo a time field back into a datetime-local input."""
    return (value or "")[:19]


# The deliveries page (lgsp.delivery.console_pages) adds its routes to this blueprint.
from lgsp.delivery import console_pages  # noqa: E402,F401
