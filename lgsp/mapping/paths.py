"""Reading values out of a backend's answer: leaves (blank → None, NFC text) and getters for
paths below a node, compiled once into closures (they run for every answer, on the hot path)."""
from __future__ import annotations

import functools
import unicodedata
from typing import Any, Callable, Mapping

from lgsp.mapping.errors import MappingSpecError

# (node, meta) -> value. ``node`` is always a dict; ``meta`` the collection's
# attributes (or None).
Getter = Callable[[dict[str, Any], "Mapping[str, Any] | None"], Any]

_nfc = functools.partial(unicodedata.normalize, "NFC")


def leaf(v: Any) -> Any:
    """Normalise a value read from the input: blank -> None, text stripped and NFC."""
    if v.__class__ is str:
        v = v.strip()
        if not v:
            return None
        # Vietnamese text reaches us both precomposed and decomposed.
        return v if v.isascii() else _nfc(v)
    if v.__class__ is list:
        return leaf(v[0]) if v else None
    if v.__class__ is dict:
        return v or None
    return v


def _step(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node.get(key)
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return node[0].get(key)  # a repeated element read as one value: its first occurrence
    return None


def split(path: Any, where: str) -> tuple[str, ...]:
    if not isinstance(path, str) or not path.strip():
        raise MappingSpecError(f"{where}: a path must be a non-empty string")
    parts = tuple(p for p in path.replace(".", "/").split("/"))
    if not all(parts):
        raise MappingSpecError(f"{where}: malformed path {path!r}")
    return parts


def _same(v: Any) -> Any:
    return v


def path_getter(parts: tuple[str, ...], raw: bool = False) -> Getter:
    """A getter for a path below the node; ``raw`` keeps lists whole (for ``many``)."""
    finish: Callable[[Any], Any] = _same if raw else leaf
    if len(parts) == 1:
        (a,) = parts
        if raw:
            return lambda node, meta: node.get(a)

        def get1(node: dict[str, Any], meta: Any) -> Any:
            v = node.get(a)
            return None if v is None else leaf(v)

        return get1
    if len(parts) == 2:
        a, b = parts

        def get2(node: dict[str, Any], meta: Any) -> Any:
            v = node.get(a)
            if v is None:
                return None
            v = v.get(b) if v.__class__ is dict else _step(v, b)
            return None if v is None else finish(v)

        return get2

    def getn(node: dict[str, Any], meta: Any) -> Any:
        v: Any = node
        for p in parts:
            v = _step(v, p)
            if v is None:
                return None
        return finish(v)

    return getn
