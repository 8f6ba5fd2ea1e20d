"""Adapter for the provincial shared data store (kho dữ liệu dùng chung).

Sector systems publish records into datasets and query them. A dataset is
declared in a YAML file (name, version, owner agency, key field(s), a JSON
Schema for its records, the fields a query may filter on); the records live in
one table of the connection's SQL database (SQLite or PostgreSQL). Only clients
of a dataset's owner agency may publish to it; any client with a grant may read.

The adapter already answers in the canonical model (a dataset's schema *is*
its canonical form), so it has no mapping file; and the store is local, so it
has no simulator. See docs/datastore.md.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable, Mapping

import orjson
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.exc import SQLAlchemyError

from lgsp.sdk import (
    PAGE,
    Adapter,
    AdapterResult,
    CallContext,
    EgressRefused,
    NotAllowed,
    Operation,
    RecordNotFound,
    UpstreamError,
    UpstreamUnavailable,
    derive_key,
    engine_for,
    gateway_database_url,
)
from lgsp_adapters.datastore.datasets import Dataset, FilterError, load_datasets
from lgsp_adapters.datastore.store import Conflict, Store

__version__ = "1.0.0"

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class RecordInvalid(UpstreamError):
    """A published record does not fit its dataset's schema (or its key)."""

    code = "record.invalid"


class RecordCharacters(UpstreamError):
    """A published record holds characters XML cannot carry: readers on the SOAP door could not get it."""

    code = "record.invalid_characters"


# XML 1.0's characters; anything else (U+0001, U+FFFE…) is refused at publish.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class BadRequest(UpstreamError):
    """Parameters the spec cannot check: filters, limit, cursor of a given dataset."""

    code = "request.invalid"


class UnknownDataset(UpstreamError):
    code = "request.not_found"


class FilterNotGranted(UpstreamError):
    """A filter on a field the caller's grant hides: its answers would reveal the hidden values."""

    code = "access.filter_not_granted"


class CursorInvalid(UpstreamError):
    """A cursor this API did not give to this client for this dataset."""

    code = "cursor.invalid"


# Operator configuration (environment), never connection settings: an integrator must not
# choose which database the gateway opens or creates, nor which directories it reads.
DATABASE_ENV = "LGSP_DATASTORE_DATABASE_URL"
DATASETS_ENV = "LGSP_DATASTORE_DATASETS"


def bundled_datasets() -> str:
    """The directory of the datasets shipped with the adapter (the example dataset)."""
    return str(Path(str(files("lgsp_adapters.datastore"))) / "datasets")


DATASET_PARAM = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"}
KEY_PARAM = {"type": "string", "minLength": 1, "maxLength": 200}


