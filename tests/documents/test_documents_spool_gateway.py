"""Large packages through a real gateway on loopback (the outbox spools the body to a file): a package over
the one-at-a-time size is stored and read back byte-identical apart from the trace header, and one whose
attachment was changed by a byte is refused by the streamed digest, nothing stored, the refusal audited."""
from __future__ import annotations

import base64
import hashlib
import os

import pytest
from document_world import build_world

from lgsp.documents import edxml, signature, testkit
from lgsp.documents.door import LARGE

A, B = "000.00.31.H30", "000.00.32.H30"
SERVICES = ("documents.send", "documents.inbox.list", "documents.inbox.get", "documents.inbox.status")
FILE = ("so-do.bin", "application/octet-stream", os.urandom(LARGE * 3 // 4 + 200_000))  # base64: over LARGE


@pytest.fixture(scope="module")
def world(lgsp_env, tmp_path_factory):
    env = {"LGSP_DOCUMENT_MAX_BYTES": str(4 * LARGE), "LGSP_DELIVERY_WORKER": "0", "LGSP_DOCUMENT_ORGAN_ID": A}
    with build_world(tmp_path_factory.mktemp("documents-spool"), {A: "qlvb-spool-a", B: "qlvb-spool-b"},
                        services=SERVICES, env=env) as world:
        yield world


def test_a_large_package_is_stored_from_the_spool_and_read_back_as_sent_plus_the_trace(world):
    data = testkit.signed_package(world.signers[A], A, [B], [FILE])
    assert len(data) > LARGE
    answer = world.api("POST", "/outbox", A, content=data, headers={"Content-Type": "application/xml"})
    assert answer.status_code == 202, answer.text
    accepted = answer.json()
    read = world.api("GET", f"/inbox/{accepted['id']}", B)
    assert read.status_code == 200 and len(read.content) == accepted["size"]
    assert testkit.without_trace(read.content, A) == data  # byte-identical apart from this hop's header
    pkg, root = edxml.read(read.content)
    signature.verify(read.content, root, pkg, world.trust)  # the sender's signature still verifies
    assert [a.sha256 for a in pkg.attachments] == [hashlib.sha256(FILE[2]).hexdigest()]


def test_a_large_package_with_one_byte_of_its_file_changed_is_refused_nothing_stored_and_audited(world):
    data = testkit.signed_package(world.signers[A], A, [B], [FILE])
    changed = bytearray(FILE[2])
    changed[len(changed) // 2] ^= 0x80
    forged = data.replace(base64.b64encode(FILE[2]), base64.b64encode(bytes(changed)))
    before = world.stored_count()
    answer = world.api("POST", "/outbox", A, content=forged,
                       headers={"Content-Type": "application/xml", "X-Request-ID": "doc-spool-forged"})
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["code"] == "document.signature_invalid" and "Digest mismatch" in problem["detail"]
    assert world.stored_count() == before
    record = world.record_of("doc-spool-forged")
    assert record["error_code"] == "document.signature_invalid" and record["request_bytes"] == len(forged)
