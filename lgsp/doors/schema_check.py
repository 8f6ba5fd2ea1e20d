"""A JSON schema (Draft 4, with its format checker) compiled once into plain checks: is a value valid?

jsonschema's Draft4Validator.is_valid walks the schema per value, keyword by keyword, through its
generic machinery: 0.3 ms of a gateway worker per message body on the slow box (a third of the
message's request path, benchmarks/results/2026-12-02-delivery.md). The keywords the shared APIs'
bodies use are compiled here into closures that answer the same question. Any schema node with a
keyword outside them (allOf, patternProperties, a non-string enum …) keeps jsonschema's own
validator for that node, so the answer is always Draft 4's: no value is taken that it refuses
(tests/doors/test_schema_check.py holds the two side by side).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from jsonschema import Draft4Validator

Check = Callable[[Any], bool]

# Keywords Draft 4 does not check (annotations, OpenAPI's `nullable` which plain Draft 4 ignores).
_IGNORED = {"description", "title", "example", "examples", "default", "nullable", "readOnly", "writeOnly",
            "deprecated", "$schema", "id"}
_COMPILED = {"type", "properties", "required", "additionalProperties", "items", "enum", "format", "pattern",
             "minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "exclusiveMinimum",
             "exclusiveMaximum"}
_FORMATS = Draft4Validator.FORMAT_CHECKER


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Draft 4's types: an integer is an int (1.0 is not), a bool is neither integer nor number.
_TYPES: dict[str, Check] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": _is_number,
}


def compile_schema(schema: dict[str, Any]) -> Check:
    """A check equal to Draft4Validator(schema, format_checker=FORMAT_CHECKER).is_valid (a schema without
    $refs: lgsp.doors.routes inlines them first)."""
    keys = {k for k in schema if not k.startswith("x-")} - _IGNORED
    if not keys <= _COMPILED or not _compilable(schema):
        return Draft4Validator(schema, format_checker=_FORMATS).is_valid
    checks: list[Check] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        kinds = [_TYPES[n] for n in names]
        checks.append(kinds[0] if len(kinds) == 1 else (lambda v: any(k(v) for k in kinds)))
    checks += _object_checks(schema) + _array_checks(schema) + _string_checks(schema) + _number_checks(schema)
    if "enum" in schema:
        allowed = frozenset(schema["enum"])
        checks.append(lambda v: isinstance(v, str) and v in allowed)
    return _all(checks)


def _all(checks: list[Check]) -> Check:
    """One check doing all of these (no generator per value: this runs per field of every body)."""
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    if len(checks) == 3:
        first, second, third = checks
        return lambda v: first(v) and second(v) and third(v)

    def every(v: Any) -> bool:
        for check in checks:
            if not check(v):
                return False
        return True
    return every


def _compilable(schema: dict[str, Any]) -> bool:
    """The keywords' values are of the shapes compiled here (anything else: jsonschema judges)."""
    kind = schema.get("type")
    if kind is not None and not all(n in _TYPES for n in (kind if isinstance(kind, list) else [kind])):
        return False
    if "enum" in schema and not (isinstance(schema["enum"], list) and all(isinstance(e, str) for e in schema["enum"])):
        return False
    if not isinstance(schema.get("items", {}), dict) or not isinstance(schema.get("properties", {}), dict):
        return False
    if not isinstance(schema.get("additionalProperties", True), (bool, dict)):
        return False
    if "format" in schema and not isinstance(schema["format"], str):
        return False
    return all(isinstance(schema.get(k, 0), int) for k in ("minLength", "maxLength", "minItems", "maxItems")) and \
        all(_is_number(schema.get(k, 0)) for k in ("minimum", "maximum"))


def _object_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    properties = {name: compile_schema(sub) for name, sub in schema.get("properties", {}).items()}
    required = list(schema.get("required", []))
    extra = schema.get("additionalProperties", True)
    extra_check = compile_schema(extra) if isinstance(extra, dict) else None
    if required:
        out.append(lambda v: not isinstance(v, dict) or all(name in v for name in required))
    if properties or extra is False or extra_check is not None:
        def check_object(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name, value in v.items():
                check = properties.get(name)
                if check is not None:
                    if not check(value):
                        return False
                elif extra is False or (extra_check is not None and not extra_check(value)):
                    return False
            return True
        out.append(check_object)
    return out


def _array_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    if "items" in schema:
        item = compile_schema(schema["items"])
        out.append(lambda v: not isinstance(v, list) or all(item(i) for i in v))
    low, high = schema.get("minItems"), schema.get("maxItems")
    if low is not None:
        out.append(lambda v: not isinstance(v, list) or len(v) >= low)
    if high is not None:
        out.append(lambda v: not isinstance(v, list) or len(v) <= high)
    return out


def _string_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    pattern = schema.get("pattern")
    search = re.compile(pattern).search if pattern is not None else None  # as jsonschema: anywhere unless anchored
    if low or high is not None or search is not None:
        def check_string(v: Any) -> bool:
            if not isinstance(v, str):
                return True
            n = len(v)
            return n >= low and (high is None or n <= high) and (search is None or search(v) is not None)
        out.append(check_string)
    fmt = schema.get("format")
    if fmt in _FORMATS.checkers:  # a format the checker does not know takes every value, as in Draft 4
        out.append(lambda v: _FORMATS.conforms(v, fmt))
    return out


def _number_checks(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    if "minimum" in schema:
        low = schema["minimum"]
        if schema.get("exclusiveMinimum"):
            out.append(lambda v: not _is_number(v) or v > low)
        else:
            out.append(lambda v: not _is_number(v) or v >= low)
    if "maximum" in schema:
        high = schema["maximum"]
        if schema.get("exclusiveMaximum"):
            out.append(lambda v: not _is_number(v) or v < high)
        else:
            out.append(lambda v: not _is_number(v) or v <= high)
    return out
