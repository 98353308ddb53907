"""Local evaluation for GateClient (issue 21): `check` decided in the caller's process, by the gate's own engine,
from the compiled plan and a copy of each subject the caller asks about, kept current by the gate's stream.

    client = GateClient(url, token, local=True, staleness=1.0)

The copy is what the gate itself decides from: the plan (GET /v1/plan, compiled here; the same version, so the same
reasons and the same `rule`), the subject's state and the usage of its current windows (GET
/v1/subjects/{subject}/snapshot). GET /v1/stream tells of every change (a subject's state, a count by anyone, a plan
reload, a reset), with ids: a reconnect sends Last-Event-ID and misses nothing; when the gate cannot resume it says
`reset` and the copies are dropped. The gate sends a heartbeat every second (within half the staleness bound, when
that is shorter, down to 0.25 s: the client asks for it), and ends a write that leaves nothing waiting with a stamp
of when it wrote it; a copy is used only while the last stamp read is within `staleness` seconds old (see
_GateClock), however late it was read, else the client asks the gate (and counts it in `remote_fallbacks`). A copy
is also fetched again once it is older than the snapshot's `max_age` (the gate's cache TTL), as the gate's own cache
entry would be, and when its subject's window has rolled over. A decision the copy cannot make exactly (a subject on
an older plan version, credits deciding past a limit) is asked too, as are the checks while the gate says copies may
not decide (enforcement off or the kill switch on at the gate, its cache off; counted in `declined`), and those of
the SNAPSHOT_PAUSE after a snapshot the gate could not give (its store down; counted in `snapshot_fallbacks`).
Windows, timers and retry_after go by the gate's clock: each snapshot says the gate's time, and the client keeps its
monotonic clock's offset from it.
consume and usage always go to the gate, which alone counts; their answers update the copy at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from plangate.stream_format import CLOCK_HEADER, stamped

RECONNECT_PAUSE = (0.05, 2.0)   # the first pause before reconnecting, and the longest
ASK_LOCAL_AGAIN = 5.0           # seconds after the gate said `local: false` before a snapshot asks again
OFFSET_KEPT = 60.0              # seconds a measurement of the gate's clock stands against slower ones
PLAN_TIMEOUT = 10.0             # seconds one GET /v1/plan may take (one lost on a dead connection is asked again)
PLAN_PAUSE = (0.2, 2.0)         # the pause after a plan fetch the gate did not answer, and the longest
PLAN_TRIES = 20                 # answers whose plan cannot be used (another version) before the client gives up
SNAPSHOT_PAUSE = 1.0            # seconds after a snapshot the gate could not give (5xx, no answer) before another
PROBE_PAUSE = (1.0, 60.0)       # seconds between probes of the gate's clock (while it is known too loosely), the
                                # longest: doubled after each that narrowed nothing (the stream's own delay, which no
                                # probe removes)
DRIFT = 5e-4                    # how fast one clock may gain on another, seconds a second
_log = logging.getLogger("plangate.client")


class _GateClock:
    """Where one gate process's monotonic clock (its stream's stamps) stands against this process's. The offset,
    gate less here, is at most `high` when measured: an answer that says the gate's clock (the stream's hello, HEAD
    /v1/stream) read it no earlier than its request was sent. From then on it may grow by DRIFT a second (the two
    clocks' rates differ: NTP slews either by up to 500 ppm), so the bound widens as it ages. A stamp converted by
    the bound is never taken for younger than it is. One that contradicts the bound (read before it could have been
    written by it: this process slept while the gate's clock went on) breaks it: stamps vouch for nothing until
    the gate's clock is measured again."""

    __slots__ = ("epoch", "high", "measured_at")

    def __init__(self, epoch: str, said: float, sent: float):
        self.epoch, self.high, self.measured_at = epoch, said - sent, sent

    def bound(self, now: float) -> float:
        return self.high + DRIFT * (now - self.measured_at)

    def answered(self, said: float, sent: float) -> None:
        """The gate said its clock is `said` in answer to a request sent at `sent`: the bound, if it is tighter."""
        if said - sent < self.bound(sent):
            self.high, self.measured_at = said - sent, sent

    def written(self, at: float, read: float) -> float:
        """When the stamp `at`, read at `read`, was written at the latest, in this process's clock (-inf: the bound
        is broken)."""
        bound = self.bound(read)
        if at - read > bound:
            self.high = float("inf")
            return float("-inf")
        return at - bound


@dataclass
class _Copy:
    state: Any                                      # plangate.engine.SubjectState
    used: dict[tuple[str, int], int] = field(default_factory=dict)
    expires: float = float("inf")                   # monotonic time after which it is fetched again


def subject_path(base_url: str, subject: str, tail: str = "") -> URL:
    """base_url's /v1/subjects/{subject}{tail}, the subject one path segment whatever it holds: percent-encoded,
    and its dots too when it is "." or "..", which the API takes as subject ids but a URL drops as dot segments
    (/v1/subjects/../snapshot is /v1/snapshot); the URL is kept as encoded, not normalized again."""
    segment = quote(subject, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    base = URL(base_url)
    path, _, query = f"{base.raw_path.rstrip('/')}/v1/subjects/{segment}{tail}".partition("?")
    return base.with_path(path, encoded=True).with_query(query or None)


def _number(event_id: str | None) -> tuple[str, int]:
    epoch, _, n = (event_id or "").partition("-")
    return epoch, int(n) if n.isascii() and n.isdigit() and len(n) <= 18 else -1


class LocalDecisions:
    def __init__(self, base_url: str, auth: dict, staleness: float):
        self.base_url, self.auth, self.staleness = base_url, auth, staleness
        self.client = secrets.token_urlsafe(12)     # the stream tells this name of the subjects it fetched
        self.table: Any = None              # the compiled plan (a StateTable), once fetched and of the gate's version
        self.copies: dict[str, _Copy] = {}
        self.touched: dict[str, int] = {}   # subjects being fetched -> the number of the last change of state heard
        # Subjects being fetched -> the usage counted meanwhile: a count says its window's whole figure, so it is
        # merged into the snapshot (the larger figure is the newer) where a change of state makes it be refused.
        self.counted_meanwhile: dict[str, dict[tuple[str, int], int]] = {}
        self.epoch, self.n = "", -1         # the last event heard
        # Monotonic time as of which the stream has told everything: when the gate wrote the last stamp read (see
        # _follow), or, from a gate that stamps nothing, when the last frame was read.
        self.heard = float("-inf")
        self._gate_clock: _GateClock | None = None      # this stream's gate's clock (None: it stamps nothing)
        self._asked_at = 0.0                            # when this stream was asked for
        self._probed_at = float("-inf")
        self._probe_pause = PROBE_PAUSE[0]
        self._probe_task: asyncio.Task | None = None
        self.live = False                   # connected and said hello
        self.allowed = False                # the gate says copies may decide (enforcement on, every count heard)
        self.declined_at = float("-inf")    # monotonic time the gate last said copies may not decide
        # Monotonic time of the last snapshot the gate could not give (its store down, no answer): for
        # SNAPSHOT_PAUSE the checks go straight to the gate, which answers them (by its fail mode, if need be),
        # not each one first a snapshot that fails too.
        self.snapshot_failed_at = float("-inf")
        self.max_amount: float = 0          # the gate's largest amount: one it refuses (a 400) is the gate's to say
        # The gate's time is this process's monotonic clock plus `offset`: measured by the snapshots (the gate says
        # its time in each), at first this process's own wall clock. A step of the wall clock here (NTP) moves
        # nothing; one of the gate's reaches the client with its next snapshot.
        self.clock: Callable[[], float] = time.monotonic
        self.offset = time.time() - time.monotonic()
        self._offset_rtt, self._offset_at = float("inf"), float("-inf")     # the measurement's round trip, time
        self.local_checks = 0               # checks decided here
        self.remote_fallbacks = 0           # checks asked of the gate because the stream was down or stale (or
                                            # not up yet: no plan compiled, no hello)
        self.declined = 0                   # ... because the gate said copies may not decide (enforcement off, the
                                            # kill switch, its cache off, counts from other nodes it does not hear)
        self.snapshot_fallbacks = 0         # ... because the gate could not give a snapshot (or not in time), or
                                            # in the SNAPSHOT_PAUSE after one it could not
        # The plan version under which the gate sent a state this client cannot read whole (a newer gate's
        # field): every subject's is likely the same, so none is fetched again under it; the gate decides.
        self.unreadable_under: str | None = None
        self.reconnects = 0
        self.resets = 0
        self.refused: str | None = None     # why the gate refused the stream (a wrong token), until it takes it
        self._task: asyncio.Task | None = None
        self._plan_task: asyncio.Task | None = None
        self._session: Any = None           # the client's aiohttp.ClientSession, from start()
        self._fetching: dict[str, asyncio.Future] = {}      # subject -> its one fetch under way
        self._plan_wanted: str | None = None                # the plan version the gate last said it runs
        # Times the stream said to fetch the plan again: an answer to a fetch asked before the last of them (a
        # reload of the same version with other lines, another process) is not installed, it is asked again.
        self._plan_asked = 0
        # Older plan versions the gate keeps some tier's subscribers on (existing_subscribers): a state written
        # under one of them is the gate's to decide. A state of any other older version is decided by the plan
        # the gate runs, as the gate decides it.
        self.kept: frozenset[str] = frozenset()
        # Meters credits may pay past a limit at the gate: its table knows those of older versions too, which a
        # plan compiled here from the active document alone does not (None: a gate that does not say).
        self.credit_meters: frozenset[str] | None = None

    # --- life cycle --------------------------------------------------------------------------------

    def start(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        """The stream's task, unless it runs: on the session `session()` gives."""
        if self._task is None or self._task.done():
            self._session = session()
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        for task in (self._task, self._plan_task, self._probe_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._plan_task = self._probe_task = None
        self.live = False

    @property
    def fresh(self) -> bool:
        """The stream is up and has told everything as of less than `staleness` seconds ago (`heard`: when the gate
        wrote the last stamp read, or when the last frame was read from a gate that stamps nothing)."""
        return self.live and time.monotonic() - self.heard <= self.staleness

    async def ready(self, timeout: float = 5.0) -> bool:
        """Wait until copies may decide (the stream up, the plan compiled, the gate allowing it); False on
        timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fresh and self.table is not None and self.allowed:
                return True
            await asyncio.sleep(0.01)
        return False

    # --- deciding ------------------------------------------------------------------------------------

    def decide(self, subject: str, meter: str, amount: int):
        """The engine's Decision from the copy, or None: the gate must answer."""
        table = self.table
        moment = time.monotonic()
        if table is None or not self.live or moment - self.heard > self.staleness:     # not fresh, or no plan yet
            self.remote_fallbacks += 1
            return None
        if not self.allowed:
            self.declined += 1
            return None
        if amount.__class__ is not int or not 0 < amount <= self.max_amount:
            return None
        copy = self.copies.get(subject)
        if copy is None or copy.state.plan_version in self.kept or meter not in table.meters:
            return None
        now = self.clock() + self.offset
        used = copy.used.get((meter, table.window(copy.state, meter, now).start))
        if used is None or moment > copy.expires:
            del self.copies[subject]    # a new window, or a copy as old as the gate lets its cache be: fetch again
            return None
        decision = table.can_process(copy.state, meter, amount, used, now)
        if (decision.reason == "quota_exhausted" or decision.overage) and (
                table.has_credits(meter) if self.credit_meters is None else meter in self.credit_meters):
            return None         # the subject's credits decide: the gate holds them
        if decision.overage:
            from plangate.engine._entitlements import overage_cap
            if overage_cap(table.rule(copy.state, meter, now)) is not None:
                return None     # what the window has billed bounds a capped overage: the gate reads it
        self.local_checks += 1
        return decision

    async def fetch(self, subject: str, timeout: float) -> bool:
        """A copy of `subject` from the gate; False when none could be had (or a change raced it). One fetch of a
        subject at a time: checks that come meanwhile wait for it (two fetches shared the subject's race marker,
        and one could take a copy read before a change both should have seen)."""
        if not self.allowed:    # the gate said it decides (enforcement off, kill switch): no snapshot to ask for,
            if time.monotonic() - self.declined_at < ASK_LOCAL_AGAIN:
                return False
            self.declined_at = time.monotonic()     # but one a period, whatever becomes of it
        if not self.fresh:      # counted in remote_fallbacks
            return False
        if self.snapshots_paused:
            self.snapshot_fallbacks += 1
            return False
        pending = self._fetching.get(subject)
        if pending is None:
            pending = self._fetching[subject] = asyncio.ensure_future(self._fetch(subject, timeout))
            pending.add_done_callback(lambda done: self._fetching.pop(subject, None)
                                      if self._fetching.get(subject) is done else None)
        asked = time.monotonic()
        fetched = await asyncio.shield(pending)
        if not fetched and self.snapshot_failed_at >= asked:    # the gate could not give it
            self.snapshot_fallbacks += 1
        return fetched

    def pause_snapshots(self) -> None:
        """The gate could not give a snapshot (or not in time): none is asked for SNAPSHOT_PAUSE."""
        self.snapshot_failed_at = time.monotonic()

    @property
    def snapshots_paused(self) -> bool:
        return time.monotonic() - self.snapshot_failed_at < SNAPSHOT_PAUSE

    async def _fetch(self, subject: str, timeout: float) -> bool:
        table = self.table
        if not self.fresh or table is None or self.unreadable_under == table.version:
            return False
        self.touched[subject] = -1
        meanwhile: dict[tuple[str, int], int] = {}
        self.counted_meanwhile[subject] = meanwhile
        try:
            async with asyncio.timeout(timeout):
                url = subject_path(self.base_url, subject, f"/snapshot?client={self.client}")
                sent, asked = self.clock(), time.monotonic()
                async with self._session.get(url, headers=self.auth) as resp:
                    if resp.status != 200:
                        if resp.status >= 500 and _error_code(await resp.read()) != "state_unknown":
                            self.pause_snapshots()      # the gate's trouble, not one subject's
                        return False
                    body = json.loads(await resp.read())
                self._measure(body.get("now"), sent, self.clock())
        except (TimeoutError, aiohttp.ClientError, OSError):
            self.pause_snapshots()
            return False
        except ValueError:
            return False
        finally:
            raced = self.touched.pop(subject, -1)
            self.counted_meanwhile.pop(subject, None)
        epoch, n = _number(body["event_id"])
        table = self.table      # None while a new plan is fetched
        if epoch != self.epoch or raced > n or table is None or body["plan_version"] != table.version:
            return False        # an event after the snapshot was read, or another process: ask again next time
        state = _state(body["state"])
        if state is None:       # a state this client's engine cannot read whole (a newer gate's): the gate decides
            self.unreadable_under = table.version
            return False
        used = {(u["meter"], u["window_start"]): u["used"] for u in body["used"]}
        for key, counted in meanwhile.items():
            if counted > used.get(key, 0):
                used[key] = counted
        copy = _Copy(state, used, asked + body["max_age"])
        self._may_decide(body["local"])
        self.copies[subject] = copy
        return True

    def _may_decide(self, allowed: bool) -> None:
        """What the gate said of local decisions (a hello, a snapshot): while it says no, checks go to it without
        a snapshot first, and one asks again after ASK_LOCAL_AGAIN seconds (enforcement or the kill switch may
        have changed back; a hello at the stream's next connect says so too)."""
        self.allowed = bool(allowed)
        if not self.allowed:
            self.declined_at = time.monotonic()

    def _measure(self, gate_now: Any, sent: float, received: float) -> None:
        """The offset from the gate's time, read between sent and received: off by half that round trip at most.
        A measurement replaces a closer one (a shorter round trip) only once that is OFFSET_KEPT seconds old."""
        rtt = received - sent
        if isinstance(gate_now, (int, float)) and (rtt <= self._offset_rtt or
                                                   received - self._offset_at > OFFSET_KEPT):
            self.offset = gate_now - (sent + received) / 2
            self._offset_rtt, self._offset_at = rtt, received

    def counted(self, subject: str, meter: str, window_start: datetime | None, used: int | None) -> None:
        """The gate's answer to this client's own consume or usage: its count in the copy at once."""
        copy = self.copies.get(subject)
        if copy is not None and window_start is not None and used is not None:
            key = (meter, int(window_start.timestamp()))
            if used > copy.used.get(key, 0):
                copy.used[key] = used

    # --- the stream ----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        pause = RECONNECT_PAUSE[0]
        while True:
            try:
                await self._follow()
                pause = RECONNECT_PAUSE[0]
            except asyncio.CancelledError:
                raise
            except _Refused as exc:
                if self.refused is None:    # said once, until the gate takes the stream (every check asks it)
                    _log.warning("the gate at %s refused the stream of local decisions (%s): every check goes to "
                                 "the gate", self.base_url, exc)
                self.refused = str(exc)
            except Exception:   # a broken connection or frame: reconnect and resume from the last id
                pass
            self.live = False
            self.reconnects += 1
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_PAUSE[1])

    async def _follow(self) -> None:
        headers = dict(self.auth)
        if self.n >= 0:
            headers["Last-Event-ID"] = f"{self.epoch}-{self.n}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=max(self.staleness, 2.0) * 2)
        # Heartbeats well within the staleness bound: at the gate's default of one a second, a bound under it left
        # the copies unusable most of the time on a quiet stream (every check asked of the gate). A gate that does
        # not know the parameter ignores it.
        heartbeat = min(1.0, max(0.25, self.staleness / 2))
        url = f"{self.base_url}/v1/stream?client={self.client}&heartbeat={heartbeat:g}"
        self._gate_clock, self._asked_at = None, time.monotonic()
        if self._probe_task is not None:    # the last connection's: its answer is no use now
            self._probe_task.cancel()
        self._probed_at, self._probe_pause = float("-inf"), PROBE_PAUSE[0]
        async with self._session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status in (401, 403):
                raise _Refused(f"{resp.status} {_error_code(await resp.read())}")
            if resp.status != 200:
                raise ConnectionError(f"the stream answered {resp.status}")
            kind, data, event_id = "", b"", None
            async for line in resp.content:
                line = line.rstrip(b"\r\n")
                clock = self._gate_clock
                if clock is None:
                    self.heard = time.monotonic()
                if not line:
                    if kind:
                        self._event(kind, data, event_id)
                    kind, data, event_id = "", b"", None
                elif (at := stamped(line)) is not None:
                    # The gate wrote this when it had written every change before it: the copies are as fresh as
                    # it is, however long it took to be read.
                    if clock is not None:
                        read = time.monotonic()
                        written = clock.written(at, read)
                        self.heard = max(self.heard, written)
                        if read - written > self.staleness / 4:     # looser than it need be, or broken
                            self._probe(clock)
                elif line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif line.startswith(b"event: "):
                    kind = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]

    def _event(self, kind: str, data: bytes, event_id: str | None) -> None:
        body = json.loads(data) if data else {}
        epoch, n = _number(event_id)
        if kind == "hello":
            # Another process: nothing held can be trusted, its plan neither: at the same version its text may
            # differ in comments, layout or path, which the rules' lines and file follow.
            another = epoch != self.epoch and self.n >= 0
            # Not resumed though it asked to be (it sent Last-Event-ID): the gate's `reset` comes next, and the copies
            # go now, so that they go even when that frame is lost with the connection.
            if another or (self.n >= 0 and not body.get("resumed")):
                self._reset()
            self.epoch, self.n = epoch, n if not body.get("resumed") else self.n
            self._may_decide(body.get("local", False))
            at = body.get("stamp")      # the gate's clock, read after the stream was asked for
            if self._gate_clock is None and isinstance(at, (int, float)) and not isinstance(at, bool):
                self._gate_clock = _GateClock(epoch, at, self._asked_at)
                self.heard = float("-inf")      # the hello vouches for nothing: the resume after it, then a stamp
            if self.refused is not None:
                _log.info("the gate at %s takes the stream of local decisions again", self.base_url)
                self.refused = None
            self.max_amount = body.get("max_amount", float("inf"))     # a gate that does not say: no bound
            self._plan_wanted = body.get("plan_version")
            if another or self.table is None or self.table.version != body.get("plan_version"):
                self._refetch_plan()
            self.live = True
            return
        self.epoch, self.n = epoch, n
        subject = str(body.get("subject"))
        if kind == "usage":
            key, used = (body["meter"], body["window_start"]), body["used"]
            for held in (getattr(self.copies.get(subject), "used", None), self.counted_meanwhile.get(subject)):
                if held is not None and used > held.get(key, 0):
                    held[key] = used
            return
        if subject in self.touched:
            self.touched[subject] = n
        if kind == "subject":
            self.copies.pop(subject, None)
        elif kind == "reset":
            self._reset()
        elif kind == "plan":
            self._plan_wanted = body.get("version")
            self._reset()
            self._refetch_plan()

    def _probe(self, clock: _GateClock) -> None:
        """Ask the gate its clock (HEAD /v1/stream) to tighten the bound, once a pause: a stream asked for slowly (a
        busy gate, a connection pool full of checks) bounds it loosely, and each of its stamps looked that much older
        for the connection's whole life."""
        now = time.monotonic()
        if now - self._probed_at < self._probe_pause or (self._probe_task is not None and not self._probe_task.done()):
            return
        self._probed_at = now
        self._probe_task = asyncio.get_running_loop().create_task(self._ask_clock(clock))

    async def _ask_clock(self, clock: _GateClock) -> None:
        before = clock.bound(time.monotonic())
        sent = time.monotonic()
        try:
            async with asyncio.timeout(PLAN_TIMEOUT):
                async with self._session.head(f"{self.base_url}/v1/stream?client={self.client}",
                                              headers=self.auth) as resp:
                    epoch, _, said = resp.headers.get(CLOCK_HEADER, "").partition(" ")
            if epoch == clock.epoch:    # the same process (another node behind the same address has its own)
                clock.answered(float(said), sent)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            pass
        narrowed = clock.bound(time.monotonic()) < before - self.staleness / 8
        self._probe_pause = PROBE_PAUSE[0] if narrowed else min(self._probe_pause * 2, PROBE_PAUSE[1])

    def _reset(self) -> None:
        self.resets += 1
        self.copies.clear()
        for subject in self.touched:
            self.touched[subject] = 1 << 62     # a fetch under way read before the reset

    def _refetch_plan(self) -> None:
        self.table = None
        self._plan_asked += 1
        if self._plan_task is None or self._plan_task.done():
            self._plan_task = asyncio.get_running_loop().create_task(self._fetch_plan())

    async def _fetch_plan(self) -> None:
        from plangate.engine import compile_plan
        from plangate.policy import check_text

        # No answer (a timeout, a connection error, a status but 200) is asked again for as long as it lasts, less
        # often as it goes on: given up, the client would have no plan, and send every check to the gate, until its
        # stream next says hello (minutes away while it stays up). An answer whose plan is not the one wanted (a
        # reload under way) is asked again PLAN_TRIES times.
        tries, pause = 0, PLAN_PAUSE[0]
        while tries < PLAN_TRIES:
            asked = self._plan_asked
            try:
                async with asyncio.timeout(PLAN_TIMEOUT):
                    async with self._session.get(f"{self.base_url}/v1/plan", headers=self.auth) as resp:
                        body = json.loads(await resp.read()) if resp.status == 200 else None
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
                body = None
            if not isinstance(body, dict):
                await asyncio.sleep(pause)
                pause = min(pause * 2, PLAN_PAUSE[1])
                continue
            tries, pause = tries + 1, PLAN_PAUSE[0]
            document = body.get("document")
            if document:
                checked = check_text(document, body["file"])
                if checked.plan is not None:
                    table = compile_plan(checked.plan)
                    # The plan the gate runs now: one read before a reload this client has heard of since is
                    # not installed (every snapshot would be refused for its version), it is read again.
                    if table.version == body["version"] and self._plan_wanted in (None, table.version) and \
                            asked == self._plan_asked:
                        self.copies.clear()
                        self.kept = frozenset(body.get("kept_versions") or ())
                        said = body.get("credit_meters")
                        self.credit_meters = frozenset(said) if isinstance(said, list) else None
                        self.table = table
                        return
            await asyncio.sleep(PLAN_PAUSE[0])


class _Refused(Exception):
    """The gate refused the stream: the token is not one it takes (401), or not for this (403)."""


def _error_code(body: bytes) -> str | None:
    """The `error` of a refusal's JSON body, if it has one."""
    try:
        found = json.loads(body)
    except ValueError:
        return None
    return found.get("error") if isinstance(found, dict) else None


def _state(data: dict):
    """A snapshot's state (the store's JSON of it) as the engine's SubjectState; None when it has a field this
    client's engine does not know (a gate newer than the client): deciding without it could differ from the gate."""
    from plangate.engine import SubjectState, Subscription

    subscriptions = data.get("subscriptions") or ()
    if not data.keys() <= {f.name for f in fields(SubjectState)} or \
            any(not d.keys() <= set(Subscription.__slots__) for d in subscriptions):
        return None
    data = dict(data)
    data["subscriptions"] = tuple(Subscription.from_dict(d) for d in subscriptions)
    for key in ("addons", "traits"):
        data[key] = tuple((str(name), int(value)) for name, value in data.get(key) or ())
    try:
        return SubjectState(**data)
    except TypeError:           # a field it needs is missing (a gate older than the client): the gate decides
        return None


@functools.lru_cache(maxsize=1024)     # a window's bounds repeat on every answer in it: convert them once
def utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
