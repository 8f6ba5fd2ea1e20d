"""Counter stores behind one small interface: take a set of counters at once, all or nothing.

Two kinds of counter:
  Rate   a GCRA (generic cell rate algorithm, the token bucket as one stored time): `burst`
         calls at once, then one every `interval` seconds
  Quota  a calendar window count (a day, a month), ending at `ends_at`

`take` checks every counter of an exchange and, only if all allow it, counts the exchange in
all of them, atomically: a call refused by the national quota does not use up the client's own.

Backends:
  EmbeddedStore  a SQLite file in LGSP_HOME, shared by the worker processes of one machine
                 (one short write transaction per exchange; the file lock orders the workers)
  RedisStore     a Redis server (LGSP_REDIS_URL) shared by several nodes; one Lua script per exchange
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from lgsp.storage.checkpoints import Checkpointer

log = logging.getLogger(__name__)
_EPSILON = 1e-9


@dataclass(frozen=True)
class Rate:
    key: str
    interval: float   # seconds between calls at the sustained rate
    burst: int


@dataclass(frozen=True)
class Quota:
    key: str
    limit: int
    ends_at: float    # Unix time the window ends (the count starts again)


Counter = Rate | Quota


@dataclass(frozen=True)
class Count:
    allowed: bool
    remaining: int        # calls still available now (after this one, if it was allowed)
    reset: float          # seconds until the counter is full again
    retry_after: float    # seconds until a refused call could pass (0 when allowed)


class StoreUnavailable(Exception):
    """The counter store cannot be reached; the policies' on_store_failure decides."""


class CounterStore(Protocol):
    name: str

    async def take(self, counters: Sequence[Counter]) -> list[Count]: ...

    async def state(self) -> dict: ...

    async def close(self) -> None: ...


# -- the arithmetic both backends share (the Redis script mirrors it in Lua) ------------------

def rate_step(stored_tat: float | None, now: float, interval: float, burst: int) -> tuple[Count, float | None]:
    """The count for one GCRA, and the new theoretical arrival time to store if allowed."""
    tat = max(stored_tat or now, now)
    new_tat = tat + interval
    allow_at = new_tat - burst * interval
    if now + _EPSILON < allow_at:
        return Count(False, 0, tat - now, allow_at - now), None
    return Count(True, int((now - allow_at) / interval + _EPSILON), new_tat - now, 0.0), new_tat


def quota_step(stored: float | None, now: float, limit: int, ends_at: float) -> tuple[Count, float | None]:
    used = int(stored or 0)
    left = ends_at - now
    if used + 1 > limit:
        return Count(False, max(0, limit - used), left, left), None
    return Count(True, limit - used - 1, left, 0.0), used + 1


def step(counter: Counter, stored: float | None, now: float) -> tuple[Count, float | None]:
    if isinstance(counter, Rate):
        return rate_step(stored, now, counter.interval, counter.burst)
    return quota_step(stored, now, counter.limit, counter.ends_at)


def unconsumed(counts: list[Count]) -> list[Count]:
    """The counts of a refused exchange: those that would have allowed it were not used after all."""
    if all(c.allowed for c in counts):
        return counts
    return [Count(c.allowed, c.remaining + 1, c.reset, 0.0) if c.allowed else c for c in counts]


def expiry(counter: Counter, value: float, now: float) -> float:
    """When a stored value stops mattering (a drained bucket, an ended window)."""
    return value if isinstance(counter, Rate) else counter.ends_at


# -- embedded: a SQLite file shared by the workers of one machine ----------------------------

