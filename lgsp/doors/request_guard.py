"""Requests whose bytes cannot be read as the contract says, refused before routing
and validation, on both planes: control characters in the address, JSON bodies
that are not UTF-8, nest deeper than any of our documents does, or hold an integer
too long for Python's int parser.

Such requests used to reach the JSON parser or the router and end as 500s; now
they raise `Malformed`, which each plane's error handler answers as
`400 request.malformed` (problem+json) — the data plane through the pipeline, so
the refusal is audited like any other.

`allowed_methods` reads the served OpenAPI documents so that a 405 names the
methods the address takes (`Allow`, RFC 9110).
"""
from __future__ import annotations

import re
import sys
from functools import cache

from lgsp import specs
from lgsp.errors import ExchangeError

# Deeper than any document of ours nests (a dataset record, connection settings).
MAX_JSON_DEPTH = 32
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BODY_METHODS = {"POST", "PUT", "PATCH"}
# An integer longer than this is refused by Python's int parser (a guard against its quadratic cost), so
# json.loads raises a plain ValueError on it; digits inside strings are left alone (second search).
_LONG_NUMBER = re.compile(rb"[0-9]{%d,}" % (sys.get_int_max_str_digits() + 1)) if sys.get_int_max_str_digits() else None
# Where the REST fast path (lgsp/doors/routes.py) leaves a body it read and declined, for connexion.
BODY_KEY = "lgsp.body"


class Malformed(Exception):
    """A request refused before routing; `error` is what the caller is told."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.error = ExchangeError("request.malformed", detail)


def unreadable(exc: Exception) -> ExchangeError | None:
    """The error for a body that could not be read (not UTF-8, nested too deeply), or None."""
    if isinstance(exc, Malformed):
        return exc.error
    if isinstance(exc, UnicodeDecodeError):
        return Malformed("The body is not UTF-8 text; JSON must be sent as UTF-8 (RFC 8259).").error
    if isinstance(exc, RecursionError):
        return Malformed("The JSON body nests too deeply to be read.").error
    return None


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (strings skipped)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # cannot nest deeper than it has brackets
    depth = deepest = 0
    for byte in _JSON_STRING.sub(b'""', body):
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def check_body(body: bytes, content_type: str) -> None:
    if "json" not in content_type:
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("The body is not UTF-8 text; JSON must be sent as UTF-8 (RFC 8259).") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise Malformed(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    if _LONG_NUMBER is not None and _LONG_NUMBER.search(body) and _LONG_NUMBER.search(_JSON_STRING.sub(b'""', body)):
        raise Malformed(f"A number in the JSON body has more than {sys.get_int_max_str_digits()} digits.")


def check_path(path: str) -> None:
    if _CONTROL.search(path):
        raise Malformed("The address holds control characters (such as CR or LF).")


class RequestGuard:
    """ASGI middleware: checks the path, and buffers and checks JSON bodies (already size-bounded)."""

    def __init__(self, app, limit: int | None = None):
        self.app = app
        self.limit = limit
        _routes()  # at start-up, not in the first request of each worker

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        check_path(scope.get("path", ""))
        _check_literal_route(scope.get("path", ""), scope.get("method", ""))
        if scope.get("method") not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if "json" not in content_type:
            return await self.app(scope, receive, send)
        body = (scope.get("extensions") or {}).pop(BODY_KEY, None)
        if body is None:
            body = await self._read(receive)
        check_body(body, content_type)
        return await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive) -> bytes:
        from starlette.exceptions import HTTPException

        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.limit is not None and size > self.limit:
                raise HTTPException(413)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# -- methods an address takes, from the served documents ------------------------------

@cache
def _routes() -> tuple[tuple[re.Pattern, frozenset[str], bool], ...]:
    paths = [*(api.path for api in specs.shared_apis()), *specs.control_apis()]
    routes = []
    for path in paths:
        doc = specs.document(path)
        base = specs.base_path(doc)
        for template, item in doc["paths"].items():
            methods = frozenset(m.upper() for m in item if m in ("get", "put", "post", "delete", "patch"))
            pattern = re.escape(base.rstrip("/") + template)
            pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", pattern)
            routes.append((re.compile(pattern + "/?$" if template == "/" else pattern + "$"), methods,
                           "{" not in template))
    return tuple(sorted(routes, key=lambda r: not r[2]))  # literal paths first


def _check_literal_route(path: str, method: str) -> None:
    """GET /citizens/verify is not GET /citizens/{personal_id} with 'verify': the literal resource
    exists and does not take the method, so the router must not hand it to the templated one."""
    from starlette.exceptions import HTTPException

    for pattern, found, literal in _routes():
        if not literal:
            return
        if pattern.match(path) and method not in found:
            raise HTTPException(405)


def allowed_methods(path: str) -> str | None:
    """`Allow` for an address of a served document ('GET, PUT'), or None if no document has it.

    A literal path (/citizens/verify) is the resource, not a value of a templated one beside it."""
    methods: set[str] = set()
    for pattern, found, literal in _routes():
        if pattern.match(path):
            if literal:
                return ", ".join(sorted(found))
            methods |= found
    return ", ".join(sorted(methods)) if methods else None
