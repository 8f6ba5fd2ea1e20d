"""The configuration snapshot each worker serves from: clients, grants, services,
connections and token keys, held in memory so the hot path never waits on the
database. A worker re-reads it when the `config_state.generation` counter moves
(every admin change bumps it), checked every `config_poll_seconds`, and at once
when PostgreSQL notifies a change made on another node (lgsp/config_notify.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from joserfc.jwk import KeySet
from sqlalchemy import Engine, select

from lgsp import keys, plugins
from lgsp.adapter import Adapter
from lgsp.config_notify import Listener
from lgsp.connection_secrets import open_secrets
from lgsp.mapping.compile import load_mapping
from lgsp.storage.schema import clients, config_state, connections, grants, services, signing_keys, traffic_policies
from lgsp.tls import binding as tls_binding
from lgsp.traffic.policies import Policies, from_row

log = logging.getLogger(__name__)
# How long a changed connection's old adapter lives on for the calls it is serving
# (above the longest upstream timeout an adapter accepts, 120 s).
ADAPTER_DRAIN_SECONDS = 125.0


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    agency_code: str | None
    active: bool
    secret_hash: str = ""
    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grant:
    client_id: str
    service: str
    allowed_fields: tuple[str, ...]
    allowed_purposes: frozenset[str]


@dataclass(frozen=True)
class Service:
    name: str
    version: str
    connection: str
    operation: str
    personal_data: bool
    enabled: bool
    body_logging: str = "off"


@dataclass(frozen=True)
class ConnectionSpec:
    name: str
    adapter: str
    settings: dict[str, Any]
    enabled: bool
    # Upstream protection policy (lgsp.traffic.protection; None: defaults). Not compared: a changed
    # policy changes the connection's guard, not its adapter.
    protection: dict[str, Any] | None = field(default=None, compare=False)


@dataclass
class Snapshot:
    generation: int = -1
    clients: dict[str, Client] = field(default_factory=dict)
    grants: dict[tuple[str, str], Grant] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    connections: dict[str, ConnectionSpec] = field(default_factory=dict)
    jwks: list[dict[str, Any]] = field(default_factory=list)
    key_set: KeySet | None = None
    key_kids: frozenset[str] = frozenset()
    granted: dict[str, frozenset[str]] = field(default_factory=dict)  # client → services it has grants for
    policies: Policies = field(default_factory=Policies)  # rates and quotas (lgsp.traffic)
    bindings: dict[str, Any] = field(default_factory=dict)  # client → lgsp.tls.binding.Binding


def read_generation(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(config_state.c.generation).where(config_state.c.id == 1)).scalar_one())


def load_snapshot(engine: Engine) -> Snapshot:
    with engine.connect() as conn:
        generation = conn.execute(select(config_state.c.generation).where(config_state.c.id == 1)).scalar_one()
        snap = Snapshot(generation=generation)
        for r in conn.execute(select(clients)):
            snap.clients[r.client_id] = Client(r.client_id, r.name, r.agency_code, r.status == "active",
                                               r.secret_hash, tuple(r.roles or ()))
        for r in conn.execute(select(grants).where(grants.c.status == "active")):
            snap.grants[(r.client_id, r.service)] = Grant(
                r.client_id, r.service, tuple(r.allowed_fields), frozenset(r.allowed_purposes)
            )
        by_client: dict[str, set[str]] = {}
        for client_id, service in snap.grants:
            by_client.setdefault(client_id, set()).add(service)
        snap.granted = {c: frozenset(s) for c, s in by_client.items()}
        for r in conn.execute(select(services)):
            snap.services[r.name] = Service(r.name, r.version, r.connection, r.operation, r.personal_data, r.enabled,
                                            r.body_logging)
        for r in conn.execute(select(connections)):
            snap.connections[r.name] = ConnectionSpec(r.name, r.adapter, open_secrets(dict(r.settings)), r.enabled,
                                                      r.protection)
        key_rows = conn.execute(select(signing_keys)).all()
        snap.policies = Policies.of([from_row(r._mapping) for r in conn.execute(select(traffic_policies))])
        snap.bindings = tls_binding.load_all(conn)
    snap.jwks = keys.published_keys(key_rows)
    snap.key_set = keys.public_key_set(snap.jwks) if snap.jwks else None
    snap.key_kids = frozenset(k["kid"] for k in snap.jwks)
    return snap


class Registry:
    """Holds the current snapshot and the adapter instance of each connection."""

    def __init__(self, engine: Engine, poll_seconds: float):
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.snapshot = Snapshot()
        self._adapters: dict[str, tuple[ConnectionSpec, Adapter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._listener: Listener | None = None
        self._wake: asyncio.Event | None = None
        self._retired: set[asyncio.Task[None]] = set()  # adapters of changed connections, closing once drained

    def refresh(self) -> None:
        self.snapshot = load_snapshot(self.engine)

    async def start(self) -> None:
        await asyncio.to_thread(self.refresh)
        self._wake = asyncio.Event()
        if Listener.supported(self.engine):
            loop, wake = asyncio.get_running_loop(), self._wake

            def notified() -> None:  # on the listener's thread
                loop.call_soon_threadsafe(wake.set)

            self._listener = Listener(self.engine, notified, on_connect=notified)
            self._listener.start()
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        if self._listener:
            self._listener.stop()
        if self._task:
            self._task.cancel()
        for task in self._retired:
            task.cancel()  # closes each retired adapter now
        await asyncio.gather(*self._retired, return_exceptions=True)
        for _, adapter in self._adapters.values():
            await adapter.aclose()
        self._adapters.clear()

    async def _poll(self) -> None:
        wake = self._wake or asyncio.Event()  # set by start()
        while True:
            with contextlib.suppress(TimeoutError):  # a notification, or the poll interval, whichever first
                await asyncio.wait_for(wake.wait(), self.poll_seconds)
            wake.clear()
            try:
                if await asyncio.to_thread(read_generation, self.engine) != self.snapshot.generation:
                    snap = await asyncio.to_thread(load_snapshot, self.engine)
                    # New or changed connections' adapters are built off the event loop (the population
                    # adapter renders its templates in a child process, ~1 s) before the snapshot that
                    # names them is served: an exchange never waits for one to be built.
                    built = await asyncio.to_thread(self._build_for, snap)
                    self.snapshot = snap
                    log.info("configuration loaded", extra={"fields": {"generation": snap.generation}})
                    await self._drop_stale_adapters()
                    self._adapters.update(built)
            except Exception:  # the database may blink; keep serving the last snapshot
                log.warning("configuration refresh failed; serving the previous snapshot", exc_info=True)

    async def _drop_stale_adapters(self) -> None:
        for name, (conn, adapter) in list(self._adapters.items()):
            if self.snapshot.connections.get(name) != conn:
                del self._adapters[name]
                # Calls already under way finish on the old adapter: closing its HTTP session
                # under them left each waiting out its whole timeout (a 504 for a config change).
                task = asyncio.create_task(self._close_later(adapter))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)

    async def _close_later(self, adapter: Adapter) -> None:
        try:
            await asyncio.sleep(ADAPTER_DRAIN_SECONDS)
        finally:
            await adapter.aclose()

    def _build_for(self, snap: Snapshot) -> dict[str, tuple[ConnectionSpec, Adapter]]:
        """The adapters `snap` needs that are not built yet (on a worker thread: nothing shared is changed)."""
        built = {}
        for name, conn in snap.connections.items():
            cached = self._adapters.get(name)
            if not conn.enabled or (cached and cached[0] == conn):
                continue
            try:
                built[name] = (conn, plugins.build(conn.adapter, conn.settings))
            except Exception:
                log.error("connection %s: adapter could not be built", name, exc_info=True)
        return built

    def build_adapters(self) -> None:
        """Build every enabled connection's adapter now rather than on its first request."""
        self._adapters.update(self._build_for(self.snapshot))

    def compile_mappings(self) -> None:
        """Compile the built adapters' mappings now: the first exchange of each worker would
        otherwise pay for them (≈ 1.5 s with the administrative units) and miss its deadline."""
        for name, (_, adapter) in list(self._adapters.items()):
            if adapter.mapping_file is None:
                continue
            try:
                load_mapping(adapter.mapping_file)
            except Exception:  # the exchange reports it as upstream.malformed/internal.error, with its record
                log.error("connection %s: mapping %s could not be compiled", name, adapter.mapping_file, exc_info=True)

    def bind(self, snap: Snapshot, connection_name: str) -> tuple[ConnectionSpec | None, Adapter | None]:
        """The connection as `snap` has it and its adapter, for one exchange to hold until it ends.

        A reload may swap the live adapter while the exchange awaits its backend; the bound one
        stays open for it (a replaced adapter is closed only after ADAPTER_DRAIN_SECONDS).
        Raises what building the adapter raises (bad settings, a broken plug-in).
        """
        conn = snap.connections.get(connection_name)
        if conn is None or not conn.enabled:
            return conn, None
        cached = self._adapters.get(connection_name)
        if cached and cached[0] == conn:
            return conn, cached[1]
        if snap is not self.snapshot:  # replaced while the exchange waited (a password check): serve the live one
            conn = self.snapshot.connections.get(connection_name)
        return conn, self.adapter(connection_name)

    def adapter(self, connection_name: str) -> Adapter | None:
        """The adapter built from this connection's settings (built on first use)."""
        conn = self.snapshot.connections.get(connection_name)
        if conn is None or not conn.enabled:
            return None
        cached = self._adapters.get(connection_name)
        if cached and cached[0] == conn:
            return cached[1]
        adapter = plugins.build(conn.adapter, conn.settings)
        self._adapters[connection_name] = (conn, adapter)
        return adapter
