"""The inbound poller remembers what it refused across restarts (table document_refusals, migration 0018): two
poller processes one after the other against the national axis simulator, the second neither fetches nor audits
the package the first refused, and the axis still sees it acknowledged `fail`."""
from __future__ import annotations

import pytest
from document_world import NATIONAL, PDF, build_world
from sqlalchemy import func, select

from lgsp.documents import testkit
from lgsp.documents.poller import refusals
from lgsp.storage.schema import audit_records

B = "000.00.31.H30"


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    env = {"LGSP_DOCUMENT_POLL": "0.05", "LGSP_DELIVERY_POLL": "0.05"}
    with build_world(tmp_path_factory.mktemp("documents-refusals"), {B: "qlvb-refusals-b"}, services=(),
                        axis=True, on_axis=[B], gateway=False, env=env) as world:
        yield world


def records_of(world, doc_id: str) -> list[dict]:
    with world.engine.connect() as conn:
        rows = conn.execute(select(audit_records).where(audit_records.c.request_id == f"axis:{doc_id}")).all()
    return [r._asdict() for r in rows]


def stored(world, doc_id: str) -> bool:
    from lgsp.documents.store import packages

    with world.engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(packages)
                                 .where(packages.c.axis_doc_id == doc_id)).scalar())


def test_a_refused_package_is_not_fetched_refused_and_audited_again_after_a_restart(world):
    signer = world.signers[NATIONAL]
    forged = world.axis_send(testkit.signed_package(signer, NATIONAL, [B], [PDF], number="r-1")
                             .replace(b"V/v tri", b"V/V tri"))
    first = world.start_worker("poller-1")
    try:
        world.wait_until(lambda: "fail" in world.axis_statuses().get(forged, []) and records_of(world, forged))
    finally:
        first.stop()
    with world.engine.connect() as conn:
        remembered = conn.execute(select(refusals).where(refusals.c.axis_doc_id == forged)).one()
    assert remembered.code == "document.signature_invalid" and remembered.refused_at is not None

    later = world.axis_send(testkit.signed_package(signer, NATIONAL, [B], [PDF], number="r-2"))
    second = world.start_worker("poller-2")
    try:
        world.wait_until(lambda: stored(world, later))   # the second run went past the refused one at least once
        world.wait_until(lambda: later not in world.axis_statuses())
    finally:
        second.stop()
    records = records_of(world, forged)
    assert len(records) == 1 and records[0]["error_code"] == "document.signature_invalid"
    assert forged in world.axis_statuses() and "fail" in world.axis_statuses()[forged]   # still pending on the axis
