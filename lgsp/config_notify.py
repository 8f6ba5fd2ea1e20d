"""Configuration changes pushed between nodes with PostgreSQL LISTEN/NOTIFY.

Every change that bumps `config_state.generation` also sends a notification in
the same transaction (delivered at commit). Each worker of each node listens on
its own connection and re-reads its snapshot at once, so a revoked grant or a
disabled client stops working everywhere within milliseconds. Polling stays as
the fallback: a lost listener connection only delays a change to the next poll.
SQLite has no such channel (one machine, polling only).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from sqlalchemy import Connection, Engine, text, update

from lgsp.storage.schema import config_state

CHANNEL = "lgsp_config"
log = logging.getLogger(__name__)


def bump_generation(conn: Connection) -> None:
    """Record a configuration change: every worker re-reads its snapshot when the generation moves."""
    conn.execute(update(config_state).where(config_state.c.id == 1).values(generation=config_state.c.generation + 1))
    announce(conn)


def announce(conn: Connection) -> None:
    """Notify every listening node of a configuration change (at commit of `conn`'s transaction)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class Listener:
    """A daemon thread that calls `on_notify` whenever a notification arrives on `channel`
    (PostgreSQL only). `on_connect` runs after each (re)connection, to catch up with what was
    missed meanwhile; `on_listening(bool)` is told when listening starts and stops."""

    def __init__(self, engine: Engine, on_notify: Callable[[], None], *, channel: str = CHANNEL,
                 on_connect: Callable[[], None] | None = None,
                 on_listening: Callable[[bool], None] | None = None, retry_seconds: float = 1.0):
        self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.on_notify, self.on_connect, self.on_listening = on_notify, on_connect, on_listening
        self.channel = channel
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lgsp-listener-{channel}", daemon=True)

    @staticmethod
    def supported(engine: Engine) -> bool:
        return engine.dialect.name == "postgresql"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {self.channel}")
                    self._listening(True)
                    if self.on_connect:
                        self.on_connect()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.on_notify()
            except Exception:  # the database blinked: polling covers the gap, then listen again
                log.warning("listener on %s lost its connection; retrying", self.channel, exc_info=True)
                self._stop.wait(self.retry_seconds)
            finally:
                self._listening(False)

    def _listening(self, state: bool) -> None:
        if self.on_listening:
            self.on_listening(state)
