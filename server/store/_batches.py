"""Calls that arrive together, run together: the store's way to send many counts in one round trip.

An item submitted while no batch is waiting starts one, run at the end of the event loop's current turn, so
that every item the loop takes in during that turn (aiohttp reads many requests per turn under load) joins it.
While `depth` batches are running, new items wait and go together in the next one. Each item's future gets its
own result or exception; an item whose caller stopped waiting before its batch was sent is left out.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence


class Batches:
    def __init__(self, run: Callable[[list], Awaitable[Sequence]], depth: int, stall_after: float | None = None):
        """run(items) -> one result per item, in order (an exception instance fails that item alone); if run
        raises, every item of the batch fails with that exception. With stall_after, a batch waits for the one
        running only that long (seconds) before it is sent beside it, up to `depth` at once: one slow round trip
        (a database backend descheduled on a busy machine) does not hold every caller of the node."""
        self._run, self._depth, self._stall_after = run, depth, stall_after
        self._waiting: list[tuple[object, asyncio.Future]] = []
        self._scheduled = False
        self._stall: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task] = set()
        self.sizes: list[int] = []          # items per batch sent, kept for the last 1,000 batches (tests, bench)

    def submit(self, item) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future))
        if not self._scheduled:
            if not self._running or (len(self._running) < self._depth and not self._stall_after):
                self._scheduled = True
                loop.call_soon(self._start)
            elif self._stall is None and self._stall_after and len(self._running) < self._depth:
                self._stall = loop.call_later(self._stall_after, self._stalled)
        return future

    def _stalled(self) -> None:
        self._stall = None
        if self._waiting and not self._scheduled and len(self._running) < self._depth:
            self._start()

    def _start(self) -> None:
        self._scheduled = False
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        waiting = [(item, future) for item, future in self._waiting if not future.done()]
        self._waiting = []
        if not waiting:
            return
        if len(self.sizes) >= 1000:
            del self.sizes[:500]
        self.sizes.append(len(waiting))
        task = asyncio.get_running_loop().create_task(self._send(waiting))
        self._running.add(task)

    def withdraw(self, future: asyncio.Future) -> bool:
        """Cancel the future of an item waiting for its batch: True when it will not run (False for one whose
        batch was sent, or a future that is not an item's here)."""
        return any(f is future for _, f in self._waiting) and future.cancel()

    async def _send(self, batch: list[tuple[object, asyncio.Future]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            results = [exc] * len(batch)
        finally:
            self._running.discard(asyncio.current_task())
            if self._waiting and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._start)
        for (_, future), result in zip(batch, results):
            if not future.done():
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def drain(self, timeout: float) -> None:
        """Wait (up to timeout) for the batches running and waiting, then cancel what is left."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._running or self._waiting:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            if self._running:
                await asyncio.wait(set(self._running), timeout=left)
            else:
                await asyncio.sleep(0)
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        for task in list(self._running):
            task.cancel()
        for _, future in self._waiting:
            if not future.done():
                future.cancel()
        self._waiting = []
