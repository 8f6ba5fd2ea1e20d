"""A package spooled to a file (the outbox's way since issue 11): read back by offset, its tree without the
attachments' base64, its files' digests streamed through signxml, its stamped copy never held whole — with
the same answers as a package in memory, and the same refusals."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
from datetime import datetime
from typing import Any

import pytest
from document_world import PDF, trust_store

from lgsp.documents import edxml, signature, testkit
from lgsp.documents.door import LARGE, BodyReader, DocumentDoor
from lgsp.errors import ExchangeError

SENDER, LOCAL, HOP = "000.00.31.H30", "000.00.32.H30", "000.00.00.H30"
BIG = ("ban-do.bin", "application/octet-stream", os.urandom(300_000))   # several 64 KiB chunks of base64
WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=edxml.VIETNAM)


@pytest.fixture(scope="module")
def ca():
    return testkit.make_ca()


@pytest.fixture(scope="module")
def trust(ca, tmp_path_factory):
    return trust_store(ca, tmp_path_factory.mktemp("trust"))


@pytest.fixture(scope="module")
def package(ca):
    return testkit.signed_package(testkit.make_signer(ca, SENDER), SENDER, [LOCAL], [BIG, PDF])


def spooled(data: bytes, piece: int = 7_001) -> edxml.Spool:
    spool = edxml.Spool()
    for at in range(0, len(data), piece):  # as a body arrives: pieces that cut anything anywhere
        spool.write(data[at:at + piece])
    return spool


def rewrapped(data: bytes, width: int, eol: bytes) -> bytes:
    """The same package with each attachment's base64 cut in lines (what other senders' software does)."""
    def wrap(m: re.Match) -> bytes:
        text = m.group(2)
        return m.group(1) + eol.join(text[i:i + width] for i in range(0, len(text), width)) + m.group(3)
    return re.sub(rb"(<edXML:ContentTransferEncoded>)([A-Za-z0-9+/=]+)(</edXML:ContentTransferEncoded>)", wrap, data)


def verified(data: bytes | edxml.Spool, trust) -> tuple[edxml.Package, signature.Signer]:
    pkg, root = edxml.read(data)
    return pkg, signature.verify(data, root, pkg, trust)


@pytest.mark.parametrize("width, eol", [(None, b""), (76, b"\n"), (64, b"\r\n"), (65_537, b" ")])
def test_a_spooled_package_reads_and_verifies_as_the_same_bytes_in_memory(package, trust, width, eol):
    data = rewrapped(package, width, eol) if width else package
    in_memory, spool = verified(data, trust), spooled(data)
    try:
        assert verified(spool, trust) == in_memory
        pkg = in_memory[0]
        assert [a.sha256 for a in pkg.attachments] == [hashlib.sha256(f[2]).hexdigest() for f in (BIG, PDF)]
    finally:
        spool.close()


def test_the_tree_of_a_spooled_package_holds_no_attachment_text(package):
    spool = spooled(package)
    try:
        _, root = edxml.read(spool)
    finally:
        spool.close()
    encoded = list(root.iter(f"{{{edxml.EDXML_NS}}}ContentTransferEncoded"))
    assert len(encoded) == 2 and all(not el.text for el in encoded)
    assert root.find(f".//{{{edxml.EDXML_NS}}}Subject").text  # the header is all there


def refusal(data: bytes, trust: signature.TrustStore) -> ExchangeError:
    """Why `data`, spooled, does not verify."""
    spool = spooled(data)
    try:
        with pytest.raises(ExchangeError) as info:
            verified(spool, trust)
    finally:
        spool.close()
    return info.value


@pytest.mark.parametrize("at", [0, 65_535, 150_000, 299_999])
def test_one_byte_of_a_large_attachment_changed_is_caught_by_the_streamed_digest(package, trust, at):
    changed = bytearray(BIG[2])
    changed[at] ^= 0x01
    data = package.replace(base64.b64encode(BIG[2]), base64.b64encode(bytes(changed)))
    assert data != package
    refused = refusal(rewrapped(data, 76, b"\n"), trust)
    assert refused.code == "document.signature_invalid"
    assert "Digest mismatch" in refused.detail and "cid:1" in refused.detail


def test_two_files_swapped_in_a_spool_are_refused(ca, trust):
    data = testkit.signed_package(testkit.make_signer(ca, SENDER), SENDER, [LOCAL], [BIG, PDF])
    first, second = (base64.b64encode(f[2]) for f in (BIG, PDF))
    swapped = data.replace(first, b"\0").replace(second, first).replace(b"\0", second)
    assert refusal(swapped, trust).code == "document.signature_invalid"


def stamp(spool: edxml.Spool) -> tuple[edxml.Package, edxml.Stamped]:
    """The spooled package read, and its pieces with this hop's trace header."""
    pkg, _ = edxml.read(spool)
    stamped = edxml.trace_pieces(spool, pkg, HOP, WHEN)
    assert isinstance(stamped, edxml.Stamped)
    return pkg, stamped


