"""Cross-process wake-up: an accepted message wakes the delivery workers of every process and node.

PostgreSQL: each acceptance group's transaction also runs `pg_notify('lgsp_delivery', '')`
once (delivered at commit), and each worker listens on a connection of
its own, so a message accepted by any gateway process is claimed within milliseconds instead of at
the next poll. Polling (`LGSP_DELIVERY_POLL`) stays the fallback: a lost listener connection only
delays a message to the next poll. SQLite: one machine, a short poll (and an acceptance in the
same process wakes its own worker directly).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import Engine, text

from lgsp.config_notify import Listener

CHANNEL = "lgsp_delivery"

# One object for every acceptance: the audit writer runs it once per group's transaction, not once per
# message (lgsp.audit.writer._run_statements); a worker needs one wake-up per commit, not one per message.
NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")

notifications = Counter("lgsp_delivery_notifications", "Wake-ups of a delivery worker by a PostgreSQL notification")
listening = Gauge("lgsp_delivery_listening", "1 while the delivery worker listens for acceptances (PostgreSQL)",
                  multiprocess_mode="livemax")


def supported(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def notify_statement(engine: Engine) -> list[Any]:
    """What an acceptance adds to its transaction so that listening workers wake at its commit."""
    return [NOTIFY] if supported(engine) else []


def listener(engine: Engine, wake: Callable[[], None]) -> Listener:
    """A listener that wakes this process's delivery worker at each acceptance anywhere (PostgreSQL)."""

    def notified() -> None:
        notifications.inc()
        wake()

    return Listener(engine, notified, channel=CHANNEL, on_listening=lambda on: listening.set(1 if on else 0))
