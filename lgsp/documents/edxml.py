"""edXML packages (QCVN 102:2016/BTTTT): read safely, check against the schema, describe, stamp a hop.

Two readers, each for what it does best:
- a streaming pass with expat (:func:`scan`) that refuses DTDs and entities, bounds depth and
  text, and collects what the LGSP needs — sender, recipients, manifest, each attachment's
  decoded size and SHA-256 (the audit records sizes and hashes, never contents) and the byte
  offset where this hop's ``TraceHeader`` goes — in memory that does not grow with the package;
- the hardened lxml parser of :mod:`lgsp.soap` (no DTD, no entities, no network, huge_tree
  off) for XSD validation and, in :mod:`lgsp.documents.signature`, the XML signature.

:func:`append_trace` splices the new ``TraceHeader`` into the original bytes, so the package
stays byte-identical outside the inserted element and the sender's signature (which does not
cover ``TraceHeaderList``, see docs/documents.md) still verifies.
"""
from __future__ import annotations

import binascii
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any, overload
from xml.parsers import expat
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from lxml import etree

from lgsp.errors import ExchangeError

EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
STANDARD = "QCVN 102:2016/BTTTT"
MAX_DEPTH = 64
# libxml2 refuses a longer text node unless huge_tree is on, which the LGSP keeps off: one
# attachment's base64 is at most this many characters (about 7.1 MiB of file).
MAX_TEXT = 10_000_000
MAX_FIELD = 100_000  # longest header text kept from the scan (Subject, Content)
CHUNK = 1 << 16
VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")

_HEADER = ("edXML", "edXMLEnvelope", "edXMLHeader")
_MESSAGE = (*_HEADER, "MessageHeader")
_STATUS = (*_HEADER, "Status")
_TRACES = (*_HEADER, "TraceHeaderList")
_REFERENCE = ("edXML", "edXMLEnvelope", "edXMLBody", "edXMLManifest", "Reference")
_ATTACHMENT = ("edXML", "AttachmentEncoded", "Attachment")
_FIELDS = {  # positional paths whose text the scan keeps
    (*_MESSAGE, "From", "OrganId"): "sender",
    (*_MESSAGE, "To", "OrganId"): "recipients",
    (*_MESSAGE, "DocumentId"): "document_id",
    (*_STATUS, "From", "OrganId"): "sender",
    (*_STATUS, "ResponseFor", "OrganId"): "recipients",  # a status goes back to the document's sender
    (*_STATUS, "ResponseFor", "DocumentId"): "response_for",
    (*_STATUS, "StatusCode"): "status_code",
    (*_TRACES, "TraceHeader", "OrganId"): "trace_organ",
    (*_TRACES, "TraceHeader", "Timestamp"): "trace_time",
}
_ITEM_FIELDS = ("ContentId", "ContentType", "AttachmentName", "Description")


class Spool:
    """A package spooled to an unnamed temporary file as it arrives: read back by offset (``spool[a:b]``, one
    ``pread``), never held whole in memory, so a worker's memory does not grow with the package."""

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(dir=directory)  # unlinked at once: nothing left if the worker dies
        self.fd = self._file.fileno()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(self.fd, view, self.size)
            self.size += written
            view = view[written:]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        if self._file.closed:  # never a pread on a descriptor number the process may have given to another file
            raise ValueError("the spooled package is closed")
        start, stop, _ = key.indices(self.size)
        return os.pread(self.fd, stop - start, start) if stop > start else b""

    def close(self) -> None:
        self._file.close()


Source = bytes | bytearray | memoryview | Spool  # a package's bytes, in memory or spooled


def chunks_of(data: Source, start: int, end: int, size: int = CHUNK) -> Iterator[bytes | memoryview]:
    """``data[start:end]`` a chunk at a time: views of bytes in memory, reads of a spool."""
    view = data if isinstance(data, Spool) else memoryview(data)
    for at in range(start, end, size):
        yield view[at:min(at + size, end)]


def refuse(code: str, detail: str) -> ExchangeError:
    return ExchangeError(code, detail)


def content_key(content_id: str) -> str:
    """A content id without its ``cid:`` scheme: the manifest says ``cid:N``, attachments vary."""
    return content_id[4:] if content_id.lower().startswith("cid:") else content_id


