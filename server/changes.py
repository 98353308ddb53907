"""The change feed: what a client deciding locally must hear (issue 21), for GET /v1/stream.

Every change a decision depends on is published here by the gate: a subject whose state changed (`subject`),
a count committed by this node or pushed by another (`usage`), every cached subject possibly stale (`reset`),
the plan swapped (`plan`). Each event has an id, "<epoch>-<n>": the epoch is this process's, so an id from
another process (or an older run) is never mistaken for one of ours. The newest `keep` events are kept, so that
a client that reconnects with Last-Event-ID gets what it missed; from an id no longer kept (or another epoch)
it gets `reset` and fetches its copies again.

A listener names itself (`client`, an id it chose) and hears of the subjects it fetched a snapshot of under that
name, plus every `reset` and `plan`: a count costs a dict lookup when nobody holds its subject, not a write to
every listener (measured: 1,000 listeners hearing every count took a consume from 81 to 933 µs of the gate's
CPU). Its subjects outlive a reconnect by FORGET_AFTER seconds, so that a resumed stream misses nothing; a
client that comes back later, or whose subjects passed MAX_SUBJECTS, has lost them here and resumes with
`reset` (it drops its copies), never with a stream that is silent about subjects it still holds. A
listener without a name hears everything. A listener's queue is bounded: a client that reads too slowly is cut
off (it reconnects and resumes), never waited for.
"""
from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import orjson

from plangate.stream_format import STAMP_SIZE, stamp

FORGET_AFTER = 300.0        # seconds a disconnected client's subjects are kept for its reconnect
MAX_SUBJECTS = 100_000      # subjects one client may hold: beyond, all are dropped and it is cut off (it resets)
# Clients not listening here whose subjects are kept (for FORGET_AFTER): past this many, the one gone longest is
# forgotten at once (it resumes with `reset`), so that snapshots under ever new names cannot grow the gate without
# bound (40,000 names took some 45 MB).
MAX_GONE = 20_000
# Woken by an event, the flusher waits this long for more before it writes: a listener costs at most 1 / GATHER
# writes a second however many counts it hears of, and a change still reaches it well within 50 ms.
GATHER = 0.01
FLUSH_TURN = 100            # listeners written before the flusher lets requests in (about a millisecond)


# A write to a stream ends with a stamp (stream_format.stamp): every event published before it (this process's
# monotonic clock, which no step of the wall clock moves) has been written. A client measures how fresh its copies
# are by the last stamp it read, not by when it read it: frames held up on the way (a congested network, a client's
# busy event loop) looked fresh on arrival while later changes still waited behind them.
_EVENT_NUMBER = re.compile(r"[0-9]{1,18}")


class Listener:
    """One client's queue of encoded events; `cut` once it overflowed (or its connection took none of a write).

    Until its stream has started (`start`) its events only queue; from then on the feed's flusher writes them.
    `ready` is set when the stream must end: cut off, replaced, or the gate closing."""

    __slots__ = ("queue", "limit", "ready", "cut", "client", "send", "room", "sent_at", "_mark")

    def __init__(self, limit: int, client: str | None, mark: Callable[[Listener], None]):
        self.queue: deque[bytes] = deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.cut = False
        self.client = client
        self.send: Callable[[bytes], Awaitable[None]] | None = None     # writes to the client's connection
        self.room: Callable[[int], bool] | None = None                  # may that many bytes be written now?
        self.sent_at = 0.0          # loop time of the flusher's last write to it
        self._mark = mark

    def push(self, frame: bytes) -> None:
        if self.cut:
            return
        if len(self.queue) >= self.limit:
            self.cut_off()
            return
        self.queue.append(frame)
        if len(self.queue) == 1 and self.send is not None:
            self._mark(self)

    def cut_off(self) -> None:
        self.cut = True
        self.queue.clear()
        self.ready.set()

    def start(self, send: Callable[[bytes], Awaitable[None]], room: Callable[[int], bool]) -> None:
        """The stream's first frames are written: the feed writes its events from now on (those queued first)."""
        self.send, self.room = send, room
        if self.queue:
            self._mark(self)


