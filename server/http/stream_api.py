"""Local evaluation's routes (issue 21): a subject's snapshot, and the stream of changes (Server-Sent Events).

A client that decides `check` in its own process fetches the plan (GET /v1/plan), a snapshot of each subject it asks
about, and listens to GET /v1/stream: every change that may alter a decision, each with an id, so that a reconnect
with Last-Event-ID resumes without losing one (or, when the gate no longer keeps that id, starts with `reset`: fetch
everything again). A write that leaves nothing waiting ends with a stamp (stream_format.stamp: this process's monotonic
clock when everything before it had been written; the hello and the X-Plangate-Clock header say the clock as the
stream starts), and a stamp alone is written every second when nothing else was (or every `heartbeat` seconds the
client asks for, from MIN_HEARTBEAT): a client whose last stamp is older than its staleness bound stops deciding
locally, so one whose bound is under a second asks for heartbeats that come within it. Each connection lasts at most
PLANGATE_STREAM_MAX_SECONDS (or `max_seconds`, if less), and a listener that falls PLANGATE_STREAM_QUEUE events
behind is cut off: slow clients never slow the gate.
"""
from __future__ import annotations

import asyncio
import random
import re
import time

import orjson
from aiohttp import web

from plangate.engine import UnknownStatus
from plangate.stream_format import CLOCK_HEADER, stamp

from . import _input as inp, _json
from ..gate import StoreUnavailable
from ..store._base import state_json
from .api import GATE

_CLIENT = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SECONDS = re.compile(r"(?=.*[1-9])[0-9]{1,9}(?:\.[0-9]{1,9})?")     # above 0, in digits

HEARTBEAT = 1.0         # seconds between heartbeats of an idle stream, and the most a client may ask for
MIN_HEARTBEAT = 0.25    # the least a client may ask for (one asking for less gets this): 4 writes a second
# What the flusher may add to a connection's write buffer besides an event batch: the chunk's framing.
_CHUNK_FRAMING = 32
# Bytes of a resume written at once: aiohttp waits in a write while the connection is paused, so a client that reads
# slowly has about this much, and its connection's high-water mark, held for it in the gate.
RESUME_PIECE = 16_384


def _local(gate) -> bool:
    """Whether a client may decide locally now: enforcement on, no kill switch, every count heard here, and a
    cache (with PLANGATE_CACHE_TTL=0 a copy could be kept no time at all: every check would fetch a snapshot)."""
    config = gate.config
    return config.enabled and not config.kill_switch and config.cache_ttl > 0 and gate.store.caches_usage


def _client(request: web.Request) -> str | None:
    """The listener's name a client chose (`client`): 8 to 64 letters, digits, '-' or '_'."""
    client = request.query.get("client")
    if client is not None and not _CLIENT.fullmatch(client):
        raise inp.BadRequest(400, "invalid_field", "'client' must be 8 to 64 letters, digits, '-' or '_'")
    return client