@dataclass(frozen=True)
class ManifestEntry:
    content_id: str
    name: str
    content_type: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Attachment:
    content_id: str
    name: str
    content_type: str | None
    size: int      # decoded bytes
    sha256: str    # of the decoded file
    # Byte offsets of its base64 text in the package (read again, a file at a time, for the signature).
    span: tuple[int, int] = field(default=(0, 0), compare=False, repr=False)


@dataclass(frozen=True)
class Trace:
    organ_id: str
    timestamp: str


@dataclass
class Package:
    """What the LGSP knows of a package after :func:`scan`: nothing of its contents but ids, sizes, hashes."""

    kind: str                      # "edoc" (a document) or "status" (a status message)
    sender: str
    recipients: tuple[str, ...]
    document_id: str | None
    size: int
    sha256: str
    manifest: tuple[ManifestEntry, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    traces: tuple[Trace, ...] = ()
    status_code: str | None = None
    response_for: str | None = None
    # Where this hop's TraceHeader goes (see append_trace).
    trace_at: int = 0
    trace_end: int = 0             # > trace_at when an empty <TraceHeaderList/> tag is replaced
    trace_wrap: bool = False       # no TraceHeaderList yet: insert a whole one
    trace_prefix: str | None = None
    trace_list_tag: str = ""       # the empty TraceHeaderList start tag, when trace_end > trace_at

    def audit(self) -> dict[str, Any]:
        """The audit record's view: ids, sizes and hashes — never subject, content or files."""
        return {
            "kind": self.kind, "from": self.sender, "to": list(self.recipients), "document_id": self.document_id,
            "size": self.size, "sha256": self.sha256,
            "attachments": [{"content_id": a.content_id, "size": a.size, "sha256": a.sha256}
                            for a in self.attachments],
        }


# --- the streaming pass ---------------------------------------------------------------------------------

@dataclass
class _Item:
    fields: dict[str, str] = field(default_factory=dict)
    digest: Any = None
    size: int = 0
    carry: bytes = b""
    encoded_at: tuple[int, int] = (0, 0)   # start tag and end offsets of ContentTransferEncoded


class _Scanner:
    """expat handlers collecting a Package; raises ExchangeError on anything unacceptable."""

    def __init__(self) -> None:
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.namespace_prefixes = True
        self.parser.buffer_text = True
        self.parser.buffer_size = CHUNK
        p = self.parser
        p.StartDoctypeDeclHandler = self._doctype
        p.XmlDeclHandler = self._declaration
        p.EntityDeclHandler = self._entity
        p.ExternalEntityRefHandler = self._external
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end
        p.CharacterDataHandler = self._text
        self.path: list[str] = []       # local names; "" for elements outside the edXML namespace
        self.prefixes: list[str | None] = []
        self.starts: list[int] = []
        self.text: list[str] | None = None
        self.text_len = 0
        self.values: dict[str, list[str]] = {}
        self.references: list[_Item] = []
        self.attachments: list[_Item] = []
        self.item: _Item | None = None
        self.encoded: _Item | None = None   # the Attachment whose ContentTransferEncoded is streaming
        self.seen_bussiness_at: int | None = None
        self.trace_list: tuple[int, int] | None = None   # (start, end-tag) offsets
        self.message_end: int | None = None
        self.kind: str | None = None
        self.trace_prefix: str | None = None
        self.header_prefix: str | None = None

    @staticmethod
    def _declaration(version: str, encoding: str | None, standalone: int) -> None:
        # The trace header is spliced in as UTF-8 bytes: a package in another encoding would be corrupted.
        if encoding and encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "us-ascii", "ascii"):
            raise refuse("document.malformed", f"edXML packages are UTF-8, not {encoding[:40]}.")

    # DTDs and entities: refused outright (XXE, billion laughs).
    def _doctype(self, *args: Any) -> None:
        raise refuse("document.malformed", "DOCTYPE declarations are not accepted in an edXML package.")

    def _entity(self, *args: Any) -> None:
        raise refuse("document.malformed", "entity declarations are not accepted in an edXML package.")

    def _external(self, *args: Any) -> int:
        raise refuse("document.malformed", "external entities are not accepted in an edXML package.")

    def _start(self, name: str, attrs: dict) -> None:
        uri, _, rest = name.partition(" ")
        local, _, prefix = rest.partition(" ") if rest else (uri, "", "")
        if not rest:
            uri = ""
        if len(self.path) >= MAX_DEPTH:
            raise refuse("document.malformed", f"the package nests deeper than {MAX_DEPTH} levels.")
        self.path.append(local if uri == EDXML_NS else "")
        self.prefixes.append(prefix or None)
        self.starts.append(self.parser.CurrentByteIndex)
        self.text, self.text_len = None, 0
        path = tuple(self.path)
        if path == _MESSAGE or path == _STATUS:
            self.kind = "edoc" if local == "MessageHeader" else "status"
        elif path == _HEADER:
            self.header_prefix = prefix or None
        elif path == _TRACES:
            self.trace_prefix = prefix or None
        elif path == (*_TRACES, "Bussiness") and self.seen_bussiness_at is None:
            self.seen_bussiness_at = self.parser.CurrentByteIndex
        elif path == _REFERENCE:
            self.item = _Item()
            self.references.append(self.item)
        elif path == _ATTACHMENT:
            self.item = _Item(digest=hashlib.sha256())
            self.attachments.append(self.item)
        elif path == (*_ATTACHMENT, "ContentTransferEncoded"):
            self.encoded = self.item
            self.item.encoded_at = (self.parser.CurrentByteIndex, self.parser.CurrentByteIndex)
        if path in _FIELDS or (len(path) == 6 and path[:5] == _REFERENCE) \
                or (len(path) == 4 and path[:3] == _ATTACHMENT and local != "ContentTransferEncoded"):
            self.text = []

    def _end(self, name: str) -> None:
        path = tuple(self.path)
        start = self.starts.pop()
        if self.text is not None:
            value = "".join(self.text).strip()
            if path in _FIELDS:
                self.values.setdefault(_FIELDS[path], []).append(value)
            elif self.item is not None and path[-1] in _ITEM_FIELDS:
                self.item.fields[path[-1]] = value
        if path == (*_ATTACHMENT, "ContentTransferEncoded") and self.encoded is not None:
            self._decode(b"", final=True)
            self.encoded.encoded_at = (start, self.parser.CurrentByteIndex)
            self.encoded = None
        elif path == _MESSAGE or path == _STATUS:
            self.message_end = self.parser.CurrentByteIndex
        elif path == _TRACES:
            self.trace_list = (start, self.parser.CurrentByteIndex)
        elif path in (_REFERENCE, _ATTACHMENT):
            self.item = None
        self.path.pop()
        self.prefixes.pop()
        self.text, self.text_len = None, 0

    def _text(self, data: str) -> None:
        self.text_len += len(data)
        if self.text_len > MAX_TEXT:
            raise refuse("document.too_large",
                         f"a text node holds more than {MAX_TEXT:,} characters: one attachment may be at most "
                         f"{MAX_TEXT:,} base64 characters (about 7.1 MiB); send larger files as several attachments.")
        if self.encoded is not None:
            self._decode(data.encode("ascii", "replace"))
        elif self.text is not None and self.text_len <= MAX_FIELD:
            self.text.append(data)

    def _decode(self, chunk: bytes, final: bool = False) -> None:
        """Base64 → SHA-256 and size, a chunk at a time (whitespace and line breaks allowed)."""
        item = self.encoded
        data = item.carry + chunk.translate(None, b" \t\r\n")
        cut = len(data) if final else len(data) - len(data) % 4
        try:
            raw = binascii.a2b_base64(data[:cut], strict_mode=True) if cut else b""
        except binascii.Error:
            raise refuse("document.schema_invalid",
                         "an attachment's ContentTransferEncoded is not valid base64.") from None
        item.carry = data[cut:]
        item.digest.update(raw)
        item.size += len(raw)


