"""The REST door's fast path: the shared APIs' plain reads and messages, routed and validated without connexion.

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

Messages (POST of a store-and-forward service, lgsp/delivery/accept.py) are the one kind of request
with a body it takes: `application/json` with a declared length within the body limit, UTF-8 and
not nested too deeply (request_guard), parsed, and valid against the operation's body schema, checked
by jsonschema's Draft 4 validator with its format checker, as connexion checks it, compiled once here
into plain checks (lgsp.doors.schema_check).
A body it has read and declines is left in the scope (`BODY_KEY`) for RequestGuard to hand to
connexion, so connexion refuses it exactly as if the fast path had never seen it.

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

import orjson

from lgsp import bulk, specs
from lgsp.config import settings
from lgsp.delivery import accept as messages
from lgsp.doors.request_guard import BODY_KEY, Malformed, check_body, check_path
from lgsp.doors.schema_check import compile_schema
from lgsp.gateway import Gateway
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.run import Rendered, internal_error, serve

log = logging.getLogger(__name__)

# A parameter schema the fast path checks itself: a string, and these keywords at most.
_STRING_KEYWORDS = {"type", "pattern", "maxLength", "minLength", "enum", "description", "example", "examples"}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The media types a message body is taken in (anything else, e.g. another charset, is connexion's to judge).
_JSON_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})


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
    body: Callable[[Any], bool] | None = None  # a message's body check (POST); None for a read


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
            if not isinstance(op, dict) or (method, "requestBody" in op) not in (("get", False), ("post", True)):
                continue
            service = op.get("operationId")
            if not service or "x-lgsp-service" not in op:
                continue
            body = body_check(doc, op) if method == "post" and messages.stages_for(service) is messages.ACCEPT else None
            if (body is None) == (method == "post") or (method == "get" and not _plain_service(service)):
                continue
            params = [_param(doc, p) for p in (*common, *op.get("parameters", []))]
            if any(p is None for p in params):
                continue  # a parameter the fast path does not check itself: connexion serves the operation
            kept = tuple(p for p in params if p is not None)
            names = {p.name for p in kept if p.where == "path"}
            if set(re.findall(r"\{([^}]+)\}", template)) != names:
                continue
            regex = re.sub(r"\\\{([^}]+)\\\}", r"(?P<\1>[^/]+)", re.escape(base.rstrip("/") + template))
            found.append(FastRoute(service, method.upper(), re.compile(regex + "$"), kept,
                                   frozenset(p.name for p in kept if p.where == "query"), body))
    return found


def body_check(doc: dict[str, Any], op: dict[str, Any]) -> Callable[[Any], bool] | None:
    """Whether a parsed body is valid for the operation: the validator connexion uses (Draft 4 and its
    format checker) compiled once. Its $refs resolve in the document itself. None if not a required JSON body."""
    request_body = _resolve(doc, op.get("requestBody"))
    content = request_body.get("content") if isinstance(request_body, dict) else None
    if not isinstance(content, dict) or set(content) != {"application/json"} or not request_body.get("required"):
        return None
    schema = content["application/json"].get("schema")
    if not isinstance(schema, dict):
        return None
    # OpenAPI's `nullable` only widens what connexion takes, so a stricter plain Draft 4 check never accepts more.
    # Its $refs inlined here: following them per request was 6/7 of the check's time.
    inlined = _inlined(doc, schema, 0)
    if inlined is None:
        return None
    return compile_schema(inlined)


def _inlined(doc: dict[str, Any], node: Any, depth: int) -> Any:
    """A schema with its local $refs replaced by what they name; None if they nest past any of ours (a cycle)."""
    if depth > MAX_SCHEMA_DEPTH:
        return None
    if isinstance(node, list):
        items = [_inlined(doc, v, depth + 1) for v in node]
        return None if any(i is None and v is not None for i, v in zip(items, node, strict=True)) else items
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = _resolve(doc, node)
        return None if target is None else _inlined(doc, target, depth + 1)
    out = {k: _inlined(doc, v, depth + 1) for k, v in node.items()}
    return None if any(out[k] is None and node[k] is not None for k in out) else out


MAX_SCHEMA_DEPTH = 64


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
        self.body_limit = settings().max_body_bytes  # as the BodyLimit middleware in front of connexion

    def match(self, scope: dict[str, Any]) -> tuple[FastRoute, dict[str, str], Mapping[str, str]] | None:
        """The route and the validated parameters of a request the fast path takes, or None."""
        method, path = scope["method"], scope["path"]
        if method not in ("GET", "POST"):
            return None
        try:
            check_path(path)
        except Malformed:
            return None
        if method not in self.literals.get(path, (method,)):
            return None  # a literal resource of another method: connexion answers (405 with Allow)
        for route in self.routes:
            m = route.pattern.match(path)
            if m is not None and route.method == method:
                break
        else:
            return None
        headers, repeated = header_fields(scope)
        if "transfer-encoding" in headers or not self._body_fits(route, headers, repeated):
            return None
        params = _validated(route, m.groupdict(), scope.get("query_string", b""), headers, repeated)
        return None if params is None else (route, params, headers)

    def _body_fits(self, route: FastRoute, headers: Mapping[str, str], repeated: set[str]) -> bool:
        length = headers.get("content-length", "0")
        if route.body is None:
            return length == "0"
        return (not repeated & {"content-length", "content-type"} and length.isdigit()
                and 0 < int(length) <= self.body_limit and headers.get("content-type", "").lower() in _JSON_TYPES)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        found = self.match(scope)
        if found is None:
            return False
        route, params, headers = found
        if route.body is not None and not await _take_body(route, scope, receive, params):
            return False
        ex = self.exchange_from(headers, scope, route.service, params)
        try:
            status, out, body = await self._serve(ex, route, headers)
        except Exception:  # as connexion's error handler does: a defect is logged, and answered audited
            log.exception("request %s failed", ex.request_id)
            status, out, body = await serve(ex, self.gateway, self.render, refusal=internal_error())
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out.items()]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
        return True

    async def _serve(self, ex: Exchange, route: FastRoute, headers: Mapping[str, str]) -> Rendered:
        if route.body is None:
            return await serve(ex, self.gateway, self.render)
        return await messages.serve_message(ex, self.gateway, self.render, headers)


async def _take_body(route: FastRoute, scope: dict[str, Any], receive: Any, params: dict[str, Any]) -> bool:
    """Reads the body; a valid one's fields join the params (as connexion's handler puts them beside
    the path's), and True. A body it declines is left in the scope for RequestGuard to hand to connexion."""
    raw = await _read(receive)
    if raw is None:
        return False  # the caller left: connexion reads the disconnect, as before
    body = _valid_body(route, raw)
    if body is None:
        scope.setdefault("extensions", {})[BODY_KEY] = raw
        return False
    params.update(body)
    return True


async def _read(receive: Any) -> bytes | None:
    """The whole body (its declared length is within the limit, and the server holds it to that), or
    None if the caller disconnected."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _valid_body(route: FastRoute, raw: bytes) -> dict[str, Any] | None:
    """The parsed body if the fast path takes it: readable JSON (as RequestGuard and connexion read it),
    an object, valid against the operation's schema; otherwise None."""
    try:
        check_body(raw, "application/json")
        body = orjson.loads(raw)  # stricter than json.loads (no NaN, no lone surrogates): it only declines more
    except (Malformed, orjson.JSONDecodeError):
        return None
    return body if isinstance(body, dict) and route.body is not None and route.body(body) else None


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


def _literal_paths(documents: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """Addresses of the documents without a template part, and the methods each takes (only those)."""
    out = {}
    for doc in documents:
        base = specs.base_path(doc)
        for template, item in doc.get("paths", {}).items():
            if "{" not in template and isinstance(item, dict):
                out[base.rstrip("/") + template] = frozenset(m.upper() for m in item if m in _METHODS)
    return out


_METHODS = ("get", "put", "post", "delete", "patch")
