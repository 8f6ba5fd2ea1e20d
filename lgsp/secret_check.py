"""Checking client secrets without handing attackers a lever.

scrypt is slow on purpose (tens of milliseconds of CPU per check). Run on the
event loop, every wrong guess stalls every other exchange of the worker; run
without a bound, a flood of guesses takes all the CPU. So every check runs in a
small pool of its own threads (hashlib.scrypt releases the GIL), at most
LGSP_HASH_WORKERS at a time, and a check that would queue behind more than
LGSP_HASH_QUEUE others is refused at once (`Busy`: the caller answers
auth.throttled). A client id that does not exist is checked against a dummy
hash, so known and unknown ids cost the same and cannot be told apart by timing.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from lgsp.crypto import hash_secret, verify_secret

WORKERS = max(1, int(os.environ.get("LGSP_HASH_WORKERS", "2")))
QUEUE = max(WORKERS, int(os.environ.get("LGSP_HASH_QUEUE", "32")))

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _give_back_work_areas() -> None:
    """Keep scrypt's 16 MiB work area out of the worker's resident memory between checks.

    glibc raises its mmap threshold to the size of the first large block freed, so from the second
    check on the work area comes from the heap and stays resident for the process's life (+16 MiB per
    checking thread, measured: docs/performance.md). A fixed threshold keeps large blocks mmap'd,
    given back when freed."""
    try:
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # glibc's default, without the raising
    except (OSError, AttributeError):
        pass  # a C library without mallopt: nothing to tune


_give_back_work_areas()
_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="lgsp-secret-check")
_admitted = threading.BoundedSemaphore(QUEUE)


class Busy(Exception):
    """Too many secret checks are already waiting; the caller should try again shortly."""


@cache
def dummy_hash() -> str:
    """A hash nobody knows the secret of, with the same parameters as real ones."""
    return hash_secret(secrets.token_urlsafe(16))


def _submit(secret: str, stored: str | None):
    if not _admitted.acquire(blocking=False):
        raise Busy("too many secret checks waiting")
    try:
        return _pool.submit(_run, secret, stored)
    except BaseException:
        _admitted.release()
        raise


def _run(secret: str, stored: str | None) -> bool:
    try:
        return verify_secret(secret, stored or dummy_hash()) and stored is not None
    finally:
        _admitted.release()


def check(secret: str, stored: str | None) -> bool:
    """From a worker thread (Flask): is `secret` the one `stored` was hashed from? None: unknown client."""
    return _submit(secret, stored).result()


async def check_async(secret: str, stored: str | None) -> bool:
    """From the event loop: the same check, awaited, so other exchanges go on meanwhile."""
    return await asyncio.wrap_future(_submit(secret, stored))
