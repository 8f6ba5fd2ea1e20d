"""Dataset declarations of the shared data store: what a dataset's records must
look like, which field(s) identify a record, who may publish, and which fields
a query may filter on. Declarations are YAML files (docs/datastore.md).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

# A composite key joins its fields' values with this character, which is
# unreserved in URLs, so the key can be a path segment as it is.
KEY_JOINER = "~"
MAX_KEY_LENGTH = 200
RANGE_OPERATORS = ("gte", "lte")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

# The shape of a declaration file, checked before its record schema is used.
DECLARATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "version", "owner", "key", "schema"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,63}$"},
        "version": {"type": ["integer", "string"]},
        "title": {"type": "string"},
        "owner": {"type": "string", "minLength": 1, "description": "agency code of the publishing agency"},
        "key": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]},
        "filters": {"type": "array", "items": {"type": "string"}},
        "schema": {"type": "object"},
    },
}


class DatasetError(ValueError):
    """A declaration file is not usable; the message names the file and the reason."""


class FilterError(ValueError):
    """A query's filters do not fit the dataset; the message is for the caller."""


@dataclass(frozen=True)
class FilterField:
    path: tuple[str, ...]     # ("address", "province_code")
    kind: str                 # string | integer | number | boolean
    ranged: bool              # dates and numbers also take gte / lte

    def coerce(self, raw: Any, name: str) -> Any:
        """A filter value from a query string (always text) as the field's type."""
        try:
            if self.kind == "integer":
                return int(raw)
            if self.kind == "number":
                return float(raw)
            if self.kind == "boolean":
                if isinstance(raw, bool):
                    return raw
                return {"true": True, "false": False}[str(raw).lower()]
        except (KeyError, TypeError, ValueError):
            raise FilterError(f"Filter '{name}' takes a {self.kind}; got {raw!r}.") from None
        value = str(raw)
        if self.ranged and not _is_iso_date(value):  # dates compare as text, so only one spelling
            raise FilterError(f"Filter '{name}' takes a date as YYYY-MM-DD; got {value!r}.")
        return value


def _is_iso_date(value: str) -> bool:
    if not ISO_DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Condition:
    path: tuple[str, ...]
    kind: str
    op: str                   # eq | gte | lte
    value: Any


@dataclass(frozen=True)
class Dataset:
    name: str
    version: int | str
    title: str
    owner: str
    key_fields: tuple[str, ...]
    schema: Mapping[str, Any]
    filters: Mapping[str, FilterField]
    validator: jsonschema.protocols.Validator = field(compare=False, repr=False)

    def problems(self, record: Any) -> list[str]:
        """Why the record does not fit the schema, one sentence each (none if it fits)."""
        errors = sorted(self.validator.iter_errors(record), key=lambda e: list(map(str, e.path)))
        return [f"{'.'.join(map(str, e.path)) or 'record'}: {e.message}" for e in errors]

    def key_of(self, record: Mapping[str, Any]) -> str:
        """The record's key, from its key field(s); the record has passed the schema."""
        parts = [str(record[name]) for name in self.key_fields]
        if len(parts) > 1 and any(KEY_JOINER in p for p in parts):
            raise ValueError(f"key fields may not contain {KEY_JOINER!r} when the key has several fields")
        key = KEY_JOINER.join(parts)
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ValueError(f"the key must be 1 to {MAX_KEY_LENGTH} characters long")
        return key

    def conditions(self, raw: Mapping[str, Any]) -> list[Condition]:
        """Query filters (`field`, `field.gte`, `field.lte`) as conditions on declared fields."""
        return [self._condition(name, value) for name, value in sorted(raw.items())]

    def _condition(self, name: str, value: Any) -> Condition:
        path, op = name, "eq"
        base, _, suffix = name.rpartition(".")
        if suffix in RANGE_OPERATORS and base in self.filters:
            path, op = base, suffix
        spec = self.filters.get(path)
        if spec is None:
            allowed = ", ".join(self.filters) or "none"
            raise FilterError(f"Dataset '{self.name}' cannot be filtered on '{path}'; filters: {allowed}.")
        if op != "eq" and not spec.ranged:
            raise FilterError(f"Filter '{path}' takes equality only, not '{op}'.")
        if isinstance(value, (dict, list)):
            raise FilterError(f"Filter '{name}' takes one value.")
        return Condition(spec.path, spec.kind, op, spec.coerce(value, name))


# -- loading declarations ------------------------------------------------------------

def load_datasets(source: str | Iterable[str]) -> dict[str, Dataset]:
    """Datasets declared in a directory's *.yaml / *.yml files, or in a list of files."""
    paths = _declaration_files(source)
    datasets: dict[str, Dataset] = {}
    for path in paths:
        dataset = load_dataset(path)
        if dataset.name in datasets:
            raise DatasetError(f"{path}: dataset '{dataset.name}' is declared twice.")
        datasets[dataset.name] = dataset
    return datasets


def _declaration_files(source: str | Iterable[str]) -> list[Path]:
    if isinstance(source, str):
        directory = Path(source)
        if not directory.is_dir():
            raise DatasetError(f"{source}: not a directory of dataset declarations.")
        return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))
    paths = [Path(p) for p in source]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"dataset declaration files not found: {', '.join(missing)}")
    return paths


def load_dataset(path: Path) -> Dataset:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: cannot be read: {exc}") from None
    try:
        return build_dataset(doc)
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def build_dataset(doc: Any) -> Dataset:
    problems = [f"{'.'.join(map(str, e.path)) or 'declaration'}: {e.message}"
                for e in jsonschema.Draft202012Validator(DECLARATION_SCHEMA).iter_errors(doc)]
    if problems:
        raise DatasetError("; ".join(problems))
    schema = doc["schema"]
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise DatasetError(f"the record schema is not valid JSON Schema: {exc.message}") from None
    keys = (doc["key"],) if isinstance(doc["key"], str) else tuple(doc["key"])
    _check_key_fields(schema, keys)
    filters = {name: _filter_field(schema, name) for name in doc.get("filters", [])}
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return Dataset(doc["name"], doc["version"], doc.get("title", doc["name"]), doc["owner"], keys, schema,
                   filters, validator)


def _check_key_fields(schema: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    required = set(schema.get("required", []))
    for name in keys:
        prop = schema.get("properties", {}).get(name)
        if prop is None or name not in required:
            raise DatasetError(f"key field '{name}' must be a required top-level property of the schema")
        if _scalar_kind(prop) not in ("string", "integer"):
            raise DatasetError(f"key field '{name}' must be a string or an integer")


def _filter_field(schema: Mapping[str, Any], name: str) -> FilterField:
    path = tuple(name.split("."))
    prop: Mapping[str, Any] = schema
    for part in path:
        prop = prop.get("properties", {}).get(part)
        if prop is None:
            raise DatasetError(f"filter '{name}' is not a property of the schema")
    kind = _scalar_kind(prop)
    if kind is None:
        raise DatasetError(f"filter '{name}' must be a string, number, integer or boolean property")
    ranged = kind in ("integer", "number") or (kind == "string" and prop.get("format") == "date")
    return FilterField(path, kind, ranged)


def _scalar_kind(prop: Mapping[str, Any]) -> str | None:
    """The property's scalar type, ignoring "null" (optional values are nullable)."""
    types = prop.get("type")
    if "enum" in prop and types is None:
        types = "string" if all(isinstance(v, str) for v in prop["enum"]) else None
    types = [types] if isinstance(types, str) else [t for t in (types or []) if t != "null"]
    if len(types) == 1 and types[0] in ("string", "integer", "number", "boolean"):
        return types[0]
    return None
