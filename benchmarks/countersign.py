"""What the LGSP's counter-signature adds to accepting a package, beside what accepting already costs.

    .venv/bin/python benchmarks/countersign.py [--repeat 20]

For 100 KB and 10 MB signed packages, in one process, best of --repeat (CPU time, ms):
  verify        edxml.read + the sender's signature (what the outbox does before storing)
  trace         this hop's TraceHeader (views, no copy)
  countersign   the counter-signature made by signxml and spliced in (lgsp/documents/countersign.py)
  check         a receiver's countersign.verify
The counter-signature reuses the sender's verified SignedInfo (with its files' cid: digests) instead of
digesting the files again, so its cost should not grow with the package.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

A, B = "000.00.00.H30", "000.00.31.H30"
STAMP = "2026-11-30T10:00:00+07:00"


def cpu_ms(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1000


def main() -> None:
    from lgsp.documents import countersign, signature, testkit

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    ca = testkit.make_ca()
    sender, axis = testkit.make_signer(ca, A), testkit.make_signer(ca, A, "LGSP")
    identity = countersign.Identity(axis.key, [axis.cert])
    trust_file = Path(tempfile.mkdtemp()) / "ca.pem"
    trust_file.write_bytes(ca.cert_pem)
    trust = signature.TrustStore.load(trust_file)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"{cpu}, {os.cpu_count()} cores seen; best of {args.repeat}; CPU ms")
    print(f"{'package':>10} {'verify':>9} {'trace':>7} {'countersign':>12} {'check':>7} {'countersign/verify':>19}")
    for label, file_bytes in (("100 KB", 75_000), ("10 MB", 7_500_000)):
        measure(label, file_bytes, sender, identity, trust, trust_file, args.repeat)


def measure(label: str, file_bytes: int, sender, identity, trust, trust_file: Path, repeat: int) -> None:
    from lgsp.documents import countersign, edxml, signature, testkit

    files = [(f"phu-luc-{n}.bin", "application/octet-stream", os.urandom(file_bytes // 2)) for n in range(2)]
    data = testkit.signed_package(sender, A, [B], files)
    package, root = edxml.read(data)

    def accept() -> None:
        pkg, tree = edxml.read(data)
        signature.verify(data, tree, pkg, trust)

    verify = cpu_ms(accept, max(3, repeat // 4))
    trace = cpu_ms(lambda: edxml.trace_pieces(data, package, A), repeat)
    pieces = edxml.trace_pieces(data, package, A)
    sign = cpu_ms(lambda: countersign.apply(pieces, data, root, A, STAMP, identity), repeat)
    signed = b"".join(countersign.apply(pieces, data, root, A, STAMP, identity))
    signed_root = edxml.read(signed)[1]
    check = cpu_ms(lambda: countersign.verify(signed, signed_root, trust_file), repeat)
    print(f"{label:>10} {verify:9.1f} {trace:7.2f} {sign:12.2f} {check:7.2f} {sign / verify:18.1%}"
          f"   ({len(data):,} bytes)")

if __name__ == "__main__":
    main()