def scan(data: Source, *, max_bytes: int | None = None) -> Package:
    """One streaming pass over the package; refuses what is unacceptable before any tree is built."""
    if max_bytes is not None and len(data) > max_bytes:
        raise refuse("document.too_large", f"the package is {len(data):,} bytes; the limit is {max_bytes:,}.")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise refuse("document.malformed", "edXML packages are UTF-8, not UTF-16.")
    s = _Scanner()
    whole = hashlib.sha256()
    try:
        for piece in chunks_of(data, 0, len(data)):
            whole.update(piece)
            s.parser.Parse(bytes(piece), False)
        s.parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise refuse("document.malformed", f"not well-formed XML ({expat.errors.messages[exc.code]}, "
                                           f"line {exc.lineno}).") from None
    if s.kind is None:
        raise refuse("document.schema_invalid", "the package has no edXML/edXMLEnvelope/edXMLHeader with a "
                                                "MessageHeader or a Status.")
    return _package(s, len(data), whole.hexdigest(), data)


def _package(s: _Scanner, size: int, sha256: str, data: Source) -> Package:
    def one(key: str) -> str | None:
        return (s.values.get(key) or [None])[0]

    manifest = tuple(ManifestEntry(r.fields.get("ContentId", ""), r.fields.get("AttachmentName", ""),
                                   r.fields.get("ContentType") or None, r.fields.get("Description") or None)
                     for r in s.references)
    attachments = tuple(Attachment(a.fields.get("ContentId", ""), a.fields.get("AttachmentName", ""),
                                   a.fields.get("ContentType") or None, a.size, a.digest.hexdigest(),
                                   _text_span(data, *a.encoded_at))
                        for a in s.attachments)
    traces = tuple(Trace(o, t) for o, t in zip(s.values.get("trace_organ", []), s.values.get("trace_time", [])))
    package = Package(kind=s.kind, sender=one("sender") or "", recipients=tuple(s.values.get("recipients", [])),
                      document_id=one("document_id") or one("response_for"), size=size, sha256=sha256,
                      manifest=manifest, attachments=attachments, traces=traces,
                      status_code=one("status_code"), response_for=one("response_for"))
    _place_trace(package, s, data)
    return package


