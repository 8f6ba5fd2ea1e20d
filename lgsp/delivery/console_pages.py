"""The console's deliveries page: the queue at a glance, a message with its delivery log, and (for a
client that also holds the integrator or admin role) replay and cancel, each audited.

Registered on the console's blueprint (same sign-in, session, CSRF token and headers); payloads
are not shown here (`lgsp deliveries show --payload` is the recorded way to read one).
"""
from __future__ import annotations

from typing import Any

from flask import current_app, g, redirect, request, url_for

from lgsp.control.console import _engine, _page, blueprint
from lgsp.delivery import operators
from lgsp.delivery.status import queue_stats

OPERATOR_ROLES = ("integrator", "admin")


def _actor() -> str:
    return f"console:{g.client.get_client_id()}"


def _may_operate() -> bool:
    return any(role in OPERATOR_ROLES for role in (g.client.row.roles or ()))


def _is_admin() -> bool:
    return "admin" in (g.client.row.roles or ())


@blueprint.get("/deliveries")
def deliveries():
    status = request.args.get("status") or None
    key = request.args.get("key") or None
    try:
        rows = operators.list_messages(_engine(), _actor(), status=status, key=key, limit=100)
    except operators.OperatorError as exc:
        return _page("console/error.html", 400, message=str(exc))
    return _page("console/deliveries.html", rows=rows, stats=queue_stats(_engine()), chosen=status or "",
                 key=key or "", states=operators.STATES, may_read_keys=_is_admin())


@blueprint.post("/deliveries/callback-key")
def delivery_callback_key() -> Any:
    """A client's callback key, shown once to an admin who asked for it (a POST: a deliberate, audited read)."""
    if not _is_admin():
        return _page("console/error.html", 403, message="A client's callback key needs the admin role.")
    client_id = (request.form.get("client_id") or "").strip()[:64]
    try:
        key = operators.callback_key(current_app.config["LGSP_ENGINE"], _actor(), client_id)
    except operators.OperatorError as exc:
        return _page("console/error.html", 404, message=str(exc))
    return _page("console/callback_key.html", client_id=client_id, key=key, signature=operators.SIGNATURE)


@blueprint.get("/deliveries/<message_id>")
def delivery(message_id: str):
    try:
        message = operators.show(_engine(), _actor(), message_id[:36])
    except operators.OperatorError as exc:
        return _page("console/error.html", 404, message=str(exc))
    return _page("console/delivery.html", m=message, may_operate=_may_operate(), notice=request.args.get("done"))


@blueprint.post("/deliveries/<message_id>/<action>")
def delivery_action(message_id: str, action: str):
    if action not in ("replay", "cancel"):
        return _page("console/error.html", 404, message="No such action.")
    if not _may_operate():
        return _page("console/error.html", 403, message="Replay and cancel need the integrator or admin role.")
    fn = operators.replay if action == "replay" else operators.cancel
    try:
        fn(_engine(), _actor(), message_id[:36], request.form.get("reason") or None)
    except operators.OperatorError as exc:
        return _page("console/error.html", 409 if exc.code != "admin.not_found" else 404, message=str(exc))
    return redirect(url_for("console.delivery", message_id=message_id, done=action), 303)
