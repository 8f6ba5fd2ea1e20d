"""The message door's stages: a message through the pipeline, stored with its audit record, 202.

    identify → resolve → authorize (grant, purpose) → validate (spec/schema, meaning) → accept

`accept` replaces `invoke`: the message is not delivered in the request. Its row (and its dedupe
keys) are statements handed to the audit writer with the exchange's record (lgsp.audit
AuditWriter.commit(record, statements)), so they are committed in the same transaction as the
record: a 202 is only ever sent for a message that is durably stored and audited, and a message is
never stored without the record of its acceptance. The answer is rendered before that commit (the
record holds its hash), so it carries the message id chosen here.

Idempotent: the same Idempotency-Key (per client), or the same key + version (e.g. dossier number
and version, dossier number and progress step id), answers the first acceptance again. The
database's unique key on (client, dedupe key) lets only one insert in, and a repeat is answered
with the first (lgsp.audit.StoreConflict → Exchange.on_store_conflict); only keys this process saw
lately are looked up before storing.

Which services are messages is declared in the spec: `x-lgsp-service.message` names the
ordering key and the version field (openapi/portal.v1.yaml).
"""
from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from types import SimpleNamespace
from typing import Any

import jsonschema

from lgsp import egress, specs
from lgsp.delivery import callbacks, store, wakeup
from lgsp.delivery.policy import Policy
from lgsp.delivery.status import view
from lgsp.errors import ExchangeError
from lgsp.pipeline.authorize import authorize
from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.identify import check_password, identify
from lgsp.pipeline.resolve import resolve
from lgsp.pipeline.run import serve
from lgsp.pipeline.stage import Stage, StageContext
from lgsp.pipeline.validate import validate
from lgsp.traffic.limit import limit

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_KEY = 128
PROCEDURES = "national-procedures"


@dataclass(frozen=True)
class MessageService:
    name: str
    key: str                  # the parameter that orders messages (all of one key in order)
    version: str | None       # the parameter that, with the key, names one content (dedupe)
    body_schema: dict | None  # the request body's schema, for doors whose own contract does not check it


@cache
def message_services() -> dict[str, MessageService]:
    """Services whose spec declares `x-lgsp-service.message`."""
    out = {}
    for api in specs.shared_apis():
        doc = None
        for name, svc in api.services.items():
            message = svc.get("message")
            if not message:
                continue
            doc = doc or specs.document(api.path)
            out[name] = MessageService(name, message["key"], message.get("version"), _body_schema(doc, name))
    return out


@cache
def status_services() -> frozenset[str]:
    return frozenset(name for api in specs.shared_apis() for name, svc in api.services.items()
                     if svc.get("message_status"))


def _body_schema(doc: dict, operation_id: str) -> dict | None:
    """The operation's JSON request body schema with its $refs resolved (OpenAPI 3.0 nullable kept simple)."""
    for item in doc["paths"].values():
        for op in item.values():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                return _resolve(schema, doc) if schema else None
    return None


def _resolve(node: Any, doc: dict) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _resolve(target, doc)
        return {k: _resolve(v, doc) for k, v in node.items() if k not in ("example", "nullable")}
    if isinstance(node, list):
        return [_resolve(v, doc) for v in node]
    return node


# -- meaning checks ---------------------------------------------------------------------

def _parse_time(name: str, value: Any) -> dt.datetime | dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        if "T" in value or " " in value:
            return dt.datetime.fromisoformat(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ExchangeError("request.invalid", f"{name}: {value!r} is not a date (and time) of the calendar.") from None


def check_dates(params: dict[str, Any], where: str = "") -> None:
    """Every *_at / *_date value a real instant or day; what is due or done not before it was received."""
    seen: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    check_dates(item, f"{where}{name}[{i}].")
        elif name.endswith(("_at", "_date")):
            parsed = _parse_time(where + name, value)
            if parsed is not None:
                seen[name] = parsed
    received = seen.get("received_at")
    for later in ("due_at", "returned_at", "finished_at"):
        value = seen.get(later)
        if received is not None and value is not None and _comparable(value) < _comparable(received):
            raise ExchangeError("request.invalid", f"{where}{later} is before {where}received_at.")


def _comparable(value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone(dt.timedelta(hours=7)))
    return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone(dt.timedelta(hours=7)))


