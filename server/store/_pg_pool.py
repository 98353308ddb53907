"""PostgreSQL connections: a pool handed out in turns, and streaming replicas whose lag is measured.

A replica serves a read only when it is known to hold every transaction the primary had committed a short while
ago (`max_lag` seconds at most) and, for the subjects read, every change this node has heard of since: a read it
cannot vouch for goes to the primary.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import weakref

import asyncpg

from ._background import Background
from ._base import StoreError

# InternalClientError: a connection the server dropped in the middle of an operation, handed out again before the
# pool noticed, refuses the next one ("cannot switch to state 12; another operation is in progress"; seen on
# Python 3.12 and 3.13 when PostgreSQL stops). It is the store failing like any other.
ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, ConnectionError,
          asyncio.TimeoutError)


class Pool:
    """An asyncpg pool whose connections are handed out in turns, first come first served.

    asyncpg's own wait is an asyncio queue, where a woken waiter that finds the connection taken already (by a
    caller that came later and never waited) waits again at the back: at 32 checks in flight on 10 connections
    some waited past PLANGATE_STORE_TIMEOUT and were answered by the fail mode (p95 161 ms; in turns, p99
    5-6 ms). So a semaphore of `max_size` comes first, a freed turn going to the longest waiter."""

    def __init__(self, dsn: str, *, min_size: int, max_size: int, connect_timeout: float, command_timeout: float,
                 reset, init):
        self.dsn = dsn
        self._options = {"min_size": min_size, "max_size": max_size, "timeout": connect_timeout,
                         "command_timeout": command_timeout, "reset": reset, "init": init}
        self._pool: asyncpg.Pool | None = None
        self._turns: asyncio.Semaphore | None = None     # made by open(), in the loop that uses it
        # Tasks that have had a connection: what they asked may have reached the database.
        self.handed: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()

    async def open(self) -> None:
        self._turns = asyncio.Semaphore(self._options["max_size"])
        try:
            self._pool = await asyncpg.create_pool(self.dsn, **self._options)
        except (*ERRORS, ValueError) as exc:
            timeout = self._options["timeout"]
            why = f"no answer within {timeout:g} s" if isinstance(exc, asyncio.TimeoutError) else \
                str(exc) or type(exc).__name__
            raise StoreError(f"cannot connect to PostgreSQL: {why}") from exc

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(*ERRORS):
                await asyncio.wait_for(pool.close(), 5)

    @contextlib.asynccontextmanager
    async def conn(self, timeout: float | None = None):
        """A pooled connection, in turn. The wait is bounded by the caller's time budget (the gate runs every
        store call under one), not by a timer of its own: asyncpg's acquire timeout is a task and a timer per
        call. Calls outside a gate's budget (migrate, a job's lock) pass `timeout`."""
        if self._pool is None or self._turns is None:
            raise StoreError("the store is not open")
        turns = self._turns
        try:
            await (turns.acquire() if timeout is None else asyncio.wait_for(turns.acquire(), timeout))
        except TimeoutError as exc:
            raise StoreError(f"PostgreSQL: no connection free within {timeout}s") from exc
        try:
            async with self._pool.acquire() as conn:
                task = asyncio.current_task()
                if task is not None:
                    self.handed.add(task)
                try:
                    yield conn
                except asyncpg.InternalClientError:
                    conn.terminate()        # its protocol is stuck mid-operation: never hand it out again
                    raise
        except ERRORS as exc:
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        finally:
            turns.release()       # after the connection is back in the pool: the next turn finds it there


class Replicas:
    """Streaming replicas for reads, each with its measured lag.

    Every `interval` the prober notes the time t and then the primary's WAL position (pg_current_wal_lsn: every
    transaction committed before t is before it), and asks each replica how far it has replayed
    (pg_last_wal_replay_lsn). A replica that has replayed past the position noted at t holds everything committed
    before t: t is its `confirmed` time, and now - confirmed bounds how stale a read from it can be (its lag).
    """

    def __init__(self, primary: Pool, replicas: list[Pool], max_lag: float):
        self.primary, self.pools, self.max_lag = primary, replicas, max_lag
        self.interval = min(0.25, max(0.01, max_lag / 4))
        self.confirmed = [float("-inf")] * len(replicas)    # monotonic time, per replica
        self.lag = [float("inf")] * len(replicas)           # seconds, at the last probe
        self._touched: dict[str, float] = {}                # subject -> when this node last knew it changed
        self._turn = itertools.cycle(range(len(replicas)))
        self._positions: list[tuple[float, int]] = []       # (monotonic time noted, primary's WAL position)
        self._background = Background()

    def start(self) -> None:
        self._background.start(self._probe_forever())

    async def stop(self) -> None:
        await self._background.stop()

    def touched(self, subject: str) -> None:
        """The subject changed now (a local write, or a notification from another node): a replica serves it
        again only once it is confirmed past this moment."""
        now = time.monotonic()
        self._touched[subject] = now
        if len(self._touched) > 10_000:     # what is older than max_lag no usable replica can miss
            self._touched = {s: t for s, t in self._touched.items() if t > now - self.max_lag}

    def forget(self) -> None:
        """Some changes may have gone unheard (the listener was lost): no replica for anything until each is
        confirmed past this moment."""
        self.confirmed = [float("-inf")] * len(self.pools)
        self.lag = [float("inf")] * len(self.pools)
        self._positions = []

    def reader(self, subjects) -> Pool:
        """The pool to read these subjects from: a replica confirmed recently enough and past every change of
        theirs this node knows of (in turn among such replicas), else the primary."""
        now = time.monotonic()
        since = max((self._touched.get(s, float("-inf")) for s in subjects), default=float("-inf"))
        for _ in range(len(self.pools)):
            i = next(self._turn)
            if self.confirmed[i] >= since and now - self.confirmed[i] <= self.max_lag:
                return self.pools[i]
        return self.primary

    async def probe(self) -> None:
        """One round: the primary's position now, then how far each replica has replayed."""
        noted = time.monotonic()
        async with self.primary.conn(self.max_lag) as db:
            position = await db.fetchval("SELECT pg_current_wal_lsn()")
        self._positions.append((noted, position))
        for i, pool in enumerate(self.pools):
            try:
                if not pool.is_open:        # down when the store opened, or since: try again
                    await pool.open()
                async with pool.conn(self.max_lag) as db:
                    replayed = await db.fetchval("SELECT pg_last_wal_replay_lsn()")
            except StoreError:
                continue                    # unreachable: its confirmed time ages until it is not used
            if replayed is None:
                continue                    # not a replica (a primary has no replay position)
            reached = [t for t, lsn in self._positions if lsn <= replayed]
            if reached:
                self.confirmed[i] = max(self.confirmed[i], max(reached))
            self.lag[i] = time.monotonic() - self.confirmed[i]
        # A position noted more than max_lag ago can only confirm a replica too far behind to serve reads.
        useful = max(min(self.confirmed), time.monotonic() - self.max_lag)
        self._positions = [p for p in self._positions if p[0] >= useful] or self._positions[-1:]

    async def _probe_forever(self) -> None:
        while True:
            try:
                await self.probe()
            except StoreError:
                pass                        # the primary is unreachable: the gate's fail modes apply already
            await asyncio.sleep(self.interval)