class DatastoreAdapter(Adapter):
    name = "datastore"
    version = __version__
    settings_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "datasets": {
                "description": "A directory of dataset declarations (*.yaml), or a list of declaration files, "
                               "inside the adapter's own datasets or a directory the operator lists in "
                               "LGSP_DATASTORE_DATASETS; defaults to the datasets shipped with the adapter",
                "oneOf": [{"type": "string", "minLength": 1},
                          {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}],
            },
            "database_url": {
                "type": "string", "pattern": "^(sqlite|postgresql)(\\+[a-z0-9]+)?://",
                "description": "Not accepted: the operator sets the database (LGSP_DATASTORE_DATABASE_URL; "
                               "default the LGSP's own), so that no integrator picks a database or a file path",
            },
        },
    }
    # Params as the REST door gives them (record as an object, filter as an
    # object, limit as a number) and as a call by name gives them through the
    # SOAP door's name/value pairs (record as JSON text, `filter.<field>`
    # pairs, limit as digits): the adapter takes both.
    operations = {
        "records.publish": Operation(
            "records.publish", "Create or update a record of a dataset (idempotent by key)", writes=True,
            params_schema={"type": "object", "required": ["dataset", "record"],
                           "properties": {"dataset": DATASET_PARAM, "key": KEY_PARAM,
                                          "record": {"type": ["object", "string"]}}},
        ),
        "records.query": Operation(
            "records.query", "Records of a dataset, filtered on declared fields, a page at a time in key order",
            params_schema={"type": "object", "required": ["dataset"],
                           "properties": {"dataset": DATASET_PARAM,
                                          "filter": {"type": "object", "additionalProperties": {"type": "string"}},
                                          "limit": {"type": ["integer", "string"], "pattern": "^[0-9]{1,3}$",
                                                    "minimum": 1, "maximum": MAX_LIMIT},
                                          "cursor": {"type": "string", "maxLength": 1000}},
                           "patternProperties": {"^filter\\.": {"type": "string"}}},
        ),
        "records.get": Operation(
            "records.get", "One record of a dataset by key",
            params_schema={"type": "object", "required": ["dataset", "key"],
                           "properties": {"dataset": DATASET_PARAM, "key": KEY_PARAM}},
        ),
    }
    mapping_file = None
    simulator = None
    # For `lgsp adapters test`: reads only. Publishing needs a caller of the
    # owner agency and would write into the store, so the kit does not try it.
    examples = {"records.query": {"dataset": "business-licences", "limit": 1}}
    not_found_examples = {"records.get": {"dataset": "business-licences", "key": "SCT-NONE-0000-00000"}}

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        if "database_url" in settings:
            raise EgressRefused(f"settings/database_url: the data store's database is chosen by the operator "
                                f"({DATABASE_ENV}), not in a connection's settings.")
        source = settings.get("datasets")
        for path in [source] if isinstance(source, str) else source or []:
            _check_datasets_path(path)

    @classmethod
    def canonical_fields(cls, operation: str, settings: Mapping[str, Any]) -> Any:
        """Fields a grant may name: the receipt's for publishing, else the datasets' record fields."""
        if operation == "records.publish":
            return {"dataset", "key", "outcome", "version"}
        from lgsp.sdk import Shape, schema_shape

        shape = Shape()
        for dataset in load_datasets(settings.get("datasets") or bundled_datasets()).values():
            found = schema_shape(dataset.schema)
            shape.paths |= found.paths
            shape.open |= found.open
        return shape

    def __init__(self, settings: Mapping[str, Any], *, database_url: str | None = None):
        super().__init__(settings)
        # Declarations are read once, when the connection is built: a changed
        # declaration takes effect when the connection's settings change.
        self.check_settings(self.settings)
        self.datasets = load_datasets(self.settings.get("datasets") or bundled_datasets())
        self.store = Store(engine_for(database_url or os.environ.get(DATABASE_ENV) or _lgsp_database()))
        self._handlers: dict[str, Callable[[Dataset, Mapping[str, Any], CallContext], AdapterResult]] = {
            "records.publish": self._publish, "records.query": self._query, "records.get": self._get,
        }

    async def call(self, operation: str, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        handler = self._handlers.get(operation)
        if handler is None:
            raise UpstreamError(f"The datastore adapter has no operation {operation!r}.")
        dataset = self._dataset(params.get("dataset"))
        # SQLAlchemy and the drivers block: keep them off the event loop.
        return await asyncio.to_thread(self._in_store, handler, dataset, params, context)

    def _dataset(self, name: Any) -> Dataset:
        dataset = self.datasets.get(name) if isinstance(name, str) else None
        if dataset is None:
            known = ", ".join(sorted(self.datasets)) or "none"
            raise UnknownDataset(f"The shared data store has no dataset {name!r}; datasets: {known}.")
        return dataset

    def _in_store(self, handler: Callable, dataset: Dataset, params: Mapping[str, Any],
                  context: CallContext) -> AdapterResult:
        where = {"upstream": f"datastore:{dataset.name}", "trace_id": context.request_id}
        try:
            self.store.ensure_table()
            return handler(dataset, params, context)
        except SQLAlchemyError as exc:
            raise UpstreamUnavailable(
                f"The shared data store's database could not be used ({type(exc).__name__}).", **where) from None
        except Conflict:
            raise UpstreamUnavailable("The record was being changed by other publishers; publish it again.",
                                      **where) from None

    # -- operations ------------------------------------------------------------------
    def _publish(self, dataset: Dataset, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        if context.agency_code != dataset.owner:
            raise NotAllowed(
                f"Only systems of agency {dataset.owner}, the owner of dataset '{dataset.name}', may publish to it; "
                f"client '{context.client_id}' belongs to {context.agency_code or 'no agency'}.")
        record = _record_of(params.get("record"))
        _check_characters(record)
        key = self._checked_key(dataset, record, params.get("key"))
        published = self.store.publish(dataset.name, key, record, context.client_id)
        data = {"dataset": dataset.name, "key": key, "outcome": published.outcome, "version": published.version}
        return AdapterResult(data=data, upstream=f"datastore:{dataset.name}", trace_id=context.request_id)

    def _checked_key(self, dataset: Dataset, record: Any, given: Any) -> str:
        """The record's key, once the record fits the schema and the key in the address."""
        problems = dataset.problems(record) if isinstance(record, dict) else ["record: is not a JSON object"]
        if problems:
            shown = "; ".join(problems[:10]) + ("; …" if len(problems) > 10 else "")
            raise RecordInvalid(f"The record does not fit dataset '{dataset.name}' (version {dataset.version}): "
                                f"{shown}.")
        try:
            key = dataset.key_of(record)
        except ValueError as exc:
            raise RecordInvalid(f"The record's key is not usable: {exc}.") from None
        if given is not None and given != key:
            fields = ", ".join(dataset.key_fields)
            raise RecordInvalid(f"The address names record '{given}' but the record's {fields} gives '{key}'.")
        return key

    def _query(self, dataset: Dataset, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        try:
            conditions = dataset.conditions(_filters_of(params))
        except FilterError as exc:
            raise BadRequest(str(exc)) from None
        _check_granted(conditions, context)
        limit = _limit(params.get("limit"))
        after = _decode_cursor(params.get("cursor"), dataset.name, context.client_id)
        rows = self.store.query(dataset.name, conditions, after, limit + 1)  # one more: is there a next page?
        page = rows[:limit]
        next_cursor = _encode_cursor(dataset.name, context.client_id, page[-1][0]) if len(rows) > limit else None
        return AdapterResult(
            data={"items": [data for _, data in page], "next_cursor": next_cursor},
            # Tells minimisation to apply the grant's fields to each item (lgsp.pipeline.minimize).
            meta={PAGE: "items"},
            upstream=f"datastore:{dataset.name}", trace_id=context.request_id,
        )

    def _get(self, dataset: Dataset, params: Mapping[str, Any], context: CallContext) -> AdapterResult:
        key = params.get("key")
        record = self.store.get(dataset.name, key) if isinstance(key, str) else None
        if record is None:
            raise RecordNotFound(f"Dataset '{dataset.name}' has no record {key!r}.",
                                 upstream=f"datastore:{dataset.name}", trace_id=context.request_id)
        return AdapterResult(data=record, upstream=f"datastore:{dataset.name}", trace_id=context.request_id)


def _lgsp_database() -> str:
    return gateway_database_url()


def _record_of(raw: Any) -> Any:
    """The record: an object, or JSON text of one (a call by name through the SOAP door)."""
    if isinstance(raw, str):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RecordInvalid("The record is neither a JSON object nor JSON text of one.") from None
    return raw


def _check_characters(value: Any, path: str = "record") -> None:
    """Refuse text (names and values) that XML cannot carry, naming where it is."""
    if isinstance(value, dict):
        for name, sub in value.items():
            _check_characters(name, f"{path}: a field name")
            _check_characters(sub, f"{path}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_characters(item, f"{path}[{i}]")
    elif isinstance(value, str):
        bad = _NOT_XML.search(value)
        if bad:
            raise RecordCharacters(f"{path} holds the character U+{ord(bad.group()):04X}, which XML (and so the "
                                   "SOAP door) cannot carry; remove or replace it.")


def _filters_of(params: Mapping[str, Any]) -> dict[str, Any]:
    """Filters from the `filter` object and from flat `filter.<field>` params."""
    filters = dict(params.get("filter") or {})
    filters.update({name[len("filter."):]: value for name, value in params.items() if name.startswith("filter.")})
    return filters


def _limit(raw: Any) -> int:
    try:
        limit = DEFAULT_LIMIT if raw is None else int(raw)  # the SOAP door passes text
    except (TypeError, ValueError):
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}; got {raw!r}.") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be from 1 to {MAX_LIMIT}; got {limit}.")
    return limit


# A cursor is opaque to callers: the dataset, the client and the last key of the
# page it saw, encrypted and authenticated (Fernet: AES and HMAC-SHA256, with a key
# derived from the master secret). The key may be a field the client's grant hides,
# and a forged cursor must not start a page anywhere the caller likes. The next page
# starts after that key, so a walk through the pages sees every record that exists
# throughout it exactly once, whatever is published meanwhile (an offset would skip
# or repeat records when others are inserted).
def _cursor_cipher() -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key("lgsp/datastore-cursor")))


