"""The exchange: one request through the LGSP, as it moves through the pipeline."""
from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from lgsp.adapter import Adapter, AdapterResult
from lgsp.errors import ExchangeError
from lgsp.pipeline.identity import Identity
from lgsp.registry import Client, ConnectionSpec, Grant, Service

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# What the caller says about the exchange goes into the audit record: bounded and plain.
_PURPOSE = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")
MAX_OFFICER = 128
MAX_SERVICE = 128
# Generated ids: a random per-process prefix and a counter (unique, and no
# system call per request as uuid4 would need).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def request_id_from(header: str | None) -> str:
    """Echo the caller's X-Request-ID when it is sane; otherwise make one."""
    if header and _REQUEST_ID.match(header):
        return header
    return f"{_PREFIX}{next(_COUNTER):016x}"


def _plain(text: str) -> bool:
    """No control, format or unassigned characters (which could hide or forge text in a record)."""
    return all(unicodedata.category(c)[0] != "C" for c in text)


def context_problem(officer: str | None, purpose: str | None, claimed_request_id: str | None) -> str | None:
    """Why the caller's officer, purpose or request id cannot be recorded; None when they can."""
    if claimed_request_id and not _REQUEST_ID.match(claimed_request_id):
        return "The request id (X-Request-ID or <request_id>) must be 1 to 64 of A-Z a-z 0-9 . _ : -."
    if purpose is not None and not _PURPOSE.match(purpose):
        return "The purpose (X-Purpose or <purpose>) must be a purpose code: 1 to 64 of A-Z a-z 0-9 . _ : / -."
    if officer is not None and (len(officer) > MAX_OFFICER or not _plain(officer)):
        return (f"The officer (X-On-Behalf-Of or <on_behalf_of>) must be at most {MAX_OFFICER} characters, "
                "without control characters.")
    return None


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
    claimed_request_id: str | None = None   # as the caller sent it (request_id may be a made one)
    source: str | None = None               # the caller's network address
    certificate: str | None = None          # x5t#S256 of the connection's client certificate (lgsp.tls)
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    started: float = field(default_factory=time.perf_counter)
    # Filled by the stages (read what an earlier stage guaranteed through the bound_* properties):
    identity: Identity | None = None
    client: Client | None = None
    service: Service | None = None
    connection: ConnectionSpec | None = None  # the service's connection and adapter, bound at resolve
    adapter: Adapter | None = None
    grant: Grant | None = None
    subject: str | None = None        # the personal ID asked about; only its keyed hash is stored
    result: AdapterResult | None = None
    upstream: str | None = None
    trace_id: str | None = None
    canonical: Any = None
    answer: Any = None
    fields: list[str] = field(default_factory=list)
    error: ExchangeError | None = None
    response_headers: dict[str, str] = field(default_factory=dict)  # on every answer, e.g. RateLimit (lgsp.traffic)
    # Statements committed in the transaction of the exchange's audit record (the message door's
    # accepted message), and what answers instead when one of them conflicts (the same message
    # accepted twice at once: the second is answered with the first).
    store: list = field(default_factory=list)
    message_options: dict[str, str] = field(default_factory=dict)  # Idempotency-Key, callback URL
    ok_status: int = 200              # the HTTP status of success (202 for an accepted message)
    on_store_conflict: Callable[[Exchange], Awaitable[None]] | None = None
    detail: dict[str, Any] | None = None  # the audit record's detail (e.g. a document's ids, sizes and hashes)

    def __post_init__(self) -> None:
        # Known from the start, so that even a refused exchange records whom it was about.
        pid = self.params.get("personal_id")
        self.subject = pid if isinstance(pid, str) and pid else None

    def drop_bad_context(self) -> str | None:
        """Check what the caller says about the exchange before it is recorded; if it
        cannot be recorded, forget it (the refusal is audited without it) and say why."""
        if not isinstance(self.service_name, str) or len(self.service_name) > MAX_SERVICE:
            self.service_name = None  # not a name any service could have (the refusal says why)
        problem = context_problem(self.officer, self.purpose, self.claimed_request_id)
        if problem:
            self.officer = self.purpose = None
        return problem

    # What an earlier stage guaranteed (the stage contract, lgsp/pipeline/stage.py).
    @property
    def bound_identity(self) -> Identity:
        return self.identity if self.identity is not None else _not_yet("identity", "identify")

    @property
    def bound_client(self) -> Client:
        return self.client if self.client is not None else _not_yet("client", "identify")

    @property
    def bound_service(self) -> Service:
        return self.service if self.service is not None else _not_yet("service", "resolve")

    @property
    def bound_adapter(self) -> Adapter:
        """The adapter bound at resolve; None there (a broken connection) is refused by invoke."""
        return self.adapter if self.adapter is not None else _not_yet("adapter", "resolve and invoke")

    @property
    def bound_grant(self) -> Grant:
        return self.grant if self.grant is not None else _not_yet("grant", "authorize")

    @property
    def bound_result(self) -> AdapterResult:
        return self.result if self.result is not None else _not_yet("result", "invoke")

    @property
    def status(self) -> int:
        return self.error.status if self.error else self.ok_status

    @property
    def outcome(self) -> str:
        return self.error.outcome if self.error else "ok"


class StageOrderError(RuntimeError):
    """A stage read what an earlier stage should have set, and it was not: a bug in the pipeline's order."""


def _not_yet(what: str, stage: str) -> NoReturn:
    raise StageOrderError(f"The exchange's {what} was read before the {stage} stage set it.")
