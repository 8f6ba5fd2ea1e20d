"""Adapter for the national business registration database (CSDL đăng ký doanh nghiệp), REST.

Through the national gateway: ``GET {endpoint}/chiTietDoanhNghiep?msdn=<code>``
with a bearer token the adapter obtains itself from the gateway's OAuth2
``/token`` endpoint (client credentials of the province). The token is cached
until shortly before it expires; a 401 (revoked early, clocks apart) makes the
adapter fetch a new one and retry once.

Upstream HTTP goes over the SDK's KeepAliveClient, as for the population adapter: kept-alive
HTTP/1.1 parsed by httptools, egress policy checked at connect, redirects refused (httpx cost
~2.4 ms CPU per call at 50 concurrent calls, aiohttp ~0.09 ms; docs/performance.md).

The registry answers ``{"Status": 1|0, "Message": ..., "Data": ...}``. Status 0
says "not found" and every other refusal alike, with HTTP 200; only a message
saying the enterprise does not exist becomes ``RecordNotFound`` (the phrases are
a setting), any other Status 0 is an ``UpstreamFault``, never a false 404.
"""
from __future__ import annotations

import asyncio
import base64
import re
import time
import unicodedata
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlencode

import orjson

from lgsp.sdk import (
    Adapter,
    AdapterResult,
    CallContext,
    ClientFailure,
    KeepAliveClient,
    Operation,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

__version__ = "1.0.0"

MAX_ANSWER = 4 * 1024 * 1024  # an enterprise is a few KB; refuse to buffer more than this
NOT_FOUND_MESSAGES = ("không tìm thấy", "không tồn tại")
_ENTERPRISE_CODE = re.compile(r"[0-9]{10}(-[0-9]{3})?")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


class _Token:
    """The upstream access token and when to stop using it (monotonic clock)."""

    __slots__ = ("value", "renew_at")

    def __init__(self, value: str, expires_in: float):
        self.value = value
        # Renew a little early, so a token never expires on its way upstream.
        self.renew_at = time.monotonic() + expires_in - min(30.0, expires_in / 10)

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.renew_at


class BusinessAdapter(Adapter):
    name = "business"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["endpoint", "token_url", "client_id", "client_secret"],
        "properties": {
            "endpoint": {"type": "string", "pattern": "^https?://",
                         "description": "Base URL of the registry's API on the national gateway, "
                                        "e.g. https://…/apiCSDLDKDN/1.0"},
            "token_url": {"type": "string", "pattern": "^https?://",
                          "description": "OAuth2 token endpoint of the national gateway"},
            "client_id": {"type": "string", "minLength": 1, "description": "The province's client id"},
            "client_secret": {"type": "string", "minLength": 1, "writeOnly": True,
                              "description": "The province's client secret"},
            "scope": {"type": "string", "description": "Scope to request with the token, if the gateway wants one"},
            "token_auth": {"enum": ["basic", "post"], "default": "basic",
                           "description": "Send the client credentials as HTTP Basic or in the form body"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120, "default": 10},
            "max_connections": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
            "not_found_messages": {
                "type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                "description": "Phrases of a Status 0 Message that mean 'no such enterprise' (case ignored)",
            },
            "headers": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Extra HTTP headers the national gateway expects"},
        },
    }
    operations = {
        "enterprise.get": Operation(
            "enterprise.get", "Look up an enterprise or branch by code (chiTietDoanhNghiep)", mapping="enterprise.get",
            # Shape is checked by lgsp.pipeline.validate (enterprise_code.malformed), not here,
            # so every door refuses a bad code with the same error.
            params_schema={"type": "object", "required": ["enterprise_code"],
                           "properties": {"enterprise_code": {"type": "string"}}},
            persons=("members",),  # owners and legal representatives: each in their own access report
        ),
    }
    mapping_file = Path(__file__).parent / "mapping.yaml"
    simulator = "lgsp_adapters.business.simulator:create_app"
    examples = {"enterprise.get": {"enterprise_code": "0101234565"}}
    not_found_examples = {"enterprise.get": {"enterprise_code": "0100000000"}}

    def __init__(self, settings: Mapping[str, Any]):
        super().__init__(settings)
        self.endpoint = self.settings["endpoint"].rstrip("/")
        self.url = f"{self.endpoint}/chiTietDoanhNghiep"
        self.token_url = self.settings["token_url"]
        self.timeout = float(self.settings.get("timeout", 10))
        self._limit = int(self.settings.get("max_connections", 100))
        self._headers = {"Accept": "application/json", **(self.settings.get("headers") or {})}
        self._not_found = tuple(_fold(p) for p in self.settings.get("not_found_messages") or NOT_FOUND_MESSAGES)
        pair = f"{self.settings['client_id']}:{self.settings['client_secret']}".encode()
        self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        self._token: _Token | None = None
        self._token_lock = asyncio.Lock()
        self._http = KeepAliveClient(limit=self._limit, timeout=self.timeout)

    async def aclose(self) -> None:
        await self._http.close()

    # -- the upstream token ---------------------------------------------------------------
    async def _access_token(self, stale: str | None = None) -> str:
        """A usable token; ``stale`` is one the API just refused, so it is not handed out again."""
        token = self._token
        if token is not None and token.fresh and token.value != stale:
            return token.value
        async with self._token_lock:  # one refresh for many waiting calls
            token = self._token
            if token is None or not token.fresh or token.value == stale:
                self._token = token = await self._fetch_token()
            return token.value

    async def _fetch_token(self) -> _Token:
        where = {"upstream": self.token_url}
        form = {"grant_type": "client_credentials"}
        if self.settings.get("scope"):
            form["scope"] = self.settings["scope"]
        headers = dict(self._headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        if self.settings.get("token_auth", "basic") == "basic":
            headers["Authorization"] = self._basic
        else:
            form.update(client_id=self.settings["client_id"], client_secret=self.settings["client_secret"])
        try:
            reply = await self._http.request("POST", self.token_url, body=urlencode(form).encode("ascii"),
                                             headers=headers, limit=MAX_ANSWER)
            status, content = reply.status, reply.body
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The national gateway's token endpoint did not answer within {self.timeout:g} s.",
                                  **where) from None
        except ClientFailure:
            raise UpstreamUnavailable("The national gateway's token endpoint could not be reached.", **where) from None
        return self._token_from(status, content, where)

    @staticmethod
    def _token_from(status: int, content: bytes, where: dict) -> _Token:
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            doc = None
        if status in (400, 401) and isinstance(doc, dict) and "error" in doc:
            # A configuration problem on our side (wrong client secret), reported as such.
            raise UpstreamFault(f"The national gateway refused the LGSP's client credentials ({doc['error']}).",
                                fault_code=str(doc["error"]), **where)
        if status != 200:
            raise UpstreamUnavailable(f"The national gateway's token endpoint answered HTTP {status}.", **where)
        value = doc.get("access_token") if isinstance(doc, dict) else None
        expires_in = doc.get("expires_in", 300) if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value or isinstance(expires_in, bool) \
                or not isinstance(expires_in, (int, float)) or expires_in <= 0:
            raise UpstreamMalformed("The national gateway's token answer has no usable access token.", **where)
        return _Token(value, float(expires_in))

    # -- the call ---------------------------------------------------------------------------
    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        if operation != "enterprise.get":
            raise UpstreamError(f"The business adapter has no operation {operation!r}.")
        code = params.get("enterprise_code")
        if not isinstance(code, str) or not _ENTERPRISE_CODE.fullmatch(code):
            # lgsp.pipeline.validate refuses these first; never send such a value upstream.
            raise ValueError("enterprise_code must be 10 digits, or 10 digits, '-' and 3 digits")
        trace_id = context.request_id
        where = {"upstream": self.url, "trace_id": trace_id}
        token = await self._access_token()
        status, content = await self._get(code, token, trace_id, where)
        if status == 401:  # expired or revoked ahead of our clock: one new token, one retry
            token = await self._access_token(stale=token)
            status, content = await self._get(code, token, trace_id, where)
            if status == 401:
                raise UpstreamFault("The national gateway refused the LGSP's fresh access token.",
                                    fault_code="invalid_token", **where)
        return AdapterResult(data=self._main_information(status, content, where), **where)

    async def _get(self, code: str, token: str, trace_id: str, where: dict) -> tuple[int, bytes]:
        headers = dict(self._headers, Authorization=f"Bearer {token}", **{"X-Request-ID": trace_id})
        try:
            reply = await self._http.request("GET", self.url, params={"msdn": code}, headers=headers,
                                             limit=MAX_ANSWER)
            return reply.status, reply.body
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"The business registration database did not answer within {self.timeout:g} s.",
                                  **where) from None
        except ClientFailure:
            raise UpstreamUnavailable("The business registration database could not be reached.", **where) from None

    def _main_information(self, status: int, content: bytes, where: dict) -> dict:
        """Data.MainInformation of an answer, or the right UpstreamError."""
        doc = self._envelope(status, content, where)
        if doc.get("Status") not in (1, "1"):
            message = doc.get("Message") if isinstance(doc.get("Message"), str) else ""
            if status in (200, 404) and any(p in _fold(message) for p in self._not_found):
                raise RecordNotFound("The national business registration database has no enterprise with this code.",
                                     **where)
            raise UpstreamFault(f"The business registration database reported an error: {message[:200]}",
                                fault_code=f"Status {doc.get('Status')}", **where)
        data = doc.get("Data")
        main = data.get("MainInformation") if isinstance(data, dict) else None
        if not isinstance(main, dict) or not main:
            raise UpstreamMalformed("The business registration database's answer has no MainInformation.", **where)
        return main

    @staticmethod
    def _envelope(status: int, content: bytes, where: dict) -> dict:
        if len(content) > MAX_ANSWER:
            raise UpstreamMalformed("The business registration database's answer is too large.", **where)
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict) and "Status" in doc:
            return doc  # an envelope, whatever the HTTP status: its Status and Message say more
        if status != 200:
            raise UpstreamUnavailable(f"The business registration database answered HTTP {status}.", **where)
        raise UpstreamMalformed("The business registration database's answer is not its JSON envelope.", **where)
