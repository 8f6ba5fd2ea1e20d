"""What a sender and an operator see of a message, and the queue's gauges."""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from lgsp import metrics
from lgsp.delivery.store import PENDING, now, utc
from lgsp.storage.schema import delivery_messages as M

STATUS_PATH = "/api/portal/v1/messages/{id}"
_seen: set[str] = set()


def status_url(base_url: str, message_id: str) -> str:
    return base_url + STATUS_PATH.format(id=message_id)


def _iso(value) -> str | None:
    value = utc(value)
    return value.isoformat() if value else None


def view(row: Any, base_url: str, *, replayed: bool = False) -> dict[str, Any]:
    """The sender's view: accepted → delivering → delivered (with the destination's answer), or
    failed (the reason, the next attempt) → … → dead (the reason), or cancelled by an operator."""
    out: dict[str, Any] = {
        "message_id": row.id, "status": row.status, "key": row.msg_key, "service": row.service,
        "destination": row.destination, "accepted_at": _iso(row.accepted_at), "attempts": row.attempts,
        "status_url": status_url(base_url, row.id),
    }
    if replayed:
        out["replayed"] = True  # this acceptance is the first one, answered again
    if row.status == "failed":
        out["next_attempt_at"] = _iso(row.next_attempt_at)
    if row.status in ("failed", "dead", "cancelled"):
        out["error"] = {"code": row.error_code, "reason": row.reason}
    if row.status == "delivered":
        out["answer"] = row.answer
    if row.finished_at is not None:
        out["finished_at"] = _iso(row.finished_at)
    return out


def queue_stats(engine: Engine) -> dict[str, dict[str, Any]]:
    """Per destination: pending messages by state, and the age of the oldest (seconds)."""
    with engine.connect() as conn:
        rows = conn.execute(select(M.c.destination, M.c.status, func.count(), func.min(M.c.accepted_at))
                            .where(M.c.status.in_(PENDING)).group_by(M.c.destination, M.c.status)).all()
    at = now()
    _seen.update(destination for destination, *_ in rows)
    # A destination whose queue emptied keeps its series, at zero.
    stats: dict[str, dict[str, Any]] = {d: {"depth": dict.fromkeys(PENDING, 0), "oldest_age": 0.0} for d in _seen}
    for destination, state, count, oldest in rows:
        entry = stats[destination]
        entry["depth"][state] = count
        entry["oldest_age"] = max(entry["oldest_age"], (at - utc(oldest)).total_seconds())
    return stats


def publish_queue_metrics(engine: Engine) -> None:
    for destination, entry in queue_stats(engine).items():
        for state, count in entry["depth"].items():
            metrics.delivery_queue_depth.labels(destination, state).set(count)
        metrics.delivery_oldest_age.labels(destination).set(round(entry["oldest_age"], 3))