def _place_trace(package: Package, s: _Scanner, data: Source) -> None:
    """Where this hop's TraceHeader goes: before Bussiness, else before </TraceHeaderList>, else a new list
    right after the MessageHeader (or Status)."""
    if s.trace_list is not None:
        start, end = s.trace_list
        package.trace_prefix = s.trace_prefix
        if s.seen_bussiness_at is not None:
            package.trace_at = package.trace_end = s.seen_bussiness_at
        elif data[end:end + 2] != b"</":  # an empty-element tag <TraceHeaderList/>: expat ends it past "/>"
            package.trace_at, package.trace_end = start, end
            package.trace_list_tag = bytes(data[start:end - 2]).decode("utf-8").rstrip() + ">"
        else:
            package.trace_at = package.trace_end = end
    elif s.message_end is not None:
        package.trace_wrap = True
        package.trace_prefix = s.header_prefix
        package.trace_at = package.trace_end = _tag_end(data, s.message_end)


def _text_span(data: Source, tag_at: int, end_at: int) -> tuple[int, int]:
    """Where the base64 text of one ContentTransferEncoded lies; it must be plain text (no character
    references, no CDATA), so that the file can be decoded again from these bytes alone."""
    if data[end_at:end_at + 2] != b"</":  # an empty-element tag
        return end_at, end_at
    start = _tag_end(data, tag_at)
    if any(b"&" in bytes(piece) or b"<" in bytes(piece) for piece in chunks_of(data, start, end_at)):
        raise refuse("document.malformed", "an attachment's ContentTransferEncoded must be plain base64 text "
                                           "(no character references, no CDATA).")
    return start, end_at


def attachment_bytes(data: Source, attachment: Attachment) -> bytes:
    """One attachment's file, decoded from the package bytes (one file in memory at a time)."""
    start, end = attachment.span
    return binascii.a2b_base64(bytes(data[start:end]).translate(None, b" \t\r\n"), strict_mode=True)


def attachment_chunks(data: Source, attachment: Attachment) -> Iterator[bytes]:
    """One attachment's file, decoded a chunk at a time from the package's bytes: memory does not grow with
    the file (the span is plain base64 text, checked by the scan)."""
    start, end = attachment.span
    carry = b""
    for piece in chunks_of(data, start, end):
        text = carry + bytes(piece).translate(None, b" \t\r\n")
        cut = len(text) - len(text) % 4
        carry = text[cut:]
        if cut:
            yield binascii.a2b_base64(text[:cut], strict_mode=True)
    if carry:
        yield binascii.a2b_base64(carry, strict_mode=True)


def _tag_end(data: Source, at: int) -> int:
    """Offset just past the tag starting at ``at`` (quotes respected: attribute values may hold '>')."""
    quote = 0
    window = bytes(data[at:at + 65536])  # one read, not one per byte of a spooled package
    for i, c in enumerate(window):
        if quote:
            quote = 0 if c == quote else quote
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return at + i + 1
    raise refuse("document.malformed", "a tag of the package does not end.")


# --- manifest ---------------------------------------------------------------------------------------------

