"""The SOAP door for documents beside the REST door, on the same gateway (loopback), same packages.

    .venv/bin/python benchmarks/documents_soap.py [--count 20] [--big-count 4]

Setup as benchmarks/documents.py (a throw-away SQLite database, a CA, two local agencies, `lgsp serve` with one
worker, delivery and poller off). One sender at a time; per door and package size:
  docs/s    accepted documents per second (202 / SendDocumentResponse)
  CPU ms    CPU of the gateway process per document (from /proc)
  peak MiB  the gateway's largest resident set while one package is sent, above its size just before
The SOAP figures include base64: the message is 4/3 of the package, and the door decodes it as it arrives.
"""
from __future__ import annotations

import argparse
import base64
import tempfile
import time
from pathlib import Path

import httpx
from documents import RECIPIENT, SENDER, package, setup, start_gateway, token
from machine import cpu_model, cpu_seconds, peak_rss_while, proc_status

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


def envelope(data: bytes) -> bytes:
    return (f'<soap:Envelope xmlns:soap="{SOAP11}" xmlns:d="urn:lgsp:documents:v1"><soap:Body><d:SendDocument>'
            f"<d:package>").encode() + base64.encodebytes(data) + (
            b"</d:package></d:SendDocument></soap:Body></soap:Envelope>")


def sender(door: str, url: str, bearer: str, data: bytes):
    """A function that sends ``data`` once through ``door`` and checks it was accepted."""
    auth = {"Authorization": f"Bearer {bearer}"}
    if door == "REST":
        def send(client: httpx.Client) -> None:
            r = client.post(f"{url}/api/documents/v1/outbox", content=data,
                            headers={**auth, "Content-Type": "application/xml"})
            assert r.status_code == 202, r.text
    else:
        body = envelope(data)

        def send(client: httpx.Client) -> None:
            r = client.post(f"{url}/soap/documents/v1", content=body,
                            headers={**auth, "Content-Type": "text/xml; charset=utf-8"})
            assert r.status_code == 200 and b"SendDocumentResponse" in r.content, r.text[:500]
    return send


def run(send, count: int, pid: int) -> tuple[float, float]:
    with httpx.Client(timeout=300) as client:
        send(client)  # warm-up
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(count):
            send(client)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
    return count / wall, cpu * 1000 / count


def peak_while(send, pid: int) -> float:
    """The gateway's largest VmRSS while ``send`` runs once, above its size just before (MiB)."""
    def once() -> None:
        with httpx.Client(timeout=300) as client:
            send(client)

    before = proc_status(pid, "VmRSS")
    _, peak = peak_rss_while(pid, once)
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--big-count", type=int, default=4)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lgsp-docs-soap-"))
    env, clients, signer = setup(tmp, None)
    proc, url = start_gateway(env, tmp)
    try:
        bearer = token(url, clients[SENDER])
        token(url, clients[RECIPIENT])
        print(f"{cpu_model()}; SQLite; one worker; one sender at a time")
        print(f"{'package':>10} {'door':>5} {'docs/s':>8} {'CPU ms':>8} {'peak MiB':>9}")
        for label, size, count in (("100 KB", 100_000, args.count), ("10 MB", 10_000_000, args.big_count)):
            data = package(signer, size)
            for door in ("REST", "SOAP"):
                send = sender(door, url, bearer, data)
                rate, cpu = run(send, count, proc.pid)
                print(f"{label:>10} {door:>5} {rate:8.1f} {cpu:8.1f} {peak_while(send, proc.pid):9.1f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