class EmbeddedStore:
    """Counters in a SQLite file (WAL): correct across the worker processes of one machine.

    Each exchange is one BEGIN IMMEDIATE transaction (a few indexed reads and upserts): SQLite's
    write lock orders the workers, so two workers never both take the last call of a quota.
    The transaction takes tens of microseconds, less than a hop to a thread would cost, so it is
    tried on the event loop without waiting for the lock; only when another worker holds it (a
    process descheduled mid-transaction on a busy machine) does the call wait, in a thread, so
    the worker's other exchanges never stall behind the lock. Nor does a commit checkpoint the WAL
    on the event loop (its syncs take 5 to 100 ms on a busy disk): a thread does that
    (lgsp.storage.checkpoints).
    """

    name = "embedded"
    CLEAN_EVERY = 5000   # exchanges between removals of expired counters

    def __init__(self, path: Path):
        self.path = path
        self._db: sqlite3.Connection | None = None     # waits for the lock (used in a thread)
        self._fast: sqlite3.Connection | None = None   # never waits (used on the event loop)
        self._pid = 0
        self._checkpoints: Checkpointer | None = None
        self._since_clean = 0
        self._lock = threading.Lock()

    def _conn(self, *, wait: bool = True) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._open(5.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value REAL NOT NULL, "
                       "expires REAL NOT NULL) WITHOUT ROWID")
            self._db, self._fast, self._pid = db, self._open(0.0), os.getpid()
            self._checkpoints = Checkpointer(self.path)  # this process's own: a thread does not survive a fork
        return self._db if wait else self._fast

    def _open(self, timeout: float) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=timeout)
        db.execute("PRAGMA synchronous=NORMAL")  # survives a process crash; a power cut may lose the last counts
        Checkpointer.detach(db)
        return db

    def take_sync(self, counters: Sequence[Counter], now: float | None = None) -> list[Count]:
        with self._lock:
            try:
                return self._take(self._conn(), counters, time.time() if now is None else now)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"embedded counter store: {exc}") from exc

    def _take(self, db: sqlite3.Connection, counters: Sequence[Counter], now: float) -> list[Count]:
        db.execute("BEGIN IMMEDIATE")  # raises "database is locked" at once on the fast connection
        try:
            results = []
            for counter in counters:
                row = db.execute("SELECT value, expires FROM counters WHERE key = ?", (counter.key,)).fetchone()
                stored = row[0] if row and row[1] > now else None
                results.append(step(counter, stored, now))
            if not all(count.allowed for count, _ in results):
                results = [(count, None) for count in unconsumed([count for count, _ in results])]
            else:
                db.executemany(
                    "INSERT INTO counters (key, value, expires) VALUES (?, ?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                    [(c.key, value, expiry(c, value, now)) for c, (_, value) in zip(counters, results)])
            self._since_clean += 1
            if self._since_clean >= self.CLEAN_EVERY:
                self._since_clean = 0
                db.execute("DELETE FROM counters WHERE expires < ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if self._checkpoints is not None:
            self._checkpoints.due()
        return [count for count, _ in results]

    async def take(self, counters: Sequence[Counter]) -> list[Count]:
        if self._lock.acquire(blocking=False):
            try:
                return self._take(self._conn(wait=False), counters, time.time())
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise StoreUnavailable(f"embedded counter store: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"embedded counter store: {exc}") from exc
            finally:
                self._lock.release()
        return await asyncio.to_thread(self.take_sync, counters)  # another worker holds the lock: wait aside

    async def state(self) -> dict:
        try:
            with self._lock:
                self._conn().execute("SELECT 1").fetchone()
            return {"backend": self.name, "state": "up", "path": str(self.path)}
        except sqlite3.Error as exc:
            return {"backend": self.name, "state": "down", "error": type(exc).__name__}

    async def close(self) -> None:
        for db in (self._db, self._fast):
            if db is not None:
                db.close()
        self._db = self._fast = None
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None


# -- Redis: several nodes ---------------------------------------------------------------------

# KEYS: the counters; ARGV: per counter, kind ("r" or "q"), then interval and burst, or limit and
# window end (Unix seconds). The clock is Redis's own (TIME), the same for every node.
# Returns per counter: allowed (1/0), remaining, reset, retry_after — as strings (Lua numbers
# returned bare would be cut to integers).
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out, new, all_ok = {}, {}, true
for i, key in ipairs(KEYS) do
  local kind, a, b = ARGV[3*i-2], tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i])
  local stored = tonumber(redis.call('GET', key))
  if kind == 'r' then
    local tat = math.max(stored or now, now)
    local new_tat = tat + a
    local allow_at = new_tat - b * a
    if now + 1e-9 < allow_at then
      all_ok = false
      out[i] = {'0', '0', tostring(tat - now), tostring(allow_at - now)}
    else
      out[i] = {'1', tostring(math.floor((now - allow_at) / a + 1e-9)), tostring(new_tat - now), '0'}
      new[i] = {tostring(new_tat), math.ceil((new_tat - now) * 1000) + 1000}
    end
  else
    local used = stored or 0
    local left = b - now
    if used + 1 > a then
      all_ok = false
      out[i] = {'0', tostring(math.max(0, a - used)), tostring(left), tostring(left)}
    else
      out[i] = {'1', tostring(a - used - 1), tostring(left), '0'}
      new[i] = {tostring(used + 1), math.max(1000, math.ceil(left * 1000) + 60000)}
    end
  end
end
if all_ok then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, new[i][1], 'PX', new[i][2])
  end