def test_the_stamped_spool_is_the_package_with_the_trace_header_and_still_verifies(package, trust):
    spool = spooled(package)
    try:
        pkg, stamped = stamp(spool)
        whole = b"".join(stamped)
        assert whole == edxml.append_trace(package, edxml.scan(package), HOP, WHEN)
        assert len(stamped) == -(-len(whole) // edxml.CHUNK) and stamped[-1] == whole[-len(stamped[-1]):]
        assert stamped.read(pkg.trace_at - 3, 40) == whole[pkg.trace_at - 3:pkg.trace_at + 37]
    finally:
        spool.close()
    verified(whole, trust)


def test_what_is_inserted_into_a_stamped_spool_reads_as_the_same_splice_in_memory(package):
    """The counter-signature goes into a spooled package as one more insertion (countersign.apply): every range
    of it reads as the bytes spliced in memory would."""
    spool = spooled(package)
    try:
        _, stamped = stamp(spool)
        traced = b"".join(stamped)
        at = package.index(b"</edXML:edXMLHeader>") if b"</edXML:edXMLHeader>" in package else len(package) // 2
        extra = b"<ds:Signature Id='x'/>"
        spliced = stamped.inserted(at, extra)
        shift = len(traced) - len(package)           # the trace header comes before the insertion
        expected = traced[:at + shift] + extra + traced[at + shift:]
        assert b"".join(spliced) == expected and spliced.size == len(expected)
        for offset, n in ((0, 10), (at + shift - 5, 30), (at + shift + 3, 7), (len(expected) - 9, 50)):
            assert spliced.read(offset, n) == expected[offset:offset + n]
    finally:
        spool.close()


def test_a_closed_spool_is_never_read():
    spool = spooled(b"<x/>")
    spool.close()
    with pytest.raises(ValueError):
        spool[0:4]


# --- one large package checked at a time per worker ---------------------------------------------------------

class _Body:
    def __init__(self, size: int):
        self.spool = edxml.Spool()
        self.spool.write(b" " * size)

    def data(self) -> edxml.Spool:
        return self.spool


def admit(door: Any, size: int, stage: Any, name: str) -> Any:
    """The door's admission stage around ``stage`` for a body of ``size`` bytes (``name`` stands for the exchange)."""
    return door.admitted(_Body(size), stage)(name, None)


def test_without_a_wait_a_free_worker_still_admits_a_large_package(monkeypatch):
    monkeypatch.setenv("LGSP_DOCUMENT_ADMIT_WAIT", "0")
    checked: list[str] = []

    async def quick(ex, ctx):
        checked.append(ex)

    asyncio.run(admit(DocumentDoor(None), LARGE, quick, "only"))  # type: ignore[arg-type]
    assert checked == ["only"]


def test_a_second_large_package_waits_for_the_first_then_is_refused_with_503(monkeypatch):
    monkeypatch.setenv("LGSP_DOCUMENT_ADMIT_WAIT", "0.2")
    door, release = DocumentDoor(None), asyncio.Event()  # type: ignore[arg-type]
    checked: list[str] = []

    async def slow(ex, ctx):
        checked.append(ex)
        await release.wait()

    async def quick(ex, ctx):
        checked.append(ex)

    async def run():
        first = asyncio.create_task(admit(door, LARGE, slow, "first"))
        await asyncio.sleep(0.01)
        with pytest.raises(ExchangeError) as info:
            await admit(door, LARGE, slow, "second")
        await admit(door, LARGE - 1, quick, "small")
        release.set()
        await first
        await admit(door, LARGE, slow, "third")  # admitted once the first is done
        return info.value

    error = asyncio.run(run())
    assert error.code == "service.unavailable" and "0.2 s" in error.detail
    assert checked == ["first", "small", "third"]


def test_the_body_reader_spools_and_enforces_the_limit_while_streaming():
    async def run(pieces, declared, limit):
        messages = iter([{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                         for i, p in enumerate(pieces)])

        async def receive():
            return next(messages)
        reader = BodyReader(receive, declared, limit)
        ex = type("Ex", (), {"request_bytes": 0})()
        try:
            await reader.stage(ex, None)  # type: ignore[arg-type]
            return reader.data()[:], ex.request_bytes
        finally:
            reader.close()

    assert asyncio.run(run([b"<a>", b"b", b"</a>"], None, 100)) == (b"<a>b</a>", 8)
    for declared in (None, "8"):  # a Content-Length that lies is caught while streaming too
        with pytest.raises(ExchangeError) as info:
            asyncio.run(run([b"<a>", b"b" * 200, b"</a>"], declared, 100))
        assert info.value.code == "document.too_large"


def test_a_signature_referencing_a_file_over_and_over_is_refused_before_any_digest(ca, trust, monkeypatch):
    root = testkit.build(SENDER, [LOCAL], [BIG])
    refs = testkit.default_references(root)
    data = testkit.sign(root, testkit.make_signer(ca, SENDER), references=refs + ["cid:1"] * 50)
    decoded: list[tuple] = []

    def chunks(*args):
        decoded.append(args)
        return iter(())
    monkeypatch.setattr(signature, "attachment_chunks", chunks)
    with pytest.raises(ExchangeError) as info:
        verified(data, trust)
    assert info.value.code == "document.signature_invalid" and "53 references" in info.value.detail
    assert decoded == []  # no file decoded for it