class ChangeFeed:
    def __init__(self, keep: int = 10_000, queue_limit: int = 1_000):
        self.epoch = secrets.token_hex(4)
        self.n = 0
        self.kept: deque[tuple[int, str | None, bytes]] = deque(maxlen=keep)   # (number, subject or None, frame)
        self.everything: set[Listener] = set()          # listeners without a name: every event
        self.named: dict[str, Listener] = {}            # client -> its connected listener
        self.interest: dict[str, dict[str, None]] = {}  # client -> its subjects (insertion-ordered)
        # subject -> the clients listening here that hold it: a count is pushed to these alone. A client that left
        # is taken out (and put back when it returns): the events it misses meanwhile reach it by its resume, which
        # reads the kept events by `interest`. Clients gone for up to FORGET_AFTER (thousands, when workers restart
        # under new names) were walked on every count: most of what publishing it cost.
        self.watchers: dict[str, set[str]] = {}
        # client -> when its listener left (or it watched unheard), the one gone longest first: forgetting those
        # gone past FORGET_AFTER stops at the first that is not (every stream's start walked them all).
        self.gone: OrderedDict[str, float] = OrderedDict()
        # client -> when its subjects were dropped past MAX_SUBJECTS: its next resume is a reset, whatever it
        # watched since (a snapshot under way at the drop watches again, and made the client look known).
        self.must_reset: OrderedDict[str, float] = OrderedDict()
        # client -> an event from which (or before which) its resume is a reset, until a stream has told it `reset`:
        # the last before its subjects were first watched while it did not listen here (it may hold copies of
        # subjects this feed forgot, FORGET_AFTER after it left, and no longer tells it of), or the last before a
        # resume of it was refused (its `reset` may be lost with the connection, and a snapshot meanwhile make it
        # look known).
        self.unheard_from: dict[str, int] = {}
        self.forgotten_at = 0.0
        self.queue_limit = queue_limit
        self.cut_off = 0            # listeners cut off for reading too slowly, since start
        self.closing = False
        # Listeners with events to write, and the one task that writes them all (started with the first): an
        # event costs a listener an append, not a wake-up of its own task.
        self._dirty: dict[Listener, None] = {}
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task | None = None

    @property
    def listeners(self) -> int:
        return len(self.everything) + len(self.named)

    @property
    def last_id(self) -> str:
        return f"{self.epoch}-{self.n}"

    def close(self) -> None:
        """The gate stops: every stream ends now (not after the shutdown's grace period)."""
        self.closing = True
        for listener in (*self.everything, *self.named.values()):
            listener.ready.set()
        if self._flusher is not None:
            self._flusher.cancel()

    def _mark(self, listener: Listener) -> None:
        self._dirty[listener] = None
        if self._flusher is None or self._flusher.done():
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(self._flushing(), name="plangate-stream-flush")
        assert self._wake is not None
        self._wake.set()

    async def _flushing(self) -> None:
        """Writes every listener's queued events, GATHER after the first of them, one write a listener. A write
        never waits: one larger than the connection takes at once is written in turns, and a listener whose
        connection takes none of it (the client reads too slowly, its buffers are full) is cut off, as one whose
        queue overflows is; it reconnects and resumes."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while not self.closing:
            await self._wake.wait()
            await asyncio.sleep(GATHER)
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            # One stamp for the round: true of every listener's whole queue however much later it is joined.
            stamped = stamp(time.monotonic())
            for i, listener in enumerate(dirty, 1):
                if i % FLUSH_TURN == 0:
                    await asyncio.sleep(0)      # requests in between
                queue = listener.queue
                if not queue or listener.cut or listener.send is None or listener.room is None:
                    continue
                try:
                    if listener.room(sum(map(len, queue)) + STAMP_SIZE):
                        queue.append(stamped)       # the whole queue: everything published so far
                        data = b"".join(queue)
                        queue.clear()
                    else:
                        # More than the connection takes at once (a burst past its high-water mark, 64 KB): what
                        # fits now, the rest at the next turn, in order. Nothing fits: the client does not read.
                        frames, size = [], 0
                        while queue and listener.room(size + len(queue[0])):
                            size += len(queue[0])
                            frames.append(queue.popleft())
                        if not frames:
                            listener.cut_off()
                            continue
                        self._mark(listener)
                        data = b"".join(frames)
                    await listener.send(data)
                except Exception:  # noqa: BLE001 - gone, its response ended, or broken: that listener alone ends
                    listener.cut_off()
                listener.sent_at = loop.time()

    def _publish(self, kind: str, subject: str | None, data: dict) -> None:
        self.n += 1
        if not (self.everything or self.named or self.gone):
            # Nobody listens nor may come back to resume: nothing to encode. The kept events end here, so that an
            # id from before cannot resume across the events not kept (it gets `reset`).
            if self.kept:
                self.kept.clear()
            return
        frame = b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (self.epoch.encode(), self.n, kind.encode(),
                                                         orjson.dumps(data))
        self.kept.append((self.n, subject, frame))
        for listener in self.everything:
            listener.push(frame)
        if subject is None:
            for listener in self.named.values():
                listener.push(frame)
        else:
            clients = self.watchers.get(subject)
            if clients:
                for client in clients:
                    named = self.named.get(client)
                    if named is not None:
                        named.push(frame)

    def subject(self, subject: str) -> None:
        self._publish("subject", subject, {"subject": subject})

    def usage(self, subject: str, meter: str, window_start: int, used: int) -> None:
        self._publish("usage", subject, {"subject": subject, "meter": meter, "window_start": window_start,
                                         "used": used})

    def reset(self) -> None:
        self._publish("reset", None, {})

    def plan(self, version: str) -> None:
        self._publish("plan", None, {"version": version})

    def watch(self, client: str, subject: str) -> None:
        """`client` hears of `subject` from now on (its snapshot is read after this)."""
        now = time.monotonic()
        if client not in self.named:
            # Not listening here (another node's stream, or a script): its subjects are forgotten in time.
            self._gone(client, now)
            if len(self.gone) > MAX_GONE:
                self._forget_now(next(iter(self.gone)), now)
        if now - self.forgotten_at > 1.0:
            self._forget(now)
        held = self.interest.get(client)
        if held is None:
            held = self.interest[client] = {}
            if client not in self.named:
                self.unheard_from[client] = self.n
        if subject in held:
            return
        held[subject] = None
        if client in self.named:
            self.watchers.setdefault(subject, set()).add(client)
        if len(held) > MAX_SUBJECTS:
            # Dropping one subject quietly would leave the client deciding it from a copy nobody updates: drop
            # them all and cut its stream off, so that it resumes with `reset`.
            self._drop(client)
            self._must_reset(client, now)
            listener = self.named.get(client)
            if listener is not None:
                listener.cut_off()

    def _forget_now(self, client: str, now: float) -> None:
        """A gone client's subjects dropped before FORGET_AFTER: its next resume is a reset, whatever it watches
        meanwhile (as past MAX_SUBJECTS)."""
        del self.gone[client]
        self._drop(client)
        self._must_reset(client, now)

    def _gone(self, client: str, now: float) -> None:
        self.gone.pop(client, None)
        self.gone[client] = now         # the newest last

    def _must_reset(self, client: str, now: float) -> None:
        self.must_reset.pop(client, None)
        self.must_reset[client] = now   # the newest last

    def _drop(self, client: str) -> None:
        self._unwatched(client, self.interest.pop(client, {}))
        self.unheard_from.pop(client, None)

    def _unwatched(self, client: str, subjects) -> None:
        for subject in subjects:
            clients = self.watchers.get(subject)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self.watchers[subject]

    def since(self, last_event_id: str | None, client: str | None = None) -> list[bytes] | None:
        """The kept events after `last_event_id` that `client` hears ([] for a new client); None when the feed
        cannot resume from it (another epoch, or no longer kept)."""
        if not last_event_id:       # a client starting afresh holds nothing a reset would drop
            self.reset_said(client)
            return []
        if client in self.must_reset:      # cleared once its stream has said `reset` (reset_said)
            return None
        self._forget(time.monotonic())
        epoch, _, n = last_event_id.partition("-")
        if epoch != self.epoch or not _EVENT_NUMBER.fullmatch(n) or int(n) > self.n:
            return None
        if client is not None and client not in self.interest and client not in self.named:
            self.unheard_from[client] = self.n
            return None         # its subjects were dropped here (gone too long, or too many): it must refetch
        after = int(n)
        if client is not None and self.unheard_from.get(client, -1) >= after:
            return None
        if after == self.n:
            return []
        if not self.kept or self.kept[0][0] > after + 1:
            return None
        held = self.interest.get(client, {}) if client is not None else None
        return [frame for number, subject, frame in self.kept
                if number > after and (held is None or subject is None or subject in held)]

    def reset_said(self, client: str | None) -> None:
        """The client's stream has told it `reset`: what it watches from now on is heard again."""
        if client is not None:
            self.must_reset.pop(client, None)
            self.unheard_from.pop(client, None)

    def listen(self, client: str | None = None) -> Listener:
        """A listener; a named one replaces (and cuts off) an earlier connection of the same client."""
        if client is not None:
            # Back before the forgetting below: its resume (since(), a moment ago) found its subjects kept, and
            # they must stay (forgotten now, a resume at FORGET_AFTER's edge went on with nothing pushed to it).
            self.gone.pop(client, None)
        self._forget(time.monotonic())
        listener = Listener(self.queue_limit, client, self._mark)
        if client is None:
            self.everything.add(listener)
        else:
            earlier = self.named.get(client)
            if earlier is not None:
                earlier.cut_off()
            else:           # back (or new): what it holds is pushed to it again
                for subject in self.interest.get(client, ()):
                    self.watchers.setdefault(subject, set()).add(client)
            self.named[client] = listener
        return listener

    def leave(self, listener: Listener) -> None:
        listener.send = listener.room = None    # its response ends: nothing more is written to it
        self._dirty.pop(listener, None)
        if listener.client is None:
            self.everything.discard(listener)
        elif self.named.get(listener.client) is listener:
            del self.named[listener.client]
            self._unwatched(listener.client, self.interest.get(listener.client, ()))
            self._gone(listener.client, time.monotonic())
        if listener.cut:
            self.cut_off += 1

    def _forget(self, now: float) -> None:
        """The subjects of clients gone longer than FORGET_AFTER."""
        self.forgotten_at = now
        gone, must_reset = self.gone, self.must_reset
        while gone and now - next(iter(gone.values())) > FORGET_AFTER:
            client, _ = gone.popitem(last=False)
            self._drop(client)
        while must_reset and now - next(iter(must_reset.values())) > FORGET_AFTER:
            must_reset.popitem(last=False)
