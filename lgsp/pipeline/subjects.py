"""Whom an exchange's answer is about: besides the person asked about, every other person
whose data the answer carries gets a record of the exchange in the audit trail.

The citizen access report ("who read this citizen's data", Decree 13/2023) reads the records
whose keyed hash is that citizen's. A household read also carries its head and members, a
citizen look-up the parents and spouse, a link check a verdict about the relative or head:
each of those persons, when the answer still carries some of their fields after minimisation,
gets a copy of the exchange's record with their own keyed hash, the fields of theirs it
carried, and where in the answer they were (`detail.other_person`). The copies are committed
with the exchange's record in one transaction, each one hash-chained and sealed like any record,
and the report finds them through the same (subject_hash, at, id) index (docs/audit.md).
The operations declare where such persons are (lgsp.adapter.Operation.persons).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lgsp.audit.writer import BODY
from lgsp.crypto import subject_hash
from lgsp.pipeline.exchange import Exchange
from lgsp.registry import Registry

PARAMS = "params."
# What identifies a person object of the canonical model, in order of preference.
IDENTIFIERS = ("personal_id", "old_id_number")


@dataclass
class OtherPerson:
    personal_id: str
    fields: set[str]
    where: list[str]       # e.g. ["head", "members[0]"]: the head is a member too


def declared(ex: Exchange, registry: Registry) -> Sequence[str]:
    """Where the exchange's operation says other persons can be (none if unknown)."""
    if ex.service is None:
        return ()
    adapter = ex.adapter  # the one bound at resolve, which answered (whatever a reload did since)
    op = adapter.operations.get(ex.service.operation) if adapter is not None else None
    return op.persons if op is not None else ()


def other_persons(ex: Exchange, paths: Sequence[str]) -> list[OtherPerson]:
    """The persons other than the subject the minimised answer still carries, once each."""
    found: dict[str, OtherPerson] = {}

    def add(pid: str, fields: Sequence[str], where: str) -> None:
        person = found.setdefault(pid, OtherPerson(pid, set(), []))
        person.fields.update(fields)
        person.where.append(where)

    for path in paths:
        if path.startswith(PARAMS):
            pid = ex.params.get(path[len(PARAMS):])
            if isinstance(pid, str) and pid and ex.fields:  # the answer states something about them
                add(pid, ex.fields, path)
            continue
        for where, original, kept in _walk(ex.canonical, ex.answer, path.split("."), ""):
            fields = [k for k, v in kept.items() if v is not None] if isinstance(kept, dict) else []
            pid = _identifier(original)
            if fields and pid:  # nothing of theirs left after minimisation: not carried
                add(pid, fields, where)
    found.pop(ex.subject or "", None)  # the person asked about has the exchange's own record
    return list(found.values())


def _walk(original: Any, kept: Any, parts: list[str], where: str) -> Iterator[tuple[str, Any, Any]]:
    """The objects at `parts` in the canonical answer, each with what minimisation kept of it."""
    if isinstance(original, list):
        kept_items = kept if isinstance(kept, list) else []
        for i, item in enumerate(original):  # minimisation keeps a list's length and order
            yield from _walk(item, kept_items[i] if i < len(kept_items) else None, parts, f"{where}[{i}]")
        return
    if not parts:
        yield where, original, kept
        return
    if isinstance(original, dict):
        head, rest = parts[0], parts[1:]
        yield from _walk(original.get(head), kept.get(head) if isinstance(kept, dict) else None, rest,
                         f"{where}.{head}" if where else head)


def _identifier(person: Any) -> str | None:
    if not isinstance(person, dict):
        return None
    return next((person[k] for k in IDENTIFIERS if isinstance(person.get(k), str) and person[k]), None)


def companion_records(ex: Exchange, record: dict, registry: Registry) -> list[dict]:
    """One record per other person the answer carried: the exchange's record with their keyed
    hash, their fields and where they were (its encrypted body, if any, stays with the first)."""
    if ex.error is not None:
        return []  # nothing was answered, so no one else's data left
    base = {k: v for k, v in record.items() if k != BODY}
    return [
        {**base, "subject_hash": subject_hash(p.personal_id), "fields": sorted(p.fields),
         "detail": {"other_person": p.where}}
        for p in other_persons(ex, declared(ex, registry))
    ]