_INDEX = re.compile(r"[0-9]{1,3}")
MAX_DEPTH = 4


class _Indexed(dict):
    """A list while it is being filled from `name.0`, `name.1` … (made a list at the end)."""


def unflatten(params: dict[str, Any]) -> dict[str, Any]:
    """Name/value pairs (SOAP CallService) with dotted names as the objects and lists they name:
    `applicant.name`, `fees.0.amount`. A name that cannot be placed is refused."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        parts = name.split(".")
        if len(parts) > MAX_DEPTH or not all(parts) or _INDEX.fullmatch(parts[0]):
            raise ExchangeError("request.invalid", f"{name}: not a parameter name this service takes.")
        node: dict = out
        for part, following in itertools.pairwise(parts):
            child = node.setdefault(part, _Indexed() if _INDEX.fullmatch(following) else {})
            if not isinstance(child, dict) or isinstance(child, _Indexed) != bool(_INDEX.fullmatch(following)):
                raise ExchangeError("request.invalid", f"{name}: conflicts with another parameter.")
            node = child
        if parts[-1] in node:
            raise ExchangeError("request.invalid", f"{name}: conflicts with another parameter.")
        node[parts[-1]] = value
    return _lists(out)


def _lists(node: Any) -> Any:
    if isinstance(node, _Indexed):
        if sorted(int(k) for k in node) != list(range(len(node))):
            raise ExchangeError("request.invalid", "List items are numbered 0, 1, 2 … without gaps.")
        return [_lists(node[k]) for k in sorted(node, key=int)]
    if isinstance(node, dict):
        return {k: _lists(v) for k, v in node.items()}
    return node


def _coerce(value: Any, schema: dict | None) -> Any:
    """Text from name/value pairs as the schema's integers, numbers and booleans."""
    schema = schema or {}
    kind = schema.get("type")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce(v, props.get(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v, schema.get("items")) for v in value]
    if not isinstance(value, str):
        return value
    if kind == "integer" and re.fullmatch(r"-?[0-9]{1,15}", value):
        return int(value)
    if kind == "number" and re.fullmatch(r"-?[0-9]{1,16}(\.[0-9]{1,6})?", value):
        return float(value)
    if kind == "boolean" and value in ("true", "false"):
        return value == "true"
    return value


def _check_schema(params: dict[str, Any], schema: dict | None) -> None:
    if not schema:
        return
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(params), key=lambda e: list(e.path))
    if errors:
        where = "/".join(map(str, errors[0].path)) or "message"
        raise ExchangeError("request.invalid", f"{where}: {errors[0].message}")


def check_message(ex: Exchange, svc: MessageService) -> None:
    if ex.door != "rest" or ex.check_params:  # the REST door's spec already checked the body
        params = _coerce(unflatten(ex.params), svc.body_schema)
        key = params.pop(svc.key, None) if svc.key not in (svc.body_schema or {}).get("properties", {}) else None
        _check_schema(params, svc.body_schema)  # a key carried in the URL on REST is beside the body here
        ex.params = params if key is None else {svc.key: key, **params}
    key = ex.params.get(svc.key)
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY:
        raise ExchangeError("request.invalid", f"{svc.key}: required, 1 to {MAX_KEY} characters.")
    check_dates(ex.params)
    check_procedure(ex.params)


def check_procedure(params: dict[str, Any]) -> None:
    """An unknown procedure code is refused here, not by the portal days later."""
    code = params.get("procedure_code")
    if code is None:
        return
    known = known_procedures()
    if known is not None and code not in known:
        raise ExchangeError("request.invalid",
                            f"procedure_code: {code!r} is not in the national procedure catalogue's code list.")


def known_procedures() -> Mapping[str, Any] | None:
    """The codes of the `national-procedures` code list (lgsp.codelists, replaceable by the operator's
    export of the official catalogue); None when no such list is installed (then no check). The list's
    own mapping: a set of its codes made per message was 1.3 % of a gateway worker's CPU."""
    from lgsp import codelists

    try:
        return codelists.get(PROCEDURES).by_code
    except (KeyError, FileNotFoundError, codelists.CodeListError):
        return None


