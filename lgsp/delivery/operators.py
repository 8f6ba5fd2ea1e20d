"""What operators do with messages: list, show, replay, cancel (CLI, admin API, console).

Each action is in the audit trail (kind "admin", the actor named): reads as reads of the
configuration are, and a replay or cancel in the same transaction as the change it makes (the
audit writer runs the update with the record). Only a dead or cancelled message can be replayed
(a waiting one is delivered anyway; a delivered one is never sent twice by an operator's slip);
only a message still waiting (accepted, failed) can be cancelled.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select, update

from lgsp.audit.writer import writer_for
from lgsp.control import records as control_audit
from lgsp.delivery import store, wakeup
from lgsp.delivery.policy import Policy
from lgsp.delivery.status import view
from lgsp.storage.schema import delivery_messages as M

STATES = ("accepted", "delivering", "failed", "delivered", "dead", "cancelled")
MAX_LIST = 500


class OperatorError(ValueError):
    def __init__(self, detail: str, code: str):
        super().__init__(detail)
        self.code = code


def _summary(row: Any) -> dict[str, Any]:
    out = view(row, "")
    out.pop("status_url", None)
    out.update(client_id=row.client_id, request_id=row.request_id, callback=row.callback_state)
    return out


def list_messages(engine: Engine, actor: str, *, status: str | None = None, destination: str | None = None,
                  key: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    if status is not None and status not in STATES:
        raise OperatorError(f"A status is one of: {', '.join(STATES)}.", "admin.invalid")
    query = select(M).order_by(M.c.seq.desc()).limit(max(1, min(limit, MAX_LIST)))
    for column, value in (("status", status), ("destination", destination), ("msg_key", key)):
        if value is not None:
            query = query.where(M.c[column] == value)
    with engine.connect() as conn:
        rows = [_summary(r) for r in conn.execute(query)]
    control_audit.read(engine, actor, "delivery.list", "deliveries", results=len(rows),
                       filter={"status": status, "destination": destination, "key": key})
    return rows


def show(engine: Engine, actor: str, message_id: str, *, payload: bool = False) -> dict[str, Any]:
    """The message, its delivery log, and (asked for explicitly, and so recorded) what it carries."""
    row = store.read(engine, message_id)
    if row is None:
        raise OperatorError(f"No message {message_id!r}.", "admin.not_found")
    out = _summary(row)
    out["attempt_log"] = [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in a.items() if k != "id"}
                          for a in store.attempts_of(engine, message_id)]
    if payload:
        out["payload"] = store.open_payload(row.payload)
    control_audit.read(engine, actor, "delivery.show_payload" if payload else "delivery.show", message_id)
    return out


def callback_key(engine: Engine, actor: str, client_id: str) -> str:
    """The key a client's callbacks are signed with (hex), to hand to that client; the read is recorded."""
    from lgsp.delivery.callbacks import callback_key as key_of
    from lgsp.storage.schema import clients

    with engine.connect() as conn:
        if conn.execute(select(clients.c.client_id).where(clients.c.client_id == client_id)).first() is None:
            raise OperatorError(f"No client {client_id!r}.", "admin.not_found")
    control_audit.read(engine, actor, "delivery.callback_key", client_id)
    return key_of(client_id).hex()


def _change(engine: Engine, actor: str, message_id: str, action: str, allowed: tuple[str, ...], statement,
            refusal: tuple[str, str], reason: str | None, applied: Callable[[Any], bool]) -> dict[str, Any]:
    row = store.read(engine, message_id)
    if row is None:
        raise OperatorError(f"No message {message_id!r}.", "admin.not_found")
    if row.status not in allowed:
        raise OperatorError(refusal[0].format(status=row.status), refusal[1])
    target = "accepted" if action == "delivery.replay" else "cancelled"
    detail: dict[str, Any] = {"actor": actor, "action": action, "target": message_id,
                              "before": {"status": row.status, "attempts": row.attempts},
                              "after": {"status": target, "reason": reason}}
    record: Any = {"at": store.now(), "kind": "admin", "outcome": "ok", "client_id": None, "service": None,
                   "detail": detail}
    wake = wakeup.notify_statement(engine) if action == "delivery.replay" else []  # workers anywhere take it now
    writer_for(engine).commit_sync(record, statements=[statement, *wake])
    after = store.read(engine, message_id)
    if after is not None and not applied(after):
        # A worker claimed the message between our read and the guarded UPDATE, which then changed
        # nothing: the trail gets a second record saying so, and the operator a refusal, not a 200.
        correction: Any = {**record, "at": store.now(), "outcome": "refused",
                           "detail": {**detail, "not_applied": True, "after": {"status": after.status}}}
        writer_for(engine).commit_sync(correction)
        raise OperatorError(refusal[0].format(status=after.status), refusal[1])
    return _summary(after)


