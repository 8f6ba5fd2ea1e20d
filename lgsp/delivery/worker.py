"""Delivery workers: take due messages, call the destination's adapter, record every attempt.

Guarantee: at-least-once delivery, with receiver-side dedupe for an exactly-once effect. A message
is marked delivered only in the transaction that records the successful attempt, which happens
after the destination answered; a worker killed between the destination's answer and that commit
leaves the message `delivering` until its lease runs out, and another worker delivers it again.
Every call carries the message id as its idempotency key (CallContext.idempotency_key) and the
message's own identity (dossier number + version, or the progress step id), by which the
destination recognises the repeat and does not apply it twice.

Outcomes: delivered (with the destination's answer); a permanent refusal (the destination's fault
answer, not allowed, not found, malformed) is dead at once with its reason; an outage (timeout,
unavailable, any other upstream error) is retried with exponential backoff and jitter until the
message's maximum age, then dead.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from lgsp import metrics
from lgsp.adapter import (
    CallContext,
    NotAllowed,
    RecordNotFound,
    UpstreamError,
    UpstreamFault,
    UpstreamMalformed,
)
from lgsp.config_notify import Listener
from lgsp.delivery import callbacks, wakeup
from lgsp.delivery.policy import Policy
from lgsp.delivery.store import Claim, Queue, now, open_payload

log = logging.getLogger(__name__)

PERMANENT = (UpstreamFault, NotAllowed, RecordNotFound, UpstreamMalformed)
# Message operations whose stored payload only names data kept elsewhere (a stored edXML package):
# at delivery time the hook turns it into the adapter's operation and params (lgsp.documents.routing).
PREPARE: dict[str, Callable[[dict[str, Any]], Awaitable[tuple[str, dict[str, Any]]]]] = {}
MAX_REASON = 1000
PAUSE_AFTER = 5  # outages in a row before a destination is paused
PAUSE_CAP = 5.0  # seconds: the longest pause between probes of a destination that is down (its return seen soon)


def worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """One process's delivery loop: up to `policy.concurrency` deliveries in flight."""

    def __init__(self, gw: Any, policy: Policy | None = None):
        self.gw = gw
        self.policy = policy or Policy.from_environment()
        self.queue = Queue(gw.engine, worker_id())
        self._inflight: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._callbacks_due = False
        self._callbacks_at = float("inf")  # monotonic time the next callback retry is due
        self._callback_task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        # Per destination: transient failures in a row, and (after PAUSE_AFTER of them) until when no
        # more of its messages are claimed: during an outage the queue is not hammered message by
        # message (on SQLite that starved acceptances of the single writer).
        self._streak: dict[str, int] = {}
        self._paused: dict[str, float] = {}
        self._pauses: dict[str, int] = {}

    def wake(self) -> None:
        """A message was accepted in this process: look at the queue now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="delivery-worker")
        if wakeup.supported(self.gw.engine):  # acceptances in any process wake this worker at their commit
            loop = asyncio.get_running_loop()
            def wake() -> None:
                loop.call_soon_threadsafe(self._wake.set)

            self._listener = wakeup.listener(self.gw.engine, wake)
            self._listener.start()

    async def stop(self, grace: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._listener is not None:
            self._listener.stop()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, grace)
        if self._callback_task is not None:
            self._callback_task.cancel()  # an unrecorded try is made again after its hold
        for task in list(self._inflight):
            task.cancel()  # its claim's lease runs out and another worker takes it again
        await asyncio.gather(*self._inflight, return_exceptions=True)

    async def run(self) -> None:
        next_stats = 0.0
        batch = max(1, self.policy.concurrency // 4)  # claim a few at a time: one transaction, several messages
        idle = True
        claim_at = 0.0  # monotonic: no claim before (after one that found the queue short)
        while not self._stopping:
            free = self.policy.concurrency - len(self._inflight)
            claims: list[Claim] = []
            if free >= batch or (free > 0 and (idle or not self._inflight)):
                if (gap := claim_at - time.monotonic()) > 0:
                    # Wake-ups (each acceptance, each finished delivery) within the gather window are
                    # one claim at its end: a batch per look at the queue, not a look per message.
                    await asyncio.sleep(gap)
                    continue
                try:
                    claims = await asyncio.to_thread(self.queue.claim, free, self.policy.lease, self._excluded())
                except Exception:
                    log.warning("delivery: the queue could not be read; trying again", exc_info=True)
                claim_at = time.monotonic() + (0.0 if len(claims) == free else self.policy.gather)
            for claim in claims:
                task = asyncio.create_task(self.deliver(claim))
                self._inflight.add(task)
                task.add_done_callback(self._done)
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + 5
                await self._publish_stats()
                self._callbacks_due = True  # also those left by a worker that stopped
            if (self._callbacks_due or time.monotonic() >= self._callbacks_at) and (
                    self._callback_task is None or self._callback_task.done()):
                self._callbacks_due = False
                self._callback_task = asyncio.create_task(self._send_callbacks())
            if claims and len(claims) == free:
                idle = True
                continue  # more may be due: take them before sleeping
            self._wake.clear()
            idle = False
            try:
                await asyncio.wait_for(self._wake.wait(), self.policy.poll)
            except TimeoutError:
                idle = True
        await self._publish_stats()

    async def _send_callbacks(self) -> None:
        """Due callbacks, off the claim loop (a slow receiver does not hold deliveries up)."""
        await callbacks.send_pending(self.gw)
        try:
            wait = await asyncio.to_thread(callbacks.next_due, self.gw.engine)
        except Exception:
            wait = None
        self._callbacks_at = float("inf") if wait is None else time.monotonic() + max(wait, self.policy.poll)
        self._wake.set()  # the loop's wait is cut short to look at the new time

    def _excluded(self) -> list[str]:
        at = time.monotonic()
        return [d for d, until in self._paused.items() if until > at]

    async def _note(self, destination: str, transient: bool) -> None:
        """Follow the destination's health: pause it after a run of outages; when it answers again,
        its waiting messages are retried at once."""
        if transient:
            streak = self._streak[destination] = self._streak.get(destination, 0) + 1
            if streak >= PAUSE_AFTER and self._paused.get(destination, 0.0) <= time.monotonic():
                # Each failed probe after a pause doubles the next pause, up to PAUSE_CAP: an outage is
                # noticed within that long of its end.
                pauses = self._pauses[destination] = self._pauses.get(destination, 0) + 1
                self._paused[destination] = time.monotonic() + min(PAUSE_CAP, self.policy.backoff(pauses))
            return
        self._pauses.pop(destination, None)
        if self._streak.pop(destination, 0) >= PAUSE_AFTER:
            self._paused.pop(destination, None)
            log.info("delivery: %s answers again; its waiting messages are due now", destination)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.queue.retry_now, destination)
        self._paused.pop(destination, None)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a finished key lets its next message go

    async def _publish_stats(self) -> None:
        from lgsp.delivery.status import publish_queue_metrics

        with contextlib.suppress(Exception):
            await asyncio.to_thread(publish_queue_metrics, self.gw.engine)

    # -- one attempt ---------------------------------------------------------------
    async def deliver(self, claim: Claim) -> None:
        started = time.perf_counter()
        result, error = None, None
        try:
            result = await self._call(claim)
        except UpstreamError as exc:
            error = exc
        except Exception as exc:  # a defect in an adapter: retried like an outage, and logged
            log.exception("delivery of %s failed unexpectedly", claim.id)
            error = UpstreamError(f"The delivery failed unexpectedly ({type(exc).__name__}).")
        elapsed = round((time.perf_counter() - started) * 1000, 3)
        status, next_at, reason = self._outcome(claim, error)
        answer = _plain(result.data) if result is not None else None
        statements = self.queue.finish_statements(
            claim, status=status, error_code=error.code if error else None, reason=reason, answer=answer,
            next_attempt_at=next_at, latency_ms=elapsed)
        record = _attempt_record(claim, status, error, reason, elapsed, result, next_at)
        try:
            await self.gw.audit.commit(record, statements)
        except Exception:
            # Not recorded, so not done: the lease runs out and the message is tried again.
            log.error("delivery of %s: the attempt could not be recorded; it will be retried", claim.id)
            return
        await self._note(claim.destination, transient=status == "failed")
        metrics.delivery_attempts.labels(claim.destination, {"failed": "retry"}.get(status, status)).inc()
        if status in ("delivered", "dead"):
            metrics.delivery_outcomes.labels(claim.destination, status).inc()
            if claim.callback_url:
                self._callbacks_due = True

    async def _call(self, claim: Claim):
        adapter = self.gw.registry.adapter(claim.destination)
        if adapter is None:
            raise UpstreamError(f"The connection {claim.destination!r} is not available (not set up or disabled).")
        # The message id, the same in every attempt and unique to the message (the sender's X-Request-ID
        # of the acceptance need not be): adapters pass it on as the write's idempotency token.
        context = CallContext(request_id=claim.id, client_id=claim.client_id,
                              agency_code=claim.agency_code, officer=claim.officer, purpose=claim.purpose,
                              idempotency_key=claim.id)
        operation, params = claim.operation, open_payload(claim.payload)
        prepare = PREPARE.get(operation)
        if prepare is not None:
            operation, params = await prepare(params)
        return await adapter.call(operation, params, context)

    def _outcome(self, claim: Claim, error: UpstreamError | None) -> tuple[str, dt.datetime | None, str | None]:
        if error is None:
            return "delivered", None, None
        reason = (error.detail or error.code)[:MAX_REASON]
        if isinstance(error, PERMANENT):
            return "dead", None, f"Refused by the destination: {reason}"
        next_at = now() + dt.timedelta(seconds=self.policy.backoff(claim.attempt))
        if next_at > claim.expires_at:
            return "dead", None, f"Not delivered within its maximum age ({claim.attempt} attempts); last: {reason}"
        return "failed", next_at, reason


def _plain(data: Any) -> Any:
    """The destination's answer as JSON can hold it."""
    try:
        return orjson.loads(orjson.dumps(data, default=str))
    except (TypeError, orjson.JSONEncodeError):
        return {"text": str(data)[:2000]}


