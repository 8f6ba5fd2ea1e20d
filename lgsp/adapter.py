"""The adapter SDK: the small interface every backend plug-in implements.

An adapter speaks to one kind of backend (SOAP, REST, SQL). It is discovered
through the ``lgsp.adapters`` entry-point group, built once per *connection*
from that connection's settings, and called by the pipeline's ``invoke`` stage.

An adapter never imports the web framework or the audit log: it receives plain
parameters and a :class:`CallContext`, returns an :class:`AdapterResult` holding
the backend's answer as plain data, and signals trouble by raising one of the
:class:`UpstreamError` subclasses below. The pipeline turns those into stable
error codes for callers and into audit records.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from lgsp.errors import ErrorCode


@dataclass(frozen=True)
class Operation:
    """One operation an adapter offers, as named in services (e.g. ``citizen.get``)."""

    name: str
    summary: str
    # Operation-level mapping section in the adapter's mapping file.
    mapping: str | None = None
    # Parameters the operation takes (JSON Schema of an object); used by the
    # pipeline and by the contract test kit.
    params_schema: Mapping[str, Any] = field(default_factory=dict)
    # True when a call changes the backend (publish, submit…): the contract kit
    # calls it only with an example the adapter declares safe to repeat.
    writes: bool = False
    # Other persons than the one asked about whose data an answer can carry: each one its
    # answer still carries after minimisation gets its own audit record of the exchange, so
    # their access report lists it. Dotted paths to person objects in the canonical answer
    # (lists are walked: "members"), or "params.<name>" for a person the request names and
    # the answer states something about (a link check's verdict).
    persons: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallContext:
    """Who asks and why; adapters forward what the backend wants of it."""

    request_id: str
    client_id: str
    agency_code: str | None = None
    officer: str | None = None
    purpose: str | None = None
    timeout: float | None = None
    #: Canonical fields the caller's grant lets it see (dotted paths allowed). An adapter that
    #: filters or orders on fields must accept only these, or hidden values leak through it.
    fields: tuple[str, ...] | None = None
    #: Stable across every attempt at delivering one stored message (lgsp.delivery): a destination
    #: that can be told it, or that keys its own dedupe on it, recognises a repeat after a crash.
    idempotency_key: str | None = None


@dataclass
class AdapterResult:
    """A backend's answer as plain data (national field names), before mapping."""

    data: Any
    # Attributes of the answer's envelope (e.g. a data timestamp) for the mapping.
    meta: dict[str, Any] = field(default_factory=dict)
    # What the adapter called (URL, table…) and its own trace id (e.g. the
    # request id it sent upstream), both carried into the audit record.
    upstream: str | None = None
    trace_id: str | None = None


class UpstreamError(Exception):
    """Base class: the backend could not give a usable answer."""

    code: ClassVar[ErrorCode] = "upstream.error"

    def __init__(self, detail: str, *, upstream: str | None = None, trace_id: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.upstream = upstream
        self.trace_id = trace_id


class UpstreamTimeout(UpstreamError):
    code = "upstream.timeout"


class UpstreamUnavailable(UpstreamError):
    code = "upstream.unavailable"


class UpstreamFault(UpstreamError):
    """The backend answered with an application fault (e.g. a SOAP Fault)."""

    code = "upstream.fault"

    def __init__(self, detail: str, *, fault_code: str | None = None, **kw: Any):
        super().__init__(detail, **kw)
        self.fault_code = fault_code


class UpstreamMalformed(UpstreamError):
    code = "upstream.malformed"


class RecordNotFound(UpstreamError):
    """The backend answered cleanly that the subject does not exist."""

    code = "record.not_found"


class NotAllowed(UpstreamError):
    """The backend refuses this caller although the grant lets it call the service,
    e.g. only systems of a dataset's owner agency may publish to it."""

    code = "access.not_owner"


class Adapter:
    """Base class for adapters. Subclasses set the class attributes and implement ``call``."""

    #: Entry-point name and version, shown by ``lgsp adapters list``.
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    #: JSON Schema of a connection's settings; validated before the adapter is built.
    settings_schema: ClassVar[Mapping[str, Any]] = {"type": "object"}
    #: Operations by name.
    operations: ClassVar[Mapping[str, Operation]] = {}
    #: Declarative mapping file (national → canonical), see lgsp.mapping.compile.
    mapping_file: ClassVar[Path | None] = None
    #: "module:callable" returning the simulator's ASGI app, for demo and tests.
    simulator: ClassVar[str | None] = None
    #: Sample params per operation (operation -> params) that the backend answers; used by `lgsp adapters test`.
    examples: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Params per operation naming a subject the backend does not have; `lgsp adapters test` expects RecordNotFound.
    not_found_examples: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, settings: Mapping[str, Any]):
        self.settings = dict(settings)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Checks the settings schema cannot express, run when a connection is created or
        changed and before the adapter is built. Raise ``lgsp.egress.EgressRefused`` for a
        destination the operator's egress policy refuses, ValueError for anything else.
        URL settings declared with ``format: uri`` or a ``^https?://`` pattern are already
        checked against the egress policy."""

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release connections; called when a connection is replaced or at shutdown."""
