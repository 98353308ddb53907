"""The change feed: what a client deciding locally must hear (issue 21), for GET /v1/stream.

Every change a decision depends on is published here by the gate: a subject whose state changed (`subject`),
a count committed by this node or pushed by another (`usage`), every cached subject possibly stale (`reset`),
the plan swapped (`plan`). Each event has an id, "<epoch>-<n>": the epoch is this process's, so an id from
another process (or an older run) is never mistaken for one of ours. The newest `keep` events are kept, so that
a client that reconnects with Last-Event-ID gets what it missed; from an id no longer kept (or another epoch)
it gets `reset` and fetches its copies again.

A listener's queue is bounded: a client that reads too slowly is cut off (it reconnects and resumes), never
waited for, so the gate's decisions do not slow down with its listeners. Publishing with no listener costs a
deque append.
"""
from __future__ import annotations

import asyncio
import secrets
from collections import deque

import orjson


class Listener:
    """One client's queue of encoded events; `cut` once it overflowed."""

    __slots__ = ("queue", "limit", "ready", "cut")

    def __init__(self, limit: int):
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.cut = False

    def push(self, frame: bytes) -> None:
        if self.cut:
            return
        if len(self.queue) >= self.limit:
            self.cut = True
            self.queue.clear()
        else:
            self.queue.append(frame)
        self.ready.set()

    def drain(self) -> list[bytes]:
        frames = list(self.queue)
        self.queue.clear()
        self.ready.clear()
        return frames


class ChangeFeed:
    def __init__(self, keep: int = 10_000, queue_limit: int = 1_000):
        self.epoch = secrets.token_hex(4)
        self.n = 0
        self.kept: deque[tuple[int, bytes]] = deque(maxlen=keep)
        self.listeners: set[Listener] = set()
        self.queue_limit = queue_limit
        self.cut_off = 0            # listeners cut off for reading too slowly, since start
        self.closing = False

    def close(self) -> None:
        """The gate stops: every stream ends now (not after the shutdown's grace period)."""
        self.closing = True
        for listener in self.listeners:
            listener.ready.set()

    @property
    def last_id(self) -> str:
        return f"{self.epoch}-{self.n}"

    def _publish(self, kind: str, data: dict) -> None:
        self.n += 1
        frame = b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (self.epoch.encode(), self.n, kind.encode(),
                                                         orjson.dumps(data))
        self.kept.append((self.n, frame))
        for listener in self.listeners:
            listener.push(frame)

    def subject(self, subject: str) -> None:
        self._publish("subject", {"subject": subject})

    def usage(self, subject: str, meter: str, window_start: int, used: int) -> None:
        self._publish("usage", {"subject": subject, "meter": meter, "window_start": window_start, "used": used})

    def reset(self) -> None:
        self._publish("reset", {})

    def plan(self, version: str) -> None:
        self._publish("plan", {"version": version})

    def since(self, last_event_id: str | None) -> list[bytes] | None:
        """The kept events after `last_event_id` (every kept one when None is... not asked: a new client needs
        none); None when the feed cannot resume from it (another epoch, or no longer kept)."""
        if not last_event_id:
            return []
        epoch, _, n = last_event_id.partition("-")
        if epoch != self.epoch or not n.isdigit() or int(n) > self.n:
            return None
        after = int(n)
        if after == self.n:
            return []
        if not self.kept or self.kept[0][0] > after + 1:
            return None
        return [frame for number, frame in self.kept if number > after]

    def listen(self) -> Listener:
        listener = Listener(self.queue_limit)
        self.listeners.add(listener)
        return listener

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)
        if listener.cut:
            self.cut_off += 1