def _encode_cursor(dataset: str, client_id: str, key: str) -> str:
    return _cursor_cipher().encrypt(orjson.dumps([dataset, client_id, key])).decode().rstrip("=")


def _decode_cursor(cursor: Any, dataset: str, client_id: str) -> str | None:
    if cursor in (None, ""):
        return None
    try:
        text = str(cursor)
        name, owner, key = orjson.loads(_cursor_cipher().decrypt(text + "=" * (-len(text) % 4)))
    except (InvalidToken, ValueError, TypeError):
        raise CursorInvalid("The cursor is not one this API gave out; start again without a cursor.") from None
    if name != dataset or owner != client_id or not isinstance(key, str):
        raise CursorInvalid(f"The cursor was given out for another query than this client's of dataset '{dataset}'; "
                            f"start again without a cursor.")
    return key


def _check_granted(conditions: list, context: CallContext) -> None:
    """Filters only on fields the grant shows: a filter on a hidden field would be an oracle for its values."""
    if context.fields is None:  # called outside the pipeline (the contract kit): no grant to apply
        return
    allowed = set(context.fields)
    for cond in conditions:
        prefixes = {".".join(cond.path[:i]) for i in range(1, len(cond.path) + 1)}
        if not prefixes & allowed:
            name = ".".join(cond.path)
            raise FilterNotGranted(f"The grant of client '{context.client_id}' does not show '{name}', so the query "
                                   f"cannot filter on it.")


def _allowed_dataset_roots() -> list[Path]:
    roots = [Path(bundled_datasets())]
    roots += [Path(p) for p in os.environ.get(DATASETS_ENV, "").split(os.pathsep) if p]
    return [r.resolve() for r in roots]


def _check_datasets_path(path: Any) -> None:
    resolved = Path(str(path)).resolve()
    if not any(resolved.is_relative_to(root) for root in _allowed_dataset_roots()):
        raise EgressRefused(f"settings/datasets: {str(path)[:200]!r} is outside the adapter's datasets and the "
                            f"directories the operator allows ({DATASETS_ENV}).")