def _attempt_record(claim: Claim, status: str, error: UpstreamError | None, reason: str | None,
                    elapsed: float, result: Any, next_at: dt.datetime | None) -> dict:
    """One audit record per attempt (kind "delivery"), naming the message and the sender's exchange."""
    body = orjson.dumps(result.data, default=str) if result is not None else b""
    outcome = "ok" if status == "delivered" else "refused" if status == "dead" and error is not None and isinstance(
        error, PERMANENT) else "failed"
    return {
        "at": now(), "kind": "delivery", "request_id": f"{claim.id}:{claim.attempt}"[:64], "door": "queue",
        "client_id": claim.client_id, "agency_code": claim.agency_code, "officer": claim.officer,
        "purpose": claim.purpose, "service": claim.service, "outcome": outcome,
        "status": 200 if error is None else 502, "error_code": error.code if error else None,
        "latency_ms": elapsed, "fields": [],
        "upstream": (result.upstream if result is not None else error.upstream if error else None),
        "trace_id": (result.trace_id if result is not None else error.trace_id if error else None),
        "request_bytes": 0, "response_bytes": len(body), "response_sha256": hashlib.sha256(body).hexdigest(),
        "detail": {"message_id": claim.id, "attempt": claim.attempt, "delivery": status,
                   "accepted_by": claim.request_id, "reason": reason,
                   "next_attempt_at": next_at.isoformat() if next_at else None},
    }


