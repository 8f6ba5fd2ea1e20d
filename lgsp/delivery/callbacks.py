"""Callbacks: a sender that registered a URL with its message is told the final outcome.

The URL is checked against the egress policy when the message is accepted and again when it is
called. The call is a POST of the message's status (the same document as GET …/messages/{id}),
made once by a delivery worker soon after the message became final (also after a worker restart:
the `pending` state is in the database); a callback that fails is left `failed` — the status URL
still answers.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update

from lgsp import egress
from lgsp.storage.schema import delivery_messages as M

log = logging.getLogger(__name__)
BATCH = 50
TIMEOUT = 5.0


def check_url(url: str) -> None:
    """Refuse a callback URL the operator's egress policy does not allow (lgsp.egress.EgressRefused)."""
    egress.check_url(url)


def _pending(engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(M).where(M.c.callback_state == "pending").limit(BATCH)).all()


def _mark(engine, message_id: str, state: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(M).where(M.c.id == message_id, M.c.callback_state == "pending")
                     .values(callback_state=state))


async def send_pending(gw: Any) -> None:
    from lgsp.delivery.status import view

    try:
        rows = await asyncio.to_thread(_pending, gw.engine)
    except Exception:
        return
    if not rows:
        return
    async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as client:
        for row in rows:
            state = "failed"
            try:
                check_url(row.callback_url)
                body = orjson.dumps(view(row, gw.settings.public_url))
                resp = await client.post(row.callback_url, content=body,
                                         headers={"Content-Type": "application/json"})
                state = "sent" if resp.status_code < 300 else "failed"
            except Exception as exc:  # refused by egress, unreachable: the status URL still answers
                log.warning("callback for message %s failed: %s", row.id, type(exc).__name__)
            await asyncio.to_thread(_mark, gw.engine, row.id, state)
