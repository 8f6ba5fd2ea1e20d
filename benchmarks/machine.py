"""What every benchmark needs to know about the machine and the servers it starts.

Benchmarks on boxes of this kind differ 2x in CPU speed and run beside other work, so each
prints the CPU model and a speed probe, and counts CPU time per operation from /proc rather
than trusting wall-clock rates alone.
"""
from __future__ import annotations

import hashlib
import os
import platform
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

TICK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, timeout: float = 60) -> None:
    """Until url answers at all (any status below 500), or stop the benchmark."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not come up in {timeout:.0f} s")


def metric_samples(url: str, family: str) -> list:
    """The samples of one metric family on a gateway's /metrics (all its workers)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [s for f in text_string_to_metric_families(text) if f.name == family for s in f.samples]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def speed_probe() -> str:
    """One line that tells how fast this box's cores are right now (best of 5, so noise shows less)."""
    loop, digest = [], []
    data = b"x" * (16 << 20)
    for _ in range(5):
        t = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        loop.append(time.perf_counter() - t)
        t = time.perf_counter()
        hashlib.sha256(data).digest()
        digest.append(time.perf_counter() - t)
    return (f"python loop of 1M squares {min(loop) * 1000:.1f} ms; sha256 of 16 MiB {min(digest) * 1000:.1f} ms; "
            f"load average {os.getloadavg()[0]:.2f}")


def process_tree(root: int) -> list[int]:
    """The root and every descendant, from /proc (uvicorn workers, delivery workers, nginx workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU of the live processes under root (reaped children are counted by cutime)."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def memory_mib(root: int, *fields: str) -> list[tuple[float, ...]]:
    """The given /proc status fields (e.g. VmRSS, VmHWM) in MiB of every process under root, one tuple each
    (multiprocessing's resource tracker left out)."""
    rows = []
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing" in cmd and b"resource_tracker" in cmd:
            continue
        found = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in status.splitlines()
                 if line.split(":")[0] in fields}
        rows.append(tuple(round(found[f], 1) for f in fields if f in found))
    return rows


def peak_rss_mib(root: int) -> list[float]:
    """Peak resident set (VmHWM, MiB) of every process under root."""
    return [row[0] for row in memory_mib(root, "VmHWM") if row]


def proc_status(pid: int, field: str) -> int:
    """One /proc status field of one process (e.g. VmRSS), in bytes; 0 if it has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_while(pid: int, work: Callable[[], T]) -> tuple[T, int]:
    """What `work()` returns, and the largest VmRSS (bytes) of process `pid` while it ran, sampled every 20 ms
    (VmHWM would hold the peak of the process's whole life, not of this work)."""
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc_status(pid, "VmRSS"))
            time.sleep(0.02)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        result = work()
    finally:
        done.set()
        thread.join()
    return result, peak
