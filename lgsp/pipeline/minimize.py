"""Stage: minimize — keep only the fields the grant allows (data minimisation).

A grant lists canonical field names; a dotted path (`permanent_address.province`)
allows part of an object. Anything not listed is removed from every answer.

An answer that is a page of records (the adapter says so with
`AdapterResult.meta[PAGE]`, naming the list member, e.g. "items") is minimised
record by record: the grant lists the records' fields, the same as for an
answer of one record, and the page's own members (e.g. `next_cursor`) stay.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from lgsp.pipeline.exchange import Exchange
from lgsp.pipeline.stage import StageContext

#: Key of AdapterResult.meta naming the member of a page answer that holds its records.
PAGE = "lgsp.page"


@lru_cache(maxsize=1024)
def _tree(allowed: tuple[str, ...]) -> dict[str, Any]:
    """Turn ('a', 'b.c') into {'a': True, 'b': {'c': True}}."""
    tree: dict[str, Any] = {}
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


def project(value: Any, tree: dict[str, Any]) -> Any:
    if isinstance(value, list):
        return [project(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    # In the answer's own (canonical) order, whatever the grant's order: typed SOAP
    # answers with repeated members are xs:sequence and need a stable order.
    out = {}
    for key, item in value.items():
        sub = tree.get(key)
        if sub is not None:
            out[key] = item if sub is True else project(item, sub)
    return out


def project_page(page: dict[str, Any], member: str, tree: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The page with each of its records projected, and the fields the records kept."""
    items = project(page[member], tree)
    fields = {k for item in items if isinstance(item, dict) for k, v in item.items() if v is not None}
    return {**page, member: items}, sorted(fields)


async def minimize(ex: Exchange, ctx: StageContext) -> None:
    tree = _tree(ex.bound_grant.allowed_fields)
    member = ex.bound_result.meta.get(PAGE)
    if member and isinstance(ex.canonical, dict) and isinstance(ex.canonical.get(member), list):
        ex.answer, ex.fields = project_page(ex.canonical, member, tree)
        return
    ex.answer = project(ex.canonical, tree)
    if isinstance(ex.answer, dict):
        ex.fields = sorted(k for k, v in ex.answer.items() if v is not None)
