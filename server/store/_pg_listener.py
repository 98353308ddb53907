"""The listener of a PostgreSQL node: subjects other nodes changed (plangate_subjects) and the counts any node
committed (plangate_usage), on a connection of its own."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from ..logs import log
from ._background import Background
from ._pg_pool import ERRORS as _ERRORS
from ._postgres_plans import PLAN_CHANNEL

CHANNEL = "plangate_subjects"
USAGE_CHANNEL = "plangate_usage"    # sent by plangate_count_batch (migration 10)


class Listener:
    """Keeps one connection LISTENing on the invalidation channel, on the plan channel when on_plan is given,
    and on plangate_usage when on_usage is (on_usage(subject, meter, window_start, used) for every count any
    node committed). When it is lost, every cached subject may be stale: on_reset drops them all, then the
    listener reconnects (with a growing pause); on_plan(None) then asks whether a plan was deployed meanwhile."""

    def __init__(self, dsn: str, on_subject, on_reset, on_usage=None, *, connect_timeout: float = 5.0,
                 mine: set[int] | frozenset[int] = frozenset(), on_plan=None):
        """mine: server PIDs whose counts this node has applied already (its own pool's): their plangate_usage
        notifications are skipped."""
        self.dsn, self.on_subject, self.on_reset, self.on_usage = dsn, on_subject, on_reset, on_usage
        self.on_plan = on_plan
        self.mine = mine
        self.hears_usage = on_usage is not None
        self.connect_timeout = connect_timeout
        self.connected = asyncio.Event()
        self._background = Background()

    def start(self) -> None:
        self._background.start(self._run())

    async def stop(self) -> None:
        await self._background.stop()

    def _counted(self, _conn, pid: int, _channel: str, note: str) -> None:
        """One plangate_usage notification: a line per count, "used window meter subject" (tab-separated)."""
        if pid in self.mine:
            return
        for line in note.split("\n"):
            used, window, meter, subject = line.split("\t", 3)
            self.on_usage(subject, meter, int(window), int(used))

    async def _run(self) -> None:
        pause, lost_at = 0.1, None      # lost_at: when the listener went, while it is away (said once each way)
        listened = False                # it has been listening: a failure loses it, rather than finds it unavailable
        while True:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, subject: self.on_subject(subject))
                if self.on_usage is not None:
                    await conn.add_listener(USAGE_CHANNEL, self._counted)
                if self.on_plan is not None:
                    await conn.add_listener(PLAN_CHANNEL, lambda _c, _pid, _ch, version: self.on_plan(version))
                self.on_reset()            # whatever changed while we were not listening
                if self.on_plan is not None:
                    self.on_plan(None)
                self.connected.set()
                if lost_at is not None:
                    waited = round(time.monotonic() - lost_at, 1)
                    if listened:
                        log(logging.INFO, "pg_listener_back", away_seconds=waited)
                    else:
                        log(logging.INFO, "pg_listener_connected", waited_seconds=waited)
                    lost_at = None
                listened = True
                pause = 0.1
                while not lost.is_set():
                    try:
                        await asyncio.wait_for(lost.wait(), 1.0)
                    except TimeoutError:
                        # Notices a dead connection promptly, a silent one too (no reset, no close: without a
                        # timeout it would wait for TCP to give up, minutes, while the cache goes unkept).
                        await conn.execute("SELECT 1", timeout=self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                error = "the connection was closed"
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(*_ERRORS, asyncio.CancelledError):
                        conn.terminate()
            if lost_at is None:
                if listened:
                    log(logging.WARNING, "pg_listener_lost", error=error, why="changes made on other nodes are not "
                        "heard: this node drops its cache and reconnects the listener")
                else:           # its first connect failed: nothing was heard yet, so nothing was lost
                    log(logging.WARNING, "pg_listener_unavailable", error=error, why="the listener could not "
                        "connect: changes made on other nodes are not heard until it does; this node drops its "
                        "cache at each try and keeps trying")
                lost_at = time.monotonic()
            self.on_reset()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)