# -- the stages -------------------------------------------------------------------------

def options(ex: Exchange) -> tuple[str | None, str | None]:
    """The Idempotency-Key and callback URL (REST headers; SOAP CallService parameters)."""
    key = ex.message_options.get("idempotency_key") or ex.params.pop("idempotency_key", None)
    callback = ex.message_options.get("callback_url") or ex.params.pop("callback_url", None)
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_KEY.match(key)):
        raise ExchangeError("request.invalid", "Idempotency-Key: 1 to 128 printable ASCII characters.")
    if callback is not None and (not isinstance(callback, str) or len(callback) > 512):
        raise ExchangeError("request.invalid", "The callback URL is at most 512 characters.")
    return key, callback


def dedupe_keys(svc: MessageService, params: dict[str, Any], idempotency_key: str | None) -> list[str]:
    keys = [f"idem:{idempotency_key}"] if idempotency_key else []
    version = params.get(svc.version) if svc.version else None
    if version is not None and str(version) != "":
        keys.append(f"{svc.name}:{params[svc.key]}:{version}"[:200])
    return keys


async def accept_message(ex: Exchange, ctx: StageContext) -> None:
    """Stage: check the message and store it with the exchange's audit record (answered 202)."""
    svc = message_services()[ex.bound_service.name]
    idempotency_key, callback = options(ex)
    check_message(ex, svc)
    await validate(ex, ctx)
    _note_subject(ex)
    if callback:
        try:
            await asyncio.to_thread(callbacks.check_url, callback)
        except egress.EgressRefused as exc:
            raise ExchangeError("delivery.callback_refused", f"The callback URL is refused: {exc.detail}") from None
    await accept(ex, ctx.gw, svc, idempotency_key, callback)


def _note_subject(ex: Exchange) -> None:
    """A dossier about a citizen: the audit record keeps the keyed hash of their ID (access reports)."""
    pid = ex.params.get("applicant_id")
    if isinstance(pid, str) and re.fullmatch(r"[0-9]{12}", pid):
        ex.subject = pid


async def accept(ex: Exchange, gw: Any, svc: MessageService, idempotency_key: str | None,
                 callback: str | None) -> None:
    client_id = ex.bound_client.client_id
    keys = dedupe_keys(svc, ex.params, idempotency_key)
    ex.ok_status, ex.fields = 202, []
    if _seen_recently(client_id, keys):  # likely a repeat: answer the first without trying to store
        first = await asyncio.to_thread(store.first_acceptance, gw.engine, client_id, keys)
        if first is not None:
            ex.answer = view(first, gw.settings.public_url, replayed=True)
            return
    at = store.now()
    message = {
        "id": new_message_id(), "client_id": client_id, "service": ex.service.name,
        "destination": ex.service.connection, "operation": ex.service.operation, "msg_key": ex.params[svc.key],
        "request_id": ex.request_id, "purpose": ex.purpose, "officer": ex.officer,
        "agency_code": ex.client.agency_code, "payload": store.seal_payload(ex.params), "status": "accepted",
        "attempts": 0, "accepted_at": at, "next_attempt_at": at,
        "expires_at": at + dt.timedelta(seconds=Policy.max_age_from_environment()), "callback_url": callback,
    }
    ex.store = store.store_statements(message, client_id, keys) + wakeup.notify_statement(gw.engine)
    ex.on_store_conflict = _answer_first(gw, client_id, keys)
    row = SimpleNamespace(**{**message, "finished_at": None, "answer": None, "error_code": None, "reason": None})
    ex.answer = view(row, gw.settings.public_url)


# Message ids: a random prefix per process and a counter, in the shape of a UUID (version 8), instead of
# uuid4() per message (a system call each). Ids of one process are thus guessable from one another: every
# read of a message by a sender is checked against its owner (read_status), and operators read through
# the admin API only.
_id_prefix = ""
_id_counter = itertools.count(1)