def start_in_process(gw: Any) -> Worker | None:
    """The delivery worker of a gateway process (`lgsp serve`), unless LGSP_DELIVERY_WORKER=0."""
    if os.environ.get("LGSP_DELIVERY_WORKER", "1") == "0":
        return None
    worker = gw.delivery_worker = Worker(gw)
    worker.start()
    return worker


def _lower_priority() -> None:
    """LGSP_DELIVERY_NICE (0 by default): a worker-plane process runs at that much lower CPU priority,
    so that on a machine shared with the gateway the 202s (a sender waits for them) come first and
    deliveries (nobody waits for them) take the CPU left; a backlog left by a burst drains after it."""
    try:
        nice = int(os.environ.get("LGSP_DELIVERY_NICE", "0") or 0)
    except ValueError:
        nice = 0
    if nice > 0:
        os.nice(min(nice, 19))
        log.info("delivery worker: CPU priority lowered by %d", min(nice, 19))


async def serve_worker_plane(metrics_port: int | None = None) -> None:
    """`lgsp serve --plane worker`: only delivery, until SIGTERM/SIGINT (a kill -9 loses nothing:
    its claims' leases run out and other workers take them)."""
    import signal

    from prometheus_client import start_http_server

    from lgsp import logs
    from lgsp.gateway import Gateway

    gw = Gateway()
    logs.setup(gw.settings.log_level)
    _lower_priority()
    await gw.start()
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1")
    worker = gw.delivery_worker = Worker(gw)
    worker.start()
    log.info("delivery worker started", extra={"fields": {"worker": worker.queue.worker}})
    from lgsp.documents.poller import start_in_process as start_document_poller

    poller = start_document_poller(gw, worker_plane=True)  # documents from the national axis (lgsp.documents)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if poller is not None:
        await poller.stop()
    await worker.stop()
    await gw.stop()
