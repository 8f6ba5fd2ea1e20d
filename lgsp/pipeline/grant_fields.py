"""Which fields a grant may name: the paths of the service's canonical answer.

A grant lists canonical fields, dotted paths included (`permanent_address.province`).
A name that is not a field of the answer grants nothing, silently; so every way of
making a grant (CLI, admin API, `lgsp apply`) checks the names here and suggests
the nearest valid ones.

The canonical shape comes from the adapter when it knows it (the shared data store:
its datasets' record schemas), else from the 200 answer of the service's operation
in its OpenAPI document. A service with neither (a free-form answer) is not checked.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Iterable, Mapping

from lgsp import specs


@dataclass
class Shape:
    """Dotted paths of an answer; below an `open` path any name may appear."""

    paths: set[str] = field(default_factory=set)
    open: set[str] = field(default_factory=set)

    def allows(self, name: str) -> bool:
        return name in self.paths or any(name.startswith(prefix + ".") for prefix in self.open)


def _resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Mapping[str, Any]:
    while isinstance(schema, Mapping) and "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def schema_shape(schema: Mapping[str, Any], doc: Mapping[str, Any] | None = None) -> Shape:
    """The dotted paths of a JSON Schema's objects (arrays are crossed, as minimisation does)."""
    shape = Shape()
    _walk(schema, doc or {}, "", shape, depth=0)
    return shape


def _walk(schema: Any, doc: Mapping[str, Any], prefix: str, shape: Shape, depth: int) -> None:
    schema = _resolve(schema, doc)
    if not isinstance(schema, Mapping) or depth > 12:
        return
    for combined in ("allOf", "anyOf", "oneOf"):
        for part in schema.get(combined, []):
            _walk(part, doc, prefix, shape, depth + 1)
    if "items" in schema:
        _walk(schema["items"], doc, prefix, shape, depth + 1)
    props = schema.get("properties") or {}
    for name, sub in props.items():
        path = f"{prefix}.{name}" if prefix else name
        shape.paths.add(path)
        _walk(sub, doc, path, shape, depth + 1)
    if prefix and schema.get("type") == "object" and not props and schema.get("additionalProperties", True):
        shape.open.add(prefix)  # a free-form object: whatever it holds may be granted


@cache
def _spec_shapes() -> dict[str, Shape | None]:
    """Service → shape of its 200 JSON answer in the shared API documents (None: free-form)."""
    out: dict[str, Shape | None] = {}
    for api in specs.shared_apis():
        doc = specs.document(api.path)
        for item in doc["paths"].values():
            for op in item.values():
                if not isinstance(op, dict) or op.get("operationId") not in api.services:
                    continue
                answer = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {})
                shape = schema_shape(answer.get("schema", {}), doc)
                # A free-form part (a page of dataset records) cannot be checked from the document.
                out[op["operationId"]] = shape if shape.paths and not shape.open else None
    return out


def service_shape(service: str, adapter: str | None = None, operation: str | None = None,
                  settings: Mapping[str, Any] | None = None) -> Shape | None:
    """The canonical shape of `service`'s answer, or None when it cannot be known."""
    if adapter and operation:
        from lgsp import plugins

        try:
            cls = plugins.adapter_class(adapter)
        except Exception:  # a broken plug-in: fall back to the document
            cls = None
        hook = getattr(cls, "canonical_fields", None)
        if hook is not None:
            fields = hook(operation, dict(settings or {}))
            if fields is not None:
                return fields if isinstance(fields, Shape) else Shape(set(fields))
    return _spec_shapes().get(service)


def unknown_fields(shape: Shape, fields: Iterable[str]) -> dict[str, list[str]]:
    """Each name the shape does not hold, with the nearest valid names."""
    valid = sorted(shape.paths)
    return {name: difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
            for name in fields if not shape.allows(name)}


def describe(service: str, unknown: dict[str, list[str]]) -> str:
    """One sentence per unknown name: '… is not a field of S; did you mean …?'."""
    parts = []
    for name, near in unknown.items():
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        parts.append(f"'{name}' is not a field of {service}'s answer.{hint}")
    return " ".join(parts)
