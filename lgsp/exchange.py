"""The exchange: one request through the LGSP, as it moves through the pipeline."""
from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from lgsp.adapter import AdapterResult
from lgsp.errors import ExchangeError
from lgsp.registry import Client, Grant, Service

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Generated ids: a random per-process prefix and a counter (unique, and no
# system call per request as uuid4 would need).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def request_id_from(header: str | None) -> str:
    """Echo the caller's X-Request-ID when it is sane; otherwise make one."""
    if header and _REQUEST_ID.match(header):
        return header
    return f"{_PREFIX}{next(_COUNTER):016x}"


@dataclass
class Exchange:
    door: str                         # "rest" | "soap"
    request_id: str
    service_name: str | None
    params: dict[str, Any]
    token: str | None = None
    credentials: tuple[str, str] | None = None  # (client id, secret) from a WS-Security UsernameToken
    # Set by doors whose spec does not describe the service's parameters (call by name):
    # the validate stage then checks them against the adapter's declared schema.
    check_params: bool = False
    purpose: str | None = None
    officer: str | None = None
    request_bytes: int = 0
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    started: float = field(default_factory=time.perf_counter)
    # Filled by the stages:
    claims: dict[str, Any] | None = None
    client: Client | None = None
    service: Service | None = None
    grant: Grant | None = None
    subject: str | None = None        # the personal ID asked about; only its keyed hash is stored
    result: AdapterResult | None = None
    upstream: str | None = None
    trace_id: str | None = None
    canonical: Any = None
    answer: Any = None
    fields: list[str] = field(default_factory=list)
    error: ExchangeError | None = None

    def __post_init__(self) -> None:
        # Known from the start, so that even a refused exchange records whom it was about.
        pid = self.params.get("personal_id")
        self.subject = pid if isinstance(pid, str) and pid else None

    @property
    def status(self) -> int:
        return self.error.status if self.error else 200

    @property
    def outcome(self) -> str:
        return self.error.outcome if self.error else "ok"