def check_manifest(package: Package) -> None:
    """Every manifest Reference has its Attachment and every Attachment its Reference, once each."""
    listed = [content_key(m.content_id) for m in package.manifest]
    carried = [content_key(a.content_id) for a in package.attachments]
    for what, ids in (("manifest", listed), ("attachments", carried)):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise refuse("document.manifest_mismatch", f"the {what} name content id {_ids(twice)} more than once.")
    missing, extra = sorted(set(listed) - set(carried)), sorted(set(carried) - set(listed))
    if missing:
        raise refuse("document.manifest_mismatch", f"the manifest lists {_ids(missing)} but the package carries "
                                                   f"no such attachment.")
    if extra:
        raise refuse("document.manifest_mismatch", f"the package carries attachment {_ids(extra)} that the "
                                                   f"manifest does not list.")
    # The signature covers the manifest's names and the files' bytes: an attachment's own name must agree.
    names = {content_key(m.content_id): m.name for m in package.manifest}
    renamed = sorted(content_key(a.content_id) for a in package.attachments
                     if a.name != names[content_key(a.content_id)])
    if renamed:
        raise refuse("document.manifest_mismatch", f"attachment {_ids(renamed)} is named otherwise than in "
                                                   f"the manifest.")


def _ids(ids: list[str]) -> str:
    shown = ", ".join(repr(i[:80]) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


# --- the tree and the schema ------------------------------------------------------------------------------

_PARSER = etree.XMLParser(  # lgsp.soap's hardening; comments and PIs kept so c14n sees what was signed
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
    collect_ids=False,
)


def parser() -> etree.XMLParser:
    return _PARSER


@cache
def schema() -> etree.XMLSchema:
    """The edXML schema shipped in schemas/edxml/ (lgsp_schemas.edxml)."""
    path = files("lgsp_schemas") / "edxml" / "edxml.xsd"
    doc = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False))
    return etree.XMLSchema(doc)


_ENCODED = f"{{{EDXML_NS}}}ContentTransferEncoded"


class _Without(io.RawIOBase):
    """The package's bytes as a stream, less the attachments' base64 text (spans the scan checked to be plain
    text): the parser never holds a file, and ``ContentTransferEncoded`` reads as empty base64."""

    def __init__(self, data: Source, skip: list[tuple[int, int]]):
        self.data, self.at = data, 0
        self.keep = []  # (start, end) ranges of the package to give the parser
        for start, end in sorted(skip):
            self.keep.append((self.at, start))
            self.at = end
        self.keep.append((self.at, len(data)))
        self.keep.reverse()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.keep and self.keep[-1][0] >= self.keep[-1][1]:
            self.keep.pop()
        if not self.keep:
            return 0
        start, end = self.keep[-1]
        piece = self.data[start:min(end, start + len(buffer), start + CHUNK)]
        buffer[:len(piece)] = piece
        self.keep[-1] = (start + len(piece), end)
        return len(piece)


def parse(data: Source, package: Package | None = None) -> etree._Element:
    """The package as a tree, validated against the edXML schema while it is read. With the ``package`` its
    scan described, the attachments' base64 text is left out of what the parser reads (the files are
    digested from the bytes, see :func:`attachment_chunks`); without, it is dropped as each one ends. Either
    way the tree stays small whatever the files weigh. Call :func:`scan` first: it refuses DTDs, entities
    and depth before this parser sees the bytes."""
    skip = [a.span for a in package.attachments if a.span[1] > a.span[0]] if package is not None else []
    stream = io.BufferedReader(_Without(data, skip), CHUNK) if skip or isinstance(data, Spool) \
        else io.BytesIO(data)
    events = etree.iterparse(stream, events=("end",), schema=schema(), resolve_entities=False,
                             no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False,
                             collect_ids=False)
    root = None
    try:
        for _, el in events:
            if el.tag == _ENCODED:
                el.text = None
            root = el
    except etree.XMLSyntaxError as exc:
        text = str(exc.msg or exc)
        if "too long" in text.lower() or "huge" in text.lower():
            raise refuse("document.too_large", f"not acceptable XML ({text[:200]}).") from None
        if events.error_log and any(e.domain_name == "SCHEMASV" for e in events.error_log):
            raise refuse("document.schema_invalid", text.replace(f"{{{EDXML_NS}}}", "edXML:")[:300]) from None
        raise refuse("document.malformed", f"not acceptable XML ({text[:200]}).") from None
    if root is None:
        raise refuse("document.malformed", "the package is empty.")
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise refuse("document.malformed", "DOCTYPE declarations are not accepted in an edXML package.")
    return root


