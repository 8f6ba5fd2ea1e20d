"""The compiled body checks (lgsp/doors/schema_check.py) answer as jsonschema's Draft 4 validator does.

Every message body schema of the shared APIs, and small schemas for each keyword, are asked about
valid values and values broken one field at a time (wrong type, too long, off-pattern, unknown
field, missing field, out of range …): the compiled check and Draft4Validator(…, FORMAT_CHECKER)
give the same answer for each.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from jsonschema import Draft4Validator

from lgsp import specs
from lgsp.doors import routes
from lgsp.doors.schema_check import compile_schema

DOSSIER = {"version": 1, "dossier_no": "HS-1", "procedure_code": "1.001193",
           "applicant": {"name": "Nguyễn Văn An", "type": "citizen"},
           "received_at": "2026-11-30T08:15:00+07:00", "due_at": "2026-12-05T17:00:00+07:00",
           "status": "received", "summary": "Đăng ký khai sinh"}
STEP = {"step_id": "B1", "handled_at": "2026-11-30T09:00:00+07:00", "status": "processing", "content": "Chuyển"}
ODD = [None, True, False, 0, 1, -1, 1.0, 1.5, 1e300, "", "x", "x" * 300, "2026-13-45T99:99:99+07:00", [], [1], {},
       {"a": 1}, "HS 1", "http://a.b/c", "mailto:x"]


def body_schemas() -> list[dict]:
    out = []
    for api in specs.shared_apis():
        doc = yaml.safe_load(api.path.read_text(encoding="utf-8"))
        for item in doc["paths"].values():
            for method, op in item.items():
                if method == "post" and isinstance(op, dict) and "requestBody" in op:
                    body = routes._resolve(doc, op["requestBody"])
                    schema = body.get("content", {}).get("application/json", {}).get("schema")
                    if isinstance(schema, dict) and (inlined := routes._inlined(doc, schema, 0)) is not None:
                        out.append(inlined)
    return out


def variants(value: Any, schema: dict) -> list[Any]:
    """The value, and copies of it with one field (at any depth) replaced, removed or added."""
    out = [value]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in [*value, *props]:
            for odd in ODD:
                out.append({**value, name: odd})
            if name in value:
                out.append({k: v for k, v in value.items() if k != name})
            if name in props and name in value:
                out += [{**value, name: v} for v in variants(value[name], props[name])[1:]]
        out.append({**value, "unknown_field": 1})
    elif isinstance(value, list) and value:
        out += [[v, *value[1:]] for v in variants(value[0], schema.get("items", {}))[1:]]
        out += [[], value * 50]
    return out


def sample(schema: dict) -> Any:
    """A value of the schema's shape (its required and its other properties, the first enum value)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: sample(sub) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [sample(schema.get("items", {}))]
    if kind == "integer":
        return schema.get("minimum", 1)
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return "x"


def same(schema: dict, values: list[Any]) -> None:
    reference = Draft4Validator(schema, format_checker=Draft4Validator.FORMAT_CHECKER).is_valid
    compiled = compile_schema(copy.deepcopy(schema))
    for value in values:
        assert compiled(value) == reference(value), (schema, value)


@pytest.mark.parametrize("schema", body_schemas(), ids=lambda s: ",".join(sorted(s.get("properties", {})))[:40])
def test_message_bodies_judged_as_draft4(schema):
    seeds = [sample(schema)]
    if "dossier_no" in schema.get("properties", {}):
        seeds.append(DOSSIER)
    if "step_id" in schema.get("properties", {}):
        seeds.append(STEP)
    for seed in seeds:
        same(schema, variants(seed, schema))


@pytest.mark.parametrize("schema", [
    {"type": "integer"}, {"type": "number"}, {"type": ["string", "null"]}, {"type": "boolean"},
    {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"}, {"pattern": "b"},
    {"enum": ["a", "b"]}, {"enum": [1, "1", True]}, {"minimum": 0, "maximum": 10},
    {"minimum": 0, "exclusiveMinimum": True, "maximum": 10, "exclusiveMaximum": True},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
    {"items": [{"type": "integer"}]}, {"type": "object", "required": ["a"], "additionalProperties": False,
                                       "properties": {"a": {"type": "string"}}},
    {"additionalProperties": {"type": "integer"}}, {"patternProperties": {"^x": {"type": "integer"}}},
    {"format": "email"}, {"format": "ipv4"}, {"format": "date-time"}, {"anyOf": [{"type": "string"}]},
    {"type": "string", "nullable": True, "description": "d", "x-lgsp-codelist": "c"},
])
def test_keywords_judged_as_draft4(schema):
    same(schema, [*ODD, "ab", "abcd", "AB", "abc", "a@b.c", "1.2.3.4", 5, 10, 11, -0.5, [1, 2], [1, 2, 3],
                  ["a"], {"a": "x"}, {"a": 1}, {"a": "x", "b": 1}, {"x1": 1}, {"x1": "s"}, {"b": 2}])
