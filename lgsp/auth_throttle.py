"""Failed authentications: throttled per client id and per source address, and audited in aggregate.

Every way in with a client secret (the token endpoint, WS-Security UsernameToken
on the SOAP door, the console sign-in) asks `retry_after` first and reports each
failure with `failed`. Past LGSP_AUTH_FAILURES_PER_CLIENT failures for one
client id, or LGSP_AUTH_FAILURES_PER_SOURCE from one address, within
LGSP_AUTH_WINDOW_SECONDS, further attempts are answered auth.throttled (429,
`Retry-After`) without checking the secret, so guessing costs the gateway nothing.

Failures are security events and go into the audit trail, but one record per
(way in, client id, source) and window, carrying the counts, so a flood of
guesses cannot flood the trail. A window's record is written when it ends (or
at process exit). Counters are per process: with N workers the limits are N
times looser, still bounded.
"""
from __future__ import annotations

import atexit
import datetime as dt
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PER_CLIENT = int(os.environ.get("LGSP_AUTH_FAILURES_PER_CLIENT", "10"))
PER_SOURCE = int(os.environ.get("LGSP_AUTH_FAILURES_PER_SOURCE", "30"))
WINDOW = float(os.environ.get("LGSP_AUTH_WINDOW_SECONDS", "60"))
MAX_KEYS = 50_000  # bounds memory under a spray of made-up ids or addresses
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")


@dataclass
class _Window:
    start: float
    failures: int = 0


@dataclass
class _Event:
    first: dt.datetime
    started: float = field(default_factory=time.monotonic)
    last: dt.datetime | None = None
    failures: int = 0
    throttled: int = 0


_lock = threading.Lock()
_windows: dict[str, _Window] = {}
_events: dict[tuple[str, str | None, str | None], _Event] = {}
_flusher: threading.Thread | None = None


def _recordable(client_id: str | None) -> str | None:
    """A claimed client id as it may go into a record (bounded, plain), else None."""
    return client_id if client_id and _CLIENT_ID.match(client_id) else None


def _keys(client_id: str | None, source: str | None) -> list[tuple[str, int]]:
    keys = [(f"source:{source}", PER_SOURCE)] if source else []
    if client_id:
        keys.append((f"client:{client_id[:200]}", PER_CLIENT))
    return keys


def retry_after(channel: str, client_id: str | None, source: str | None) -> int | None:
    """Seconds until this client id / address may try again, or None if it may now.

    A refused attempt is counted in the window's security event.
    """
    now = time.monotonic()
    wait = 0.0
    with _lock:
        for key, limit in _keys(client_id, source):
            window = _windows.get(key)
            if window and now - window.start < WINDOW and window.failures >= limit:
                wait = max(wait, window.start + WINDOW - now)
        if wait <= 0:
            return None
        _event(channel, client_id, source).throttled += 1
    _ensure_flusher()
    return max(1, math.ceil(wait))


def failed(channel: str, client_id: str | None, source: str | None) -> None:
    """Count one failed authentication against the client id and the address."""
    now = time.monotonic()
    with _lock:
        if len(_windows) >= MAX_KEYS:
            _forget_expired(now)
        for key, _limit in _keys(client_id, source):
            window = _windows.get(key)
            if window is None or now - window.start >= WINDOW:
                window = _windows[key] = _Window(now)
            window.failures += 1
        event = _event(channel, client_id, source)
        event.failures += 1
        event.last = dt.datetime.now(dt.timezone.utc)
    log.warning("authentication failed", extra={"fields": {"channel": channel, "client": _recordable(client_id),
                                                          "source": source}})
    _ensure_flusher()


def _forget_expired(now: float) -> None:
    for key in [k for k, w in _windows.items() if now - w.start >= WINDOW]:
        del _windows[key]
    if len(_windows) >= MAX_KEYS:  # still full: a spray of addresses; start over rather than grow
        _windows.clear()


def _event(channel: str, client_id: str | None, source: str | None) -> _Event:
    key = (channel, _recordable(client_id), source)
    event = _events.get(key)
    if event is None:
        if len(_events) >= MAX_KEYS:
            key = (channel, None, None)  # one catch-all event rather than unbounded growth
            event = _events.get(key)
        if event is None:
            event = _events[key] = _Event(first=dt.datetime.now(dt.timezone.utc))
    return event


# -- the audit records ---------------------------------------------------------------------

def _record(key: tuple[str, str | None, str | None], event: _Event) -> dict:
    from lgsp.audit.writer import HASHED_FIELDS

    channel, client_id, source = key
    # Every column named, as in an exchange record: the writer inserts a group of records in one
    # statement, which needs the same keys in each.
    empty = {name: None for name in HASHED_FIELDS if name not in ("chain", "seq", "prev_hash")}
    return {
        **empty,
        "at": dt.datetime.now(dt.timezone.utc), "kind": "security", "door": channel, "client_id": client_id,
        "outcome": "refused", "status": 429 if event.throttled else 401,
        "error_code": "auth.throttled" if event.throttled else "auth.token_invalid",
        "detail": {
            "event": "authentication_failed", "source": source, "failures": event.failures,
            "throttled": event.throttled, "first_at": event.first.isoformat(),
            "last_at": (event.last or event.first).isoformat(), "window_seconds": WINDOW,
        },
    }


def flush(everything: bool = False) -> int:
    """Write the records of the windows that have ended (all of them if `everything`); how many."""
    now = time.monotonic()
    with _lock:
        due = [k for k, e in _events.items() if everything or now - e.started >= WINDOW]
        records = [_record(k, _events.pop(k)) for k in due]
    if not records:
        return 0
    writer = _writer()
    for record in records:
        try:
            writer.commit_sync(record)
        except Exception:  # the trail is down: the log still has every failure
            log.exception("security event could not be audited")
    return len(records)


def _writer():
    from lgsp.audit.writer import writer_for  # late: the audit module is heavier than this one
    from lgsp.config import settings
    from lgsp.storage import engine_for

    return writer_for(engine_for(settings().db_url))


def _ensure_flusher() -> None:
    global _flusher
    if _flusher is not None:
        return
    with _lock:
        if _flusher is not None:
            return
        _flusher = threading.Thread(target=_flush_forever, name="lgsp-auth-events", daemon=True)
        _flusher.start()
    _writer()  # made (and its closing registered) first, so the last flush at exit runs before it closes
    atexit.register(flush, True)


def _flush_forever() -> None:
    while True:
        time.sleep(min(1.0, WINDOW / 4))
        try:
            flush()
        except Exception:
            log.exception("security events could not be flushed")