def _new_prefix() -> None:
    global _id_prefix, _id_counter
    r = secrets.token_hex(10)
    _id_prefix = f"{r[:8]}-{r[8:12]}-8{r[12:15]}-{'89ab'[int(r[15], 16) & 3]}{r[16:19]}-"
    _id_counter = itertools.count(1)


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked process never repeats its parent's ids


def new_message_id() -> str:
    return f"{_id_prefix}{next(_id_counter):012x}"


# Dedupe keys this process accepted lately. A new message is not looked up before it is stored (that
# look-up was a tenth of an acceptance's CPU): the unique key refuses a repeat at commit, and the
# repeat is answered with the first (StoreConflict → _answer_first). A key seen here is looked up
# first, so repeats to the same process do not make the audit writer split its group.
_RECENT: OrderedDict[tuple[str, str], None] = OrderedDict()
RECENT_MAX = 20000


def _seen_recently(client_id: str, keys: list[str]) -> bool:
    seen = False
    for key in keys:
        entry = (client_id, key)
        if entry in _RECENT:
            seen = True
            _RECENT.move_to_end(entry)
        else:
            _RECENT[entry] = None
    while len(_RECENT) > RECENT_MAX:
        _RECENT.popitem(last=False)
    return seen


def _answer_first(gw: Any, client_id: str, keys: list[str]) -> Callable[[Exchange], Awaitable[None]]:
    async def answer(ex: Exchange) -> None:
        first = await asyncio.to_thread(store.first_acceptance, gw.engine, client_id, keys)
        if first is None:  # cannot be: the conflict was with a committed key
            ex.error = ExchangeError("internal.error", "The LGSP could not complete the exchange; it has been logged.")
        else:
            ex.answer = view(first, gw.settings.public_url, replayed=True)
    return answer


async def read_status(ex: Exchange, ctx: StageContext) -> None:
    """Stage: GET …/messages/{message_id}; only the client that sent the message may read it."""
    message_id = str(ex.params.get("message_id", ""))
    row = await asyncio.to_thread(store.read, ctx.gw.engine, message_id) if len(message_id) <= 36 else None
    if row is None or row.client_id != ex.bound_client.client_id:  # another client's message: as if missing
        raise ExchangeError("record.not_found", "No message with this id was accepted from this client.")
    ex.answer = view(row, ctx.gw.settings.public_url)
    ex.fields = []


# The message door's pipelines: the usual identification, grant and rate limits, then the message's own stage.
ACCEPT: tuple[Stage, ...] = (check_password, identify, resolve, authorize, limit, accept_message)
STATUS: tuple[Stage, ...] = (check_password, identify, resolve, authorize, read_status)


def stages_for(service: object) -> tuple[Stage, ...] | None:
    if not isinstance(service, str):  # a malformed request's "name" (e.g. nested XML): the door refuses it
        return None
    if service in message_services():
        return ACCEPT
    if service in status_services():
        return STATUS
    return None


def accepted(render: Callable) -> Callable:
    """An accepted message is answered 202 Accepted, its status URL in Location."""

    def render_accepted(ex: Exchange):
        status, headers, body = render(ex)
        if ex.error is None and isinstance(ex.answer, dict) and stages_for(ex.service_name) is ACCEPT:
            return 202, {**headers, "Location": ex.answer["status_url"]}, body
        return status, headers, body

    return render_accepted


def message_options(headers: Any) -> dict[str, str]:
    """The REST door's message options, from its header fields (Idempotency-Key, X-Callback-URL)."""
    return {k: v for k, v in (("idempotency_key", headers.get("idempotency-key")),
                              ("callback_url", headers.get("x-callback-url"))) if v}


async def serve_message(ex: Exchange, gw: Any, render: Callable[[Exchange], Any], headers: Any,
                        stages: tuple[Stage, ...] = ACCEPT) -> tuple[int, dict[str, str], bytes]:
    """A message of the REST door through its pipeline (answered 202), the workers woken once it is stored."""
    ex.message_options = message_options(headers)
    rendered = await serve(ex, gw, accepted(render), stages=stages)
    if ex.error is None:
        wake_workers(gw)
    return rendered


def wake_workers(gw: Any) -> None:
    worker = getattr(gw, "delivery_worker", None)
    if worker is not None:
        worker.wake()
