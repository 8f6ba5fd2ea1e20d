"""Stage: minimize — keep only the fields the grant allows (data minimisation).

A grant lists canonical field names; a dotted path (`permanent_address.province`)
allows part of an object. Anything not listed is removed from every answer.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from lgsp.exchange import Exchange


@lru_cache(maxsize=1024)
def _tree(allowed: tuple[str, ...]) -> dict:
    """Turn ('a', 'b.c') into {'a': True, 'b': {'c': True}}."""
    tree: dict = {}
    for path in allowed:
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[leaf] = True
    return tree


def project(value: Any, tree: dict) -> Any:
    if isinstance(value, list):
        return [project(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, sub in tree.items():
        if key in value:
            out[key] = value[key] if sub is True else project(value[key], sub)
    return out


def minimize(ex: Exchange) -> None:
    ex.answer = project(ex.canonical, _tree(ex.grant.allowed_fields))
    if isinstance(ex.answer, dict):
        ex.fields = sorted(k for k, v in ex.answer.items() if v is not None)