async def snapshot(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    subject = inp.subject({"subject": inp.in_path(request)})
    client = _client(request)
    if client is not None:      # before the read: every change after it reaches the client's stream
        gate.feed.watch(client, subject)
    try:
        table, state, used, event_id, now, keep_for = await gate.snapshot(subject)
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    except UnknownStatus as exc:
        gate.state_unknown(subject, exc)
        raise inp.BadRequest(503, "state_unknown", "the subject's stored state is not in this node's plan") from None
    return _json.response({
        "subject": subject, "plan_version": table.version, "event_id": event_id, "local": _local(gate),
        # A copy lives no longer than what is left of the gate's own cache entry: what the feed cannot tell (a
        # write to a SQLite file by another process, `plangate erase`) reaches a client as it reaches this gate.
        "max_age": keep_for,
        "now": now,     # the gate's clock: a client decides windows and timers by it, whatever its own says
        "state": orjson.loads(state_json(state) or "{}"),
        "used": [{"meter": meter, "window_start": start, "used": n} for (meter, start), n in used.items()],
    })


async def _write_in_pieces(response: web.StreamResponse, frames: list[bytes]) -> None:
    """The missed events of a resumed stream (up to the feed's 10,000 kept, megabytes), RESUME_PIECE bytes at a time.
    Joined and written at once, they were held whole in the gate (twice: the joined copy, the connection's buffer)
    for as long as a client that does not read stayed; PLANGATE_STREAM_MAX_LISTENERS such clients took gigabytes."""
    piece: list[bytes] = []
    size = 0
    for frame in frames:
        piece.append(frame)
        size += len(frame)
        if size >= RESUME_PIECE:
            await response.write(b"".join(piece))
            piece, size = [], 0
    if piece:
        await response.write(b"".join(piece))


def _seconds(request: web.Request, name: str) -> float | None:
    """A query parameter of seconds above 0, in digits with a decimal point if need be (float() also takes '1_0' as
    10, other scripts' digits, spaces and exponents), or None when not given."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if not _SECONDS.fullmatch(raw):
        raise inp.BadRequest(400, "invalid_field", f"'{name}' must be a number of seconds above 0, in digits (such "
                                                   "as 30 or 0.5)")
    return float(raw)


async def stream(request: web.Request) -> web.StreamResponse:
    gate = request.app[GATE]
    feed = gate.feed
    limit = gate.config.stream_max_seconds
    wanted = _seconds(request, "max_seconds")
    if wanted is not None:
        limit = min(limit, wanted)
    wanted = _seconds(request, "heartbeat")
    heartbeat = HEARTBEAT if wanted is None else min(max(wanted, MIN_HEARTBEAT), HEARTBEAT)
    client = _client(request)
    if feed.listeners >= gate.config.stream_max_listeners and (client is None or client not in feed.named):
        raise inp.BadRequest(503, "too_many_listeners", "this gate has as many streams open as it allows "
                             "(PLANGATE_STREAM_MAX_LISTENERS); decide remotely and try again later")
    # The clock the stream's stamps are in, read after the request came: a client bounds by it how old a stamp it
    # reads may be (HEAD asks for it alone).
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Request-Id": request.headers.get("X-Request-Id", "")[:64] or
                                           feed.last_id, CLOCK_HEADER: f"{feed.epoch} {time.monotonic():.6f}"})
    if request.method == "HEAD":        # the headers alone: no listener (a named one cut the client's live stream)
        await response.prepare(request)
        return response

    def room(size: int) -> bool:
        """Whether a write of `size` bytes stays under the connection's high-water mark: aiohttp then never
        waits in it (it waits only on a paused transport), so the flusher is never held by one client."""
        transport = request.transport
        return transport is not None and not transport.is_closing() and not request.protocol.writing_paused and \
            transport.get_write_buffer_size() + size + _CHUNK_FRAMING <= transport.get_write_buffer_limits()[1]

    last = request.headers.get("Last-Event-ID")
    resumed = feed.since(last, client)
    listener = feed.listen(client)     # with no await since `since`: nothing published from there on is missed
    started = time.monotonic()         # what the resume (or the reset) and the queue hold, between them
    deadline = started + limit
    try:
        # Every write of the stream ends with its time (and a heartbeat's grace): one the client does not take by
        # then (it does not read, and a long resume filled its buffers) ends the connection. It waited for as long as
        # the client stayed connected, past max_seconds, holding one of PLANGATE_STREAM_MAX_LISTENERS.
        async with asyncio.timeout(limit + HEARTBEAT):
            await response.prepare(request)
            # `stamp`: this process's monotonic clock as the stream starts, which the client's measures the
            # stream's stamps against (stream_format.stamp).
            hello = {"plan_version": gate.table.version, "local": _local(gate), "heartbeat": heartbeat,
                     "resumed": resumed is not None and bool(last), "max_amount": gate.config.max_amount,
                     "stamp": started}
            await response.write(b"id: %s\nevent: hello\ndata: %s\n\n" % (feed.last_id.encode(),
                                                                          orjson.dumps(hello)))
            if resumed is None:        # a gap: what the client holds may be stale
                await response.write(b"id: %s\nevent: reset\ndata: {}\n\n" % feed.last_id.encode())
                feed.reset_said(client)
            elif resumed:
                await _write_in_pieces(response, resumed)
            await response.write(stamp(started))
            listener.start(response.write, room)
            loop = asyncio.get_running_loop()
            # A heartbeat when nothing was written for a beat, each stream's beat of its own length: listeners that
            # connected together do not all write at the same moment every second.
            beat = heartbeat * random.uniform(0.8, 1.0)
            beaten = loop.time()
            while not listener.cut and not feed.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                due = max(beaten, listener.sent_at) + beat - loop.time()
                if due <= 0:
                    # Stamped when nothing waits to be written to it: every event published so far has been (aiohttp
                    # hands a write to the transport before it first awaits, so what the flusher wrote is ahead).
                    await response.write(b": heartbeat\n\n" if listener.queue else stamp(time.monotonic()))
                    beaten = loop.time()
                    continue
                try:
                    async with asyncio.timeout(min(due, left)):
                        await listener.ready.wait()
                except TimeoutError:
                    pass
        if listener.cut:
            # Its connection took none of a write, it fell behind, or was replaced: the events its connection holds
            # go nowhere, it resumes from the last one it read. Ended as a stream whose time is up, its connection
            # stayed open (kept alive, those bytes unsent) for as long as the client stayed without reading.
            _abort(request)
        else:
            # The body's last chunk waits for room as any write does (aiohttp writes it after this returns, with no
            # time limit): it has a heartbeat's grace.
            async with asyncio.timeout(HEARTBEAT):
                await response.write_eof()
    except TimeoutError:
        _abort(request)         # what it holds for the client goes nowhere: the client resumes
    except (ConnectionError, asyncio.CancelledError):     # gone (a write that waited ends in ConnectionError)
        pass
    finally:
        feed.leave(listener)
    return response


def _abort(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


ROUTES = (
    ("GET", "/v1/subjects/{subject}/snapshot", snapshot),
    ("GET", "/v1/stream", stream),
)
