"""The control plane's own audit records (kind "admin"): refused admin and audit API
calls (401/403/400…), reads of the configuration, and issued access tokens.

Changes are recorded by lgsp.control.admin and reads of the audit trail by
lgsp.audit.writer.note_read; this module records the rest, so that whoever probes or
reads the control plane leaves a trace. Never a secret (no token, no client
secret, no header values), and a personal ID in a path only as its keyed hash.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Engine

from lgsp.audit.writer import writer_for
from lgsp.crypto import subject_hash
from lgsp.errors import ExchangeError

# 9 or 12 digits: a personal ID (or an old identity card number), e.g. in /audit/v1/citizens/{id}/accesses.
_PERSONAL_ID = re.compile(r"(?<![0-9])([0-9]{12}|[0-9]{9})(?![0-9])")
_UNSAFE = re.compile(r"[^\x21-\x7e]")
MAX_PATH = 200


def safe_path(path: str) -> str:
    """A request path as it may be recorded: personal IDs hashed, bounded, no control characters."""
    hashed = _PERSONAL_ID.sub(lambda m: "{subject:" + subject_hash(m.group(1)) + "}", path)
    return _UNSAFE.sub("?", hashed[:MAX_PATH])


def record(engine: Engine, *, action: str, target: str, outcome: str = "ok", actor: str | None = None,
           status: int | None = None, error_code: str | None = None, request_id: str | None = None,
           detail: dict[str, Any] | None = None) -> None:
    # Like every admin record, the acting client is named in detail.actor; the client_id
    # column stays the client of an *exchange*, so a search by client finds its exchanges.
    writer_for(engine).commit_sync({
        "at": dt.datetime.now(dt.timezone.utc), "kind": "admin", "outcome": outcome, "status": status,
        "error_code": error_code, "client_id": None, "request_id": request_id,
        "detail": {"actor": actor, "action": action, "target": target, "before": None, "after": detail},
    })


def refusal(engine: Engine, method: str, path: str, exc: ExchangeError, caller: str | None,
            request_id: str | None = None) -> None:
    """A refused control-plane call; `caller` is the client id of a verified token, if any."""
    record(engine, action="api.refused", target=f"{method} {safe_path(path)}", outcome=exc.outcome,
           actor=f"client:{caller}" if caller else "anonymous", status=exc.status,
           error_code=exc.code, request_id=request_id)


def read(engine: Engine, actor: str, action: str, target: str, **detail: Any) -> None:
    """A read of the configuration through the admin API (who looked at what)."""
    record(engine, action=action, target=target, actor=actor, detail=detail or None)


def token_issued(engine: Engine, client_id: str, scope: str | None, expires_in: Any) -> None:
    record(engine, action="token.issue", target="/oauth/token", actor=f"client:{client_id}",
           detail={"scope": scope, "expires_in": expires_in})
