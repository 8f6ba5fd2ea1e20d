"""Callbacks: a sender that registered a URL with its message is told the final outcome.

The URL is checked against the egress policy when the message is accepted and again at every try.
The call is a POST of the message's status (the same document as GET …/messages/{id}), signed, made
by a delivery worker soon after the message became final (also after a worker restart: the
`pending` state is in the database). A try that does not get a 2xx answer is tried again after a
backoff, up to TRIES tries; then the callback is `failed` — the status URL still answers. Every try
is an audit record (kind "delivery", request id `<message id>:cb<n>`) committed with the message's
callback state.

Signature (docs/delivery.md): header `LGSP-Signature: t=<unix seconds>,v1=<hex>`, where v1 is
HMAC-SHA256 over `<t>.<body>` with the sender client's callback key. That key is derived from the
master secret for the client (`lgsp deliveries callback-key CLIENT_ID` prints it), so nothing new
is stored and each client can check only its own callbacks.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, bindparam, or_, select, update

from lgsp import egress
from lgsp.crypto import derive_key
from lgsp.delivery.policy import Policy
from lgsp.storage.schema import delivery_messages as M

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
BATCH = 50
TIMEOUT = 5.0
TRIES = 5           # tries of one callback before it is left `failed`
HOLD = TIMEOUT * 3  # a try's hold on the callback: another worker does not send it meanwhile
SIGNATURE_HEADER = "LGSP-Signature"
TOLERANCE = 300     # seconds: a receiver refuses a signature older (or newer) than this


def check_url(url: str) -> None:
    """Refuse a callback URL the operator's egress policy does not allow (lgsp.egress.EgressRefused)."""
    egress.check_url(url)


def callback_key(client_id: str) -> bytes:
    """The key a client's callbacks are signed with (and the client checks them with)."""
    return derive_key(f"lgsp/delivery-callback/{client_id}")


def sign(key: bytes, body: bytes, at: int | None = None) -> str:
    """The LGSP-Signature header's value for `body`."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(key: bytes, body: bytes, header: str, tolerance: float = TOLERANCE) -> bool:
    """The receiver's check, as documented: the HMAC of `<t>.<body>` equals v1, and t is recent."""
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = hmac.new(key, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return abs(time.time() - t) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _due(engine: Engine) -> list[Any]:
    """Pending callbacks whose next try is due, each held by this worker for HOLD seconds (a row
    another worker held first is skipped)."""
    at = _now()
    with engine.connect() as conn:
        rows = conn.execute(select(M).where(
            M.c.callback_state == "pending", or_(M.c.callback_next_at.is_(None), M.c.callback_next_at <= at))
            .order_by(M.c.seq).limit(BATCH)).all()
    held = []
    for row in rows:
        with engine.begin() as conn:
            # Optimistic hold: only the worker that still sees the row as it read it moves its next try.
            same = M.c.callback_next_at.is_(None) if row.callback_next_at is None else \
                M.c.callback_next_at == row.callback_next_at
            if conn.execute(update(M).where(M.c.seq == row.seq, M.c.callback_state == "pending", same)
                            .values(callback_next_at=at + dt.timedelta(seconds=HOLD))).rowcount == 1:
                held.append(row)
    return held


def next_due(engine: Engine) -> float | None:
    """Seconds until the earliest pending callback is due (None: none is pending)."""
    with engine.connect() as conn:
        row = conn.execute(select(M.c.callback_next_at).where(M.c.callback_state == "pending")
                           .order_by(M.c.callback_next_at.is_not(None), M.c.callback_next_at).limit(1)).first()
    if row is None:
        return None
    at = row[0]
    return 0.0 if at is None else ((at if at.tzinfo else at.replace(tzinfo=dt.UTC)) - _now()).total_seconds()


_RECORD_TRY = update(M).where(M.c.seq == bindparam("b_seq"), M.c.callback_state == "pending").values(
    callback_state=bindparam("state"), callback_attempts=bindparam("tries"), callback_next_at=bindparam("next_at"))


async def send_pending(gw: Any) -> None:
    """Send every due callback once (concurrently); record each try."""
    from lgsp.delivery.status import view

    try:
        rows = await asyncio.to_thread(_due, gw.engine)
    except Exception:
        log.warning("callbacks: the queue could not be read", exc_info=True)
        return
    if not rows:
        return
    import httpx  # here, not at import: the data plane imports this module and never sends (5.7 MiB)

    policy = Policy.from_environment()
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        await asyncio.gather(*(_send(gw, client, policy, row, view(row, gw.settings.public_url)) for row in rows))


async def _send(gw: Any, client: httpx.AsyncClient, policy: Policy, row: Any, status: dict[str, Any]) -> None:
    import httpx

    tries = row.callback_attempts + 1
    started = time.perf_counter()
    answered, reason, permanent = None, None, False
    body = orjson.dumps(status)
    try:
        await asyncio.to_thread(check_url, row.callback_url)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(callback_key(row.client_id), body),
                   "LGSP-Message-Id": row.id, "LGSP-Callback-Attempt": str(tries)}
        resp = await client.post(row.callback_url, content=body, headers=headers)
        answered = resp.status_code
        if resp.status_code >= 300:
            reason = f"The receiver answered {resp.status_code}."
    except egress.EgressRefused as exc:  # the policy changed since the acceptance: no use trying again
        reason, permanent = f"The callback URL is refused: {exc.detail}", True
    except httpx.HTTPError as exc:
        reason = f"The receiver could not be reached ({type(exc).__name__})."
    elapsed = round((time.perf_counter() - started) * 1000, 3)
    if reason is None:
        state, next_at = "sent", None
    elif permanent or tries >= TRIES:
        state, next_at = "failed", None
    else:
        state, next_at = "pending", _now() + dt.timedelta(seconds=policy.backoff(tries))
    if reason:
        log.warning("callback for message %s, try %d: %s", row.id, tries, reason)
    record = {
        "at": _now(), "kind": "delivery", "request_id": f"{row.id}:cb{tries}"[:64], "door": "queue",
        "client_id": row.client_id, "agency_code": row.agency_code, "officer": row.officer, "purpose": row.purpose,
        "service": row.service, "outcome": "ok" if reason is None else "failed", "status": answered or 502,
        "latency_ms": elapsed, "fields": [], "request_bytes": len(body), "response_bytes": 0,
        "detail": {"message_id": row.id, "callback": tries, "callback_state": state, "http_status": answered,
                   "reason": reason, "next_attempt_at": next_at.isoformat() if next_at else None},
    }
    try:
        await gw.audit.commit(record, [(_RECORD_TRY, {"b_seq": row.seq, "state": state, "tries": tries,
                                                      "next_at": next_at})])
    except Exception:  # not recorded: the hold runs out and the callback is tried again
        log.error("callback for message %s: the try could not be recorded", row.id)