end
return out
"""


class RedisStore:
    """Counters in Redis: one atomic script per exchange (one round trip), correct across nodes.

    After a failure the store is taken as down for `DOWN_SECONDS` without trying again, so an
    unreachable Redis costs each exchange nothing rather than a connect timeout; meanwhile each
    policy's on_store_failure decides (open: served uncounted; closed: refused).
    """

    name = "redis"
    DOWN_SECONDS = 1.0
    PREFIX = "lgsp:{rl}:"   # one hash slot: the script's keys must share a slot on a Redis Cluster
    CONNECTIONS = 16        # kept open per worker process; a script call holds one for a round trip

    def __init__(self, url: str, timeout: float = 1.0):
        # A Redis nearby answers in well under a millisecond; the timeout only bounds a stalled one
        # (the URL may set its own, e.g. ?socket_timeout=0.2). More exchanges at once than connections
        # wait for one (up to the timeout) rather than failing: redis-py's default pool refuses the
        # 101st at once, which would count the store as down and serve fail-open calls uncounted.
        import redis.asyncio as aioredis

        self.url = url
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=self.CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=0)
        self._client = aioredis.Redis.from_pool(pool)
        self._script = self._client.register_script(_SCRIPT)
        self._down_until = 0.0
        self._last_error: str | None = None

    async def take(self, counters: Sequence[Counter]) -> list[Count]:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"redis: {self._last_error}")
        keys, args = [], []
        for c in counters:
            keys.append(self.PREFIX + c.key)
            args += ["r", repr(c.interval), c.burst] if isinstance(c, Rate) else ["q", c.limit, repr(c.ends_at)]
        try:
            raw = await self._script(keys=keys, args=args)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, a server refusing the script, …
            self._failed(exc)
            raise StoreUnavailable(f"redis: {self._last_error}") from exc
        self._last_error = None
        return unconsumed([Count(a in (b"1", "1"), int(float(r)), float(t), float(w)) for a, r, t, w in raw])

    def _failed(self, exc: BaseException) -> None:
        if self._last_error is None:
            log.warning("rate-limit store unreachable: %s", exc)
        self._last_error = type(exc).__name__
        self._down_until = time.monotonic() + self.DOWN_SECONDS

    async def state(self) -> dict:
        out = {"backend": self.name, "url": _without_password(self.url)}
        try:
            await self._client.ping()
            return {**out, "state": "up"}
        except Exception as exc:
            self._failed(exc)
            return {**out, "state": "down", "error": type(exc).__name__}

    async def close(self) -> None:
        await self._client.aclose()


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=f"{parts.username or ''}:****@{host}")
    return urlunsplit(parts)


def store_for(redis_url: str | None, home: Path) -> CounterStore:
    """Redis when LGSP_REDIS_URL names one, else the embedded store in LGSP_HOME."""
    if redis_url:
        return RedisStore(redis_url)
    return EmbeddedStore(home / "limits.sqlite")


def ceil_seconds(value: float) -> int:
    """Seconds as the headers carry them: whole, rounded up, never below 0."""
    return max(0, math.ceil(value - _EPSILON))
