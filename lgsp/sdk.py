"""The adapter SDK: everything an adapter, its simulator and its tests import from LGSP.

Adapters (built-in and third-party) import only from here, so the gateway's
internals can move without breaking them; a test holds the built-in adapters
to it. See docs/adapters.md for the interface and a worked example.
"""
from __future__ import annotations

from lgsp import codelists, egress, personal_id, plugins, soap
from lgsp.adapter import (
    Adapter,
    AdapterResult,
    CallContext,
    NotAllowed,
    Operation,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from lgsp.config import settings as _settings
from lgsp.crypto import derive_key
from lgsp.egress import EgressRefused
from lgsp.http import LazySession
from lgsp.keepalive import Answer, ClientFailure, KeepAliveClient
from lgsp.mapping.compile import load_mapping
from lgsp.pipeline.grant_fields import Shape, schema_shape
from lgsp.pipeline.minimize import PAGE
from lgsp.simkit import FAULT_MODES, Faults
from lgsp.simkit import serve as serve_simulator
from lgsp.storage import engine_for


def gateway_database_url() -> str:
    """The gateway's own database URL, for adapters that keep their data beside it (the datastore)."""
    return _settings().db_url


__all__ = [
    # the interface
    "Adapter", "Operation", "CallContext", "AdapterResult",
    # how a backend's trouble is reported
    "UpstreamError", "UpstreamTimeout", "UpstreamUnavailable", "UpstreamFault", "UpstreamMalformed",
    "RecordNotFound", "NotAllowed",
    # talking to backends
    "LazySession", "KeepAliveClient", "Answer", "ClientFailure", "soap", "egress", "EgressRefused",
    # answers: declarative mapping, pages, fields a grant may name
    "load_mapping", "PAGE", "Shape", "schema_shape",
    # data shared with simulators
    "codelists", "personal_id", "Faults", "FAULT_MODES", "serve_simulator",
    # the discovery and settings checks the gateway applies, for an adapter's own tests
    "plugins",
    # adapters that store data (the provincial datastore)
    "derive_key", "engine_for", "gateway_database_url",
]
