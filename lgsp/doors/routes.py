"""The REST door's fast path: the shared APIs' plain reads, routed and validated without connexion.

connexion's per-request machinery (its middleware stack, parameter decorators and validators)
cost about a third of a worker's CPU per exchange. For the operations that need none of it — a
GET of a shared service whose parameters are plain strings in the path, query and header — the
routes and their parameter checks are compiled here at start-up from the same OpenAPI documents
connexion serves, so the spec stays the one source of truth.

The fast path only ever *accepts*: a request it matches and finds valid in every parameter goes
straight to the pipeline; anything else (no route, another method, a body, a parameter it does
not know, one that breaks the schema, a missing required header …) is declined and handed to
connexion untouched, which routes, validates and refuses it exactly as before. So every refusal
keeps its status and error code, and an operation or document the fast path does not know (a
request body, an integer query parameter, a new spec) is still served by connexion.

`LGSP_REST_FAST_PATH=0` turns it off (everything through connexion), e.g. to compare the two.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl

from lgsp import bulk, specs
from lgsp.delivery import accept as messages
from lgsp.doors.request_guard import Malformed, check_path
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.run import Rendered, internal_error, serve

log = logging.getLogger(__name__)

# A parameter schema the fast path checks itself: a string, and these keywords at most.
_STRING_KEYWORDS = {"type", "pattern", "maxLength", "minLength", "enum", "description", "example", "examples"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def enabled() -> bool:
    return os.environ.get("LGSP_REST_FAST_PATH", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Param:
    name: str         # as the spec names it; for headers, lower-cased
    where: str        # path | query | header
    required: bool
    check: Callable[[str], bool]


@dataclass(frozen=True)
class FastRoute:
    service: str               # the operationId
    method: str
    pattern: re.Pattern[str]
    params: tuple[Param, ...]
    query: frozenset[str]      # the query parameters the operation declares (strict: no others)


def string_check(schema: dict[str, Any]) -> Callable[[str], bool] | None:
    """A check of a string against a plain string schema, or None if the schema is more than that."""
    if schema.get("type") != "string" or not set(schema) <= _STRING_KEYWORDS:
        return None
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    low, high, enum = schema.get("minLength", 0), schema.get("maxLength"), schema.get("enum")

    def check(value: str) -> bool:
        # JSON Schema's pattern is a search, not a full match, as jsonschema (and so connexion) reads it.
        return (low <= len(value) and (high is None or len(value) <= high)
                and (pattern is None or pattern.search(value) is not None) and (enum is None or value in enum))

    return check


def _resolve(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return None
        node = doc
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _param(doc: dict[str, Any], raw: Any) -> Param | None:
    spec = _resolve(doc, raw)
    if not isinstance(spec, dict) or spec.get("in") not in ("path", "query", "header"):
        return None
    schema = _resolve(doc, spec.get("schema"))
    check = string_check(schema) if isinstance(schema, dict) else None
    name = spec.get("name", "")
    if check is None or "default" in (schema or {}) or not _IDENTIFIER.match(name.replace("-", "_")):
        return None
    if spec["in"] == "query" and spec.get("style", "form") != "form":
        return None
    where = spec["in"]
    return Param(name.lower() if where == "header" else name, where,
                 bool(spec.get("required")) or where == "path", check)


def _plain_service(service: str) -> bool:
    """A service served by the usual pipeline and rendering (not a job, a message or the generic call)."""
    return service not in PIPELINES_OF_THEIR_OWN and service != "services.call" and not messages.stages_for(service)


PIPELINES_OF_THEIR_OWN = frozenset({bulk.SUBMIT, bulk.GET})


def routes_of(doc: dict[str, Any]) -> list[FastRoute]:
    """The fast routes of one shared-API document: its GETs without a body whose parameters are plain strings."""
    base = specs.base_path(doc)
    found = []
    for template, item in doc.get("paths", {}).items():
        if template == "/" or not isinstance(item, dict):
            continue  # the document's root: connexion's own slash handling decides
        common = item.get("parameters", [])
        for method, op in item.items():
            if method != "get" or not isinstance(op, dict) or "requestBody" in op:
                continue
            service = op.get("operationId")
            if not service or "x-lgsp-service" not in op or not _plain_service(service):
                continue
            params = [_param(doc, p) for p in (*common, *op.get("parameters", []))]
            if any(p is None for p in params):
                continue  # a parameter the fast path does not check itself: connexion serves the operation
            kept = tuple(p for p in params if p is not None)
            names = {p.name for p in kept if p.where == "path"}
            if set(re.findall(r"\{([^}]+)\}", template)) != names:
                continue
            regex = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(base.rstrip("/") + template))
            found.append(FastRoute(service, "GET", re.compile(regex + "$"), kept,
                                   frozenset(p.name for p in kept if p.where == "query")))
    return found


class FastPath:
    """Matches and validates a request against the compiled routes; serves it, or declines (returns False)."""

    def __init__(self, gateway: Gateway, render: Callable[[Exchange], Rendered],
                 exchange_from: Callable[[Mapping[str, str], dict[str, Any], str, dict[str, Any]], Exchange],
                 documents: list[dict[str, Any]] | None = None):
        self.gateway, self.render, self.exchange_from = gateway, render, exchange_from
        if documents is None:
            documents = [specs.document(api.path) for api in specs.shared_apis() if api.door == "rest"]
        routes = [r for doc in documents for r in routes_of(doc)]
        # Literal addresses first: /citizens/verify is not /citizens/{personal_id} (as request_guard says).
        self.routes = tuple(sorted(routes, key=lambda r: "(?P<" in r.pattern.pattern))
        self.services = frozenset(r.service for r in self.routes)
        self.literals = _literal_paths(documents)

    def match(self, scope: dict[str, Any]) -> tuple[FastRoute, dict[str, str], Mapping[str, str]] | None:
        """The route and the validated parameters of a request the fast path takes, or None."""
        if scope["method"] != "GET":
            return None
        path = scope["path"]
        try:
            check_path(path)
        except Malformed:
            return None
        if path in self.literals:
            return None  # a literal resource of another method: connexion answers (405 with Allow)
        for route in self.routes:
            m = route.pattern.match(path)
            if m is not None:
                break
        else:
            return None
        headers, repeated = header_fields(scope)
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            return None
        params = _validated(route, m.groupdict(), scope.get("query_string", b""), headers, repeated)
        return None if params is None else (route, params, headers)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        found = self.match(scope)
        if found is None:
            return False
        route, params, headers = found
        ex = self.exchange_from(headers, scope, route.service, params)
        try:
            status, out, body = await serve(ex, self.gateway, self.render)
        except Exception:  # as connexion's error handler does: a defect is logged, and answered audited
            log.exception("request %s failed", ex.request_id)
            status, out, body = await serve(ex, self.gateway, self.render, refusal=internal_error())
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return True


def header_fields(scope: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """The request's header fields decoded once, each name with its first value (as starlette's Headers.get
    reads it), and the names sent more than once. Headers.get decodes every field again on each call."""
    first: dict[str, str] = {}
    repeated: set[str] = set()
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        if name in first:
            repeated.add(name)
        else:
            first[name] = raw_value.decode("latin-1")
    return first, repeated


def _validated(route: FastRoute, path_values: dict[str, str], query_string: bytes,
               headers: Mapping[str, str], repeated: set[str]) -> dict[str, Any] | None:
    try:
        query = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, strict_parsing=bool(query_string))
    except ValueError:
        return None
    if len(query) != len({k for k, _ in query}) or any(k not in route.query or not v for k, v in query):
        return None  # unknown, repeated or empty query parameters: connexion's strict validation decides
    given = dict(query)
    params: dict[str, Any] = {}
    for p in route.params:
        if p.where == "header":
            if p.name in repeated:
                return None
            value = headers.get(p.name)
        else:
            value = path_values.get(p.name) if p.where == "path" else given.get(p.name)
        if value is None:
            if p.required:
                return None
            continue
        if not p.check(value):
            return None
        if p.where != "header":
            params[p.name] = value
    return params


def _literal_paths(documents: list[dict[str, Any]]) -> frozenset[str]:
    """Addresses of the documents without a template part (they take their own methods only)."""
    out = set()
    for doc in documents:
        base = specs.base_path(doc)
        for template, item in doc.get("paths", {}).items():
            if "{" not in template and isinstance(item, dict) and "get" not in item:
                out.add(base.rstrip("/") + template)
    return frozenset(out)