def replay(engine: Engine, actor: str, message_id: str, reason: str | None = None) -> dict[str, Any]:
    """A dead or cancelled message back in the queue, its maximum age counted from now."""
    at = store.now()
    expires = at + dt.timedelta(seconds=Policy.from_environment().max_age)
    statement = update(M).where(M.c.id == message_id, M.c.status.in_(("dead", "cancelled"))).values(
        status="accepted", next_attempt_at=at, expires_at=expires,
        finished_at=None, error_code=None, reason=None, callback_state=None, callback_attempts=0, callback_next_at=None,
        lease_owner=None, lease_until=None)
    # The woken workers may claim (even deliver) the message before it is read back, so the mark that
    # the UPDATE applied is the new maximum age, which no worker changes, not the status.
    return _change(engine, actor, message_id, "delivery.replay", ("dead", "cancelled"), statement,
                   ("The message is {status}: only a dead or cancelled message can be replayed.",
                    "delivery.not_replayable"), reason, applied=lambda after: store.utc(after.expires_at) == expires)


def cancel(engine: Engine, actor: str, message_id: str, reason: str | None = None) -> dict[str, Any]:
    text = (reason or "Cancelled by an operator.")[:500]
    statement = update(M).where(M.c.id == message_id, M.c.status.in_(("accepted", "failed"))).values(
        status="cancelled", finished_at=store.now(), error_code="delivery.cancelled", reason=text,
        lease_owner=None, lease_until=None)
    return _change(engine, actor, message_id, "delivery.cancel", ("accepted", "failed"), statement,
                   ("The message is {status}: only a message still waiting (accepted, failed) can be cancelled.",
                    "delivery.not_cancellable"), text, applied=lambda after: after.status == "cancelled")


# -- admin API (openapi/admin.v1.yaml) ---------------------------------------------------------

def _api_admin(roles: tuple[str, ...] | None = None) -> Any:
    from lgsp.control.admin_api import INTEGRATOR, _admin

    return _admin(roles or INTEGRATOR)


def _api(fn, *args, **kwargs):
    from lgsp.errors import ExchangeError

    try:
        return fn(*args, **kwargs)
    except OperatorError as exc:
        raise ExchangeError(exc.code, str(exc)) from None


def api_list(status: str | None = None, destination: str | None = None, key: str | None = None, limit: int = 50):
    admin = _api_admin()
    rows = _api(list_messages, admin.engine, admin.actor, status=status, destination=destination, key=key,
                limit=limit)
    return rows, 200, {"Content-Type": "application/json"}


def api_show(message_id: str, payload: bool = False):
    admin = _api_admin()
    return _api(show, admin.engine, admin.actor, message_id, payload=payload), 200, {"Content-Type": "application/json"}


def api_replay(message_id: str, reason: str | None = None):
    admin = _api_admin()
    return _api(replay, admin.engine, admin.actor, message_id, reason), 200, {"Content-Type": "application/json"}


def api_cancel(message_id: str, reason: str | None = None):
    admin = _api_admin()
    return _api(cancel, admin.engine, admin.actor, message_id, reason), 200, {"Content-Type": "application/json"}


def api_callback_key(client_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A client's callback key (admin role: with it one could sign callbacks as the LGSP to that client)."""
    from lgsp.control.admin_api import ADMIN

    admin = _api_admin(ADMIN)
    key = _api(callback_key, admin.engine, admin.actor, client_id)
    return {"client_id": client_id, "key": key, **SIGNATURE}, 200, {"Content-Type": "application/json",
                                                                   "Cache-Control": "no-store"}


# How a receiver checks a callback with the key (docs/delivery.md), beside the key wherever it is handed out.
SIGNATURE = {"algorithm": "HMAC-SHA256", "header": "LGSP-Signature", "signed": "<t>.<body>"}