def read(data: Source, *, max_bytes: int | None = None) -> tuple[Package, etree._Element]:
    """Scan, check the manifest, and parse and validate: the package's description and its tree (without
    the attachments' base64 text)."""
    package = scan(data, max_bytes=max_bytes)
    root = parse(data, package)
    check_manifest(package)
    return package, root


# --- this hop's trace header ------------------------------------------------------------------------------

def trace_timestamp(when: datetime | None = None) -> str:
    """ISO 8601 with the Vietnam offset (*assumption*: the standard's own Timestamp format is not published)."""
    return (when or datetime.now(VIETNAM)).astimezone(VIETNAM).isoformat(timespec="seconds")


def append_trace(data: Source, package: Package, organ_id: str, when: datetime | None = None) -> bytes:
    """The package with a TraceHeader for this hop appended to TraceHeaderList; every other byte unchanged."""
    return b"".join(trace_pieces(data, package, organ_id, when))


class Stamped(Sequence[bytes]):
    """A spooled package with what this hop adds (its TraceHeader, the LGSP's counter-signature), as the spool's
    bytes around the new elements: a sequence of the stamped package's CHUNK-byte pieces, each read when asked
    for, and :meth:`read` any range of it — never all of it at once."""

    def __init__(self, spool: Spool, at: int, header: bytes, end: int, more: tuple[tuple[int, bytes], ...] = ()):
        self.spool, self.at, self.header, self.end, self.more = spool, at, header, end, more
        # (offset in the spool, bytes to put there), then the spool's bytes from the second offset on
        edits = sorted([(at, header, end), *((offset, content, offset) for offset, content in more)])
        self.parts: list[tuple[int, int] | bytes] = []
        position = 0
        for offset, content, resume in edits:
            if offset > position:
                self.parts.append((position, offset))
            self.parts.append(content)
            position = resume
        if position < len(spool):
            self.parts.append((position, len(spool)))
        self.size = sum(len(p) if isinstance(p, bytes) else p[1] - p[0] for p in self.parts)

    def inserted(self, offset: int, content: bytes) -> Stamped:
        """The same stamped package with ``content`` put before the spool's byte at ``offset``."""
        return Stamped(self.spool, self.at, self.header, self.end, (*self.more, (offset, content)))

    def read(self, offset: int, n: int) -> bytes:
        out, stop, here = [], min(offset + n, self.size), 0
        for part in self.parts:
            length = len(part) if isinstance(part, bytes) else part[1] - part[0]
            lo, hi = max(offset, here), min(stop, here + length)
            if lo < hi:
                if isinstance(part, bytes):
                    out.append(part[lo - here:hi - here])
                else:
                    out.append(self.spool[part[0] + lo - here:part[0] + hi - here])
            here += length
            if here >= stop:
                break
        return b"".join(out)

    def __len__(self) -> int:
        return -(-self.size // CHUNK)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self.read((index % len(self)) * CHUNK, CHUNK)

    def __iter__(self) -> Iterator[bytes]:
        for offset in range(0, self.size, CHUNK):
            yield self.read(offset, CHUNK)


def trace_pieces(data: Source, package: Package, organ_id: str, when: datetime | None = None
                 ) -> tuple[memoryview, bytes, memoryview] | Stamped:
    """:func:`append_trace` as pieces — views into ``data`` around the new element, or a :class:`Stamped`
    spool — so that a caller can store or hash the stamped package without making a copy of it."""
    p = f"{package.trace_prefix}:" if package.trace_prefix else ""
    header = (f"<{p}TraceHeader><{p}OrganId>{escape(organ_id)}</{p}OrganId>"
              f"<{p}Timestamp>{escape(trace_timestamp(when))}</{p}Timestamp></{p}TraceHeader>")
    if package.trace_wrap:
        header = f"<{p}TraceHeaderList>{header}</{p}TraceHeaderList>"
    elif package.trace_end > package.trace_at:
        header = f"{package.trace_list_tag}{header}</{p}TraceHeaderList>"
    if isinstance(data, Spool):
        return Stamped(data, package.trace_at, header.encode("utf-8"), package.trace_end)
    view = memoryview(data)
    return view[:package.trace_at], header.encode("utf-8"), view[package.trace_end:]


def decoded_attachments(data: Source, package: Package) -> dict[str, bytes]:
    """Every attachment's file by content id (for tests and small packages; the LGSP itself only hashes)."""
    return {content_key(a.content_id): attachment_bytes(data, a) for a in package.attachments}
