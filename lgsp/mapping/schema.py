"""A mapping file checked against lgsp/mapping/mapping.schema.json when it is loaded: a wrong
key or a wrong kind of value is refused naming the file and its line, before anything is compiled.

Only a failing file is read a second time (as YAML nodes, which carry their line numbers)."""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from importlib.resources import files
from typing import Any

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from lgsp.mapping.errors import MappingSpecError

SCHEMA_FILE = "mapping.schema.json"


@functools.cache
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(files("lgsp.mapping").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_document(document: Any, origin: str, text: str | None = None) -> None:
    """Raise MappingSpecError for the first place where `document` breaks the schema:
    `origin, line N: <where>: <what>`. `text` is the file's YAML, to find the line."""
    error = best_match(validator().iter_errors(document))
    if error is None:
        return
    path, what = _describe(error)
    line = _line(text, path) if text is not None else None
    where = "/".join(str(p) for p in path) or "the top level"
    at = f"{origin}, line {line}" if line else origin
    raise MappingSpecError(f"{at}: {where}: {what}")


def _describe(error: ValidationError) -> tuple[list[Any], str]:
    """The path to point at and a sentence; an unknown key points at the key itself."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = sorted(str(k) for k in error.instance if k not in known)
        if extra:
            allowed = ", ".join(sorted(known))
            return [*path, extra[0]], f"unknown key {extra[0]!r} (allowed: {allowed})"
    return path, error.message


def _line(text: str, path: Iterable[Any]) -> int | None:
    """The 1-based line of the key (or list item) at `path`, or of the deepest part of it that exists."""
    try:
        node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    at = node
    for part in path:
        key, child = _child(node, part)
        if child is None:
            break
        at, node = key or child, child
    return at.start_mark.line + 1


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node | None, yaml.Node | None]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return None, node.value[part]
    return None, None
