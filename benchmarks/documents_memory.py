"""Peak memory and time to read and verify one large signed edXML package.

    .venv/bin/python benchmarks/documents_memory.py            # 50 MB, seven attachments
    .venv/bin/python benchmarks/documents_memory.py --mb 10

Each step runs in a fresh process so that its peak resident set (VmHWM) is its own:
  baseline   imports only
  scan       the streaming pass (DTD/entity refusal, depth, manifest, sizes and SHA-256 of attachments)
  read       scan + lxml tree + XSD validation
  verify     read + signxml verification and the re-derivation of signed parts (wrapping defence)
  trace      verify + appending this hop's TraceHeader (and hashing the stamped package)
side by side for the package held in memory (bytes: the caller holds it, 1 × its size) and spooled to a
temporary file (edxml.Spool, what the outbox does since issue 11: read back by offset).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("baseline", "scan", "read", "verify", "trace")


def make(path: Path, megabytes: int) -> None:
    from lgsp.documents import testkit

    ca = testkit.make_ca()
    signer = testkit.make_signer(ca, "000.00.31.H30")
    per_file = 5 * 1024 * 1024  # 5 MiB → 6.99 M base64 characters, under libxml2's 10 M text limit
    count = max(1, round(megabytes * 1024 * 1024 / (per_file * 4 / 3)))
    files = [(f"phu-luc-{n}.pdf", "application/pdf", os.urandom(per_file)) for n in range(count)]
    path.write_bytes(testkit.signed_package(signer, "000.00.31.H30", ["000.00.32.H30"], files))
    (path.parent / "ca.pem").write_bytes(ca.cert_pem)


def step(name: str, path: Path, source: str) -> None:
    import hashlib

    from lgsp.documents import edxml, signature

    data: bytes | edxml.Spool = b""
    if name != "baseline" and source == "memory":
        data = path.read_bytes()
    elif name != "baseline":
        data = edxml.Spool()
        with path.open("rb") as f:
            while piece := f.read(1 << 16):
                data.write(piece)
    started = time.perf_counter()
    if name == "scan":
        edxml.scan(data)
    elif name in ("read", "verify", "trace"):
        package, root = edxml.read(data)
        if name != "read":
            signature.verify(data, root, package, signature.TrustStore.load(path.parent / "ca.pem"))
            del root
            if name == "trace":
                digest = hashlib.sha256()
                for stamped in edxml.trace_pieces(data, package, "000.00.00.H30"):
                    digest.update(stamped)
    elapsed = time.perf_counter() - started
    peak_mib = _high_water_mark_kib() / 1024
    print(f"{name}\t{peak_mib:.0f}\t{elapsed:.2f}")


def _high_water_mark_kib() -> int:
    """VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=50, help="package size in MB (default 50)")
    p.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        step(args.step, Path(args.file), args.source)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "package.xml"
        make(path, args.mb)
        size = path.stat().st_size
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        print(f"package: {size / 1e6:.1f} MB ({size:,} bytes); CPU: {cpu}")
        print("| step | in memory: peak RSS MiB | seconds | spooled: peak RSS MiB | seconds |\n"
              "| --- | ---: | ---: | ---: | ---: |")
        for name in STEPS:
            cells = []
            for source in ("memory", "spool"):
                out = subprocess.run([sys.executable, __file__, "--step", name, "--file", str(path),
                                      "--source", source], capture_output=True, text=True, check=True).stdout.split()
                cells += out[1:]
            print(f"| {name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
