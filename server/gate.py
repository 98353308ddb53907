"""The gate: decisions against stored state, atomic counting, and the one door for state changes.

Subject state (and the usage of its current windows) is cached; every local write updates or
invalidates the entry, so the cache never makes a decision wrong after a local write. When the
store fails or is too slow, the answer follows the fail mode.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cachetools import TTLCache

from plangate.engine import (AdminAction, Decision, Outcome, Reason, StateTable, SubjectState, Trigger, UnknownStatus,
                             advance, override)
from plangate.policy import FailMode

from . import entitlements
from .changes import ChangeFeed
from .config import Config
from .logs import Throttle, log, log_each
from .metrics import Metrics
from .plan_swap import PlanSwap
from .store import AuditEntry, Change, Counted, IdempotencyConflict, Store, StoredSubject, StoreError, UsageCeiling

# A count or a transition decided on a version another writer then changed is decided again; a burst of
# webhooks on one subject may need several rounds (seen with 5: a consume gave up under checkout bursts).
MAX_CONFLICT_RETRIES = 20
# A store that still reads but cannot write (read-only file, full disk) answers /readyz's read: readiness also
# says "not ready" for this long after a write failed, unless a write has succeeded since.
WRITE_FAILURE_MEMORY = 10.0
# Due timers committed a transaction at a time in chunks of this many subjects: SQLite commits them on the event
# loop, which serves no request meanwhile, so a chunk holds the loop no longer than a full group commit of
# webhook events does.
SWEEP_CHUNK = 250
SWEEP_TIMEOUT = 30.0        # seconds one transaction of a sweep may take
# The cache reads a busy subject again once it is this share of PLANGATE_CACHE_TTL old, REFRESH_BATCH subjects a
# store call (SQLite reads on the loop: 50 hold it about 0.6 ms), with a TTL of REFRESH_MIN_TTL or more.
REFRESH_AT = 0.75
REFRESH_BATCH = 50
REFRESH_MIN_TTL = 1.0
# A busy entry kept unread (_renew_unchanged) is read again after this many renewals all the same: an invalidation
# this gate missed (a write that committed while its request was cancelled) heals within about ten TTLs.
RENEW_MAX = 8
_UNREADABLE = object()      # a subject whose row a refresh could not read
_EXHAUSTED = Reason.QUOTA_EXHAUSTED
WRITES = frozenset({"count", "save", "commit", "sweep", "record_event", "cleanup", "conceal"})
TRAITS_TRIGGER = "admin:traits"     # traits set: audited as an admin's, yet no decision about the status


class StoreUnavailable(Exception):
    """The store failed or exceeded its time budget (already counted and logged)."""


class NotInPlan(ValueError):
    """An admin's transition names a status or action the plan it is decided under does not have (a reload
    swapped the plan after the request was read): refused, nothing changed."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


MAX_TRAITS = 32     # the names a subject holds: a request sets some of them, and the others stay


class TooManyTraits(ValueError):
    """Traits that would give a subject more than MAX_TRAITS names: refused, nothing changed."""


class StateUnknown(StoreUnavailable):
    """A stored subject's status is neither in the plan this node runs nor mapped by it (another node may run a
    newer plan): answered like a store failure, never decided (already counted and logged)."""


@dataclass
class _Entry:
    stored: StoredSubject
    used: dict[tuple[str, int], int] = field(default_factory=dict)
    grants: list | None = None      # its credit grants, when the cache may keep them (one writer)
    asked: bool = False             # a request read it since it was loaded: worth reading again before it expires
    seen: int | None = None         # store.outside_writes() before it was read: unchanged, it is still as read
    renewed: int = 0                # times kept another TTL unread since it was read
    kept_at: float = 0.0            # time.monotonic() when it was (last) kept: known current then


@dataclass(frozen=True)
class Counting:
    decision: Decision
    counted: bool
    duplicate: bool = False


class Gate:
    def __init__(self, config: Config, table: StateTable, store: Store, metrics: Metrics,
                 clock=time.time):
        self.config = config
        self.table = table
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._cache: TTLCache = TTLCache(maxsize=config.cache_size, ttl=config.cache_ttl) \
            if config.cache_ttl > 0 else TTLCache(maxsize=1, ttl=1e-9)
        self._cache_hits, self._cache_misses = metrics.cache.labels("hit"), metrics.cache.labels("miss")
        # (monotonic time from which to read it again, subject, entry) in load order: refresh_ahead's queue.
        self._due: deque[tuple[float, str, _Entry]] = deque()
        self._throttle = Throttle()
        # What clients deciding locally hear (GET /v1/stream): every change that may alter a decision.
        self.feed = ChangeFeed(queue_limit=config.stream_queue)
        self._write_failure: tuple[float, str] | None = None    # (monotonic time, error) of the last failed write
        # Called (no argument) when a stored state is not in the plan: look again.
        self.on_unknown_state: Callable[[], None] | None = None
        # State changes are decided and committed under one plan; a deploy's check and swap go between them.
        self.plan_swap = PlanSwap()

    def use(self, table: StateTable) -> None:
        """Decide with another table from now on. One assignment: a request reads the table once and decides
        wholly under it, so none is decided by a half-swapped plan. Cached subjects are read again."""
        self.table = table
        self.feed.plan(table.version)
        self.invalidate_all()

    def state_unknown(self, subject: str, exc: UnknownStatus) -> StateUnknown:
        """Counts, logs (throttled) and reports a stored state this node's plan does not know."""
        self.metrics.unknown_state.inc()
        if self._throttle.ready("unknown_state"):
            log(logging.ERROR, "unknown_state", subject=subject, error=str(exc), plan_version=self.table.version)
        if self.on_unknown_state is not None:
            self.on_unknown_state()
        return StateUnknown("the subject's stored state is not in this node's plan")

    # --- reading ------------------------------------------------------------------------------

    async def timed(self, operation: str, coro, *, shield: bool = False, timeout: float | None = None,
                    invalidates: Callable[[Any], Iterable[str]] | None = None):
        """Run a store call within the time budget; StoreUnavailable on failure or timeout. Writes are
        shielded so that a slow commit finishes (and stays consistent) even when the caller gives up. A read
        runs in the caller's task under asyncio.timeout: a task and wait_for of its own per store call were
        a fifth of a signed webhook's CPU on the event loop. `invalidates`: see untimed."""
        budget = timeout or self.config.store_timeout
        try:
            async with asyncio.timeout(budget):
                return await self.untimed(operation, coro, shield=shield, invalidates=invalidates)
        except TimeoutError as exc:
            raise self.store_failed(operation, exc, f"no answer within {budget}s") from exc

    async def counted(self, operation: str, pending, *, invalidates: Callable[[Any], Iterable[str]] | None = None):
        """A write (a count or spend, a state change, a grant) within the time budget, answered as it went. When
        the budget runs out, the store withdraws it if it has not handed it to the database yet (StoreUnavailable:
        it is never written; a count's fail mode answers); one handed over is awaited to its end, however long the
        database takes (its own timeouts bound that), so that no answer says 'not written' of what the store
        wrote. `invalidates`: see untimed (a caller cancelled meanwhile does not drop what its write changed)."""
        task = asyncio.ensure_future(pending)
        budget = self.config.store_timeout
        try:
            async with asyncio.timeout(budget):
                return await self.untimed(operation, task, shield=True, invalidates=invalidates)
        except TimeoutError as exc:
            if not task.done() and self.store.withdraw(task):
                raise self.store_failed(operation, exc, f"no answer within {budget}s") from exc
        return await self.untimed(operation, task, shield=True, invalidates=invalidates)

    async def untimed(self, operation: str, coro, *, shield: bool = False,
                      invalidates: Callable[[Any], Iterable[str]] | None = None):
        """timed() without a timer of its own, for callers whose budget covers several store calls (one timer
        for all of them, not one each). invalidates(result): the subjects a shielded write changed, dropped from
        the cache when it lands after its caller stopped waiting (which answered without them)."""
        try:
            if shield:
                write = asyncio.ensure_future(coro)
                try:
                    result = await asyncio.shield(write)
                except BaseException:
                    if invalidates is not None:
                        write.add_done_callback(lambda done: self._landed_late(done, invalidates))
                    raise
            else:
                result = await coro
        except (StoreError, OSError) as exc:
            raise self.store_failed(operation, exc, str(exc)) from exc
        if operation in WRITES:
            self._write_failure = None
        return result

    def _landed_late(self, done: asyncio.Future, invalidates: Callable[[Any], Iterable[str]]) -> None:
        if not done.cancelled() and done.exception() is None:
            for subject in invalidates(done.result()):
                self.invalidate(subject)

    def store_failed(self, operation: str, exc: BaseException, error: str) -> StoreUnavailable:
        """Counts, logs (throttled) and remembers a failed store call; the StoreUnavailable to raise."""
        self.metrics.store_errors.labels(operation).inc()
        if self._throttle.ready(operation):
            log(logging.ERROR, "store_error", operation=operation, error=error)
        if operation in WRITES and not isinstance(exc, asyncio.TimeoutError):   # slow is not broken
            self._write_failure = (time.monotonic(), str(exc))
        return StoreUnavailable(operation)

    def write_failure(self) -> str | None:
        """The error of the last write, while it failed recently and no write has succeeded since."""
        failed = self._write_failure
        if failed is not None and time.monotonic() - failed[0] < WRITE_FAILURE_MEMORY:
            return failed[1]
        return None

    # The cache's two steps are plain calls, awaited only when the store must answer: a check from a warm
    # cache runs no coroutine of its own.

    def _cached(self, subject: str) -> _Entry | None:
        try:
            entry = self._cache[subject]        # one call into cachetools; get() makes four
        except KeyError:
            return None
        self._cache_hits.inc()
        entry.asked = True
        return entry

    async def _load_entry(self, subject: str, now: float) -> _Entry:
        self._cache_misses.inc()
        seen = self.store.outside_writes()
        stored = await self.timed("load", self.store.load(subject))
        if stored is None:
            stored = StoredSubject(self.table.initial_state(subject, now), 0)
        entry = _Entry(stored, seen=seen)
        self._keep(subject, entry)
        return entry

    def _keep(self, subject: str, entry: _Entry) -> None:
        entry.kept_at = kept_at = time.monotonic()
        self._cache[subject] = entry
        if self.config.cache_ttl >= REFRESH_MIN_TTL:
            due = self._due
            due.append((kept_at + self.config.cache_ttl * REFRESH_AT, subject, entry))
            if len(due) > 2 * self.config.cache_size:     # entries dropped or replaced since: let them go
                self._due = deque(item for item in due if self._cache.get(item[1]) is item[2])

    async def refresh_ahead(self) -> None:
        """Runs until cancelled: entries that requests asked for since they were read, and that are REFRESH_AT of
        the TTL old, are read again, REFRESH_BATCH subjects a store call, and replaced by their fresh reading. A
        busy subject is then never a miss on the request path (two store reads inside a request), and still
        never older than the TTL. An entry invalidated or replaced meanwhile is left alone: the reading may
        predate the change. Nothing to do with a TTL under REFRESH_MIN_TTL (tests, the cache off)."""
        ttl = self.config.cache_ttl
        if ttl < REFRESH_MIN_TTL:
            return
        while True:
            await asyncio.sleep(min(ttl / 8, 0.5))
            try:
                while await self.refresh_due():
                    await asyncio.sleep(0)      # requests in between
            except Exception as exc:  # noqa: BLE001 - a reading that fails leaves its entries to expire; go on
                if self._throttle.ready("refresh"):
                    log(logging.ERROR, "cache_refresh_failed", error=f"{type(exc).__name__}: {exc}")

    async def refresh_due(self) -> int:
        """One store call's worth of due entries read again (or kept unread, _renew_unchanged); how many were
        taken (0: none left, or the store failed: the round ends, the entries expire as they would have)."""
        due, picked = self._due, list[tuple[str, _Entry, dict[tuple[str, int], int]]]()
        now_m, now = time.monotonic(), self.clock()
        table = self.table
        while due and due[0][0] <= now_m and len(picked) < REFRESH_BATCH:
            _, subject, entry = due.popleft()
            if entry.asked and self._cache.get(subject) is entry:
                # Only the current window of each meter goes on: past windows are never asked again.
                state = entry.stored.state
                current = {(meter, start): n for (meter, start), n in entry.used.items()
                           if meter in table.meters and table.window(state, meter, now).start == start}
                picked.append((subject, entry, current))
        if not picked:
            return 0
        taken = len(picked)
        seen = self.store.outside_writes()
        if seen is not None:
            picked = self._renew_unchanged(picked, seen, now)
            if not picked:
                return taken
        usage_kept = self.store.caches_usage
        windows = [(subject, *w) for subject, _, current in picked for w in current] if usage_kept else []
        try:
            rows, usage = await self.timed("refresh", self.store.load_many([s for s, _, _ in picked], windows))
        except StoreUnavailable:
            return 0
        except Exception:       # a row this gate cannot read: each subject alone, so that it fails alone
            try:
                rows, usage = await self._read_alone(picked, usage_kept)
            except StoreUnavailable:
                return 0
        fresh = 0
        for (subject, old, current), stored in zip(picked, rows):
            if stored is _UNREADABLE:
                self._cache.pop(subject, None)      # its next request reads it, and fails, alone
                continue
            if self._cache.get(subject) is not old:
                continue            # changed (or dropped) while the store read it
            if stored is None:
                stored = StoredSubject(self.table.initial_state(subject, now), 0)
            used = current
            if usage_kept:
                # The store's figure (another writer may have lowered it), unless this gate counted in the window
                # while the store read it: then the larger, which is the newer.
                used = {w: usage.get((subject, *w), 0) if old.used.get(w) == n else
                        max(old.used.get(w, 0), usage.get((subject, *w), 0)) for w, n in current.items()}
            self._keep(subject, _Entry(stored, used, seen=seen))
            # What the reading found that this gate had not written (another process's write to a SQLite file,
            # `plangate erase`): clients deciding locally hear of it now, as the gate does.
            if stored.version != old.stored.version:
                self.feed.subject(subject)
            else:
                for (meter, start), n in used.items():
                    if n != current.get((meter, start)):
                        self.feed.usage(subject, meter, start, n)
            fresh += 1
        self.metrics.cache_refreshes.inc(fresh)
        return taken

    def _renew_unchanged(self, picked: list, seen: int, now: float) -> list:
        """Of refresh_due's picks, those to read again: an entry read since the last write the store saw from
        outside this process (`seen`: store.outside_writes() now) is still as read, but for this gate's own
        writes, which it holds already; it is kept another TTL, unread (a SQLite gate's busy subjects cost no
        reading while nothing else writes the file). Its past windows' usage goes, as a reading's would; a
        subject not stored gets its initial state as of now, as a reading that finds no row gives it."""
        left = []
        for subject, entry, current in picked:
            if entry.seen != seen or entry.renewed >= RENEW_MAX:
                left.append((subject, entry, current))      # something else wrote since, or kept long: read again
            elif entry.stored.version:
                entry.used, entry.asked = current, False
                entry.renewed += 1
                self._keep(subject, entry)
            else:
                self._keep(subject, _Entry(StoredSubject(self.table.initial_state(subject, now), 0), current,
                                           seen=seen, renewed=entry.renewed + 1))
        self.metrics.cache_renewals.inc(len(picked) - len(left))
        return left

    async def _read_alone(self, picked: list, usage_kept: bool) -> tuple[list, dict]:
        """refresh_due's reading, a subject a store call: _UNREADABLE for a subject whose row fails to read
        (logged, throttled); StoreUnavailable when the store fails."""
        rows: list = []
        usage: dict = {}
        for subject, _, current in picked:
            try:
                found, used = await self.timed("refresh", self.store.load_many(
                    [subject], [(subject, *w) for w in current] if usage_kept else []))
            except StoreUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - this subject's alone
                if self._throttle.ready("refresh_row"):
                    log(logging.ERROR, "cache_refresh_failed", subject=subject, error=f"{type(exc).__name__}: {exc}")
                rows.append(_UNREADABLE)
                continue
            rows.append(found[0])
            usage.update(used)
        return rows, usage

    def _cached_used(self, entry: _Entry, window: tuple[str, int]) -> int | None:
        """A window's usage (meter, start) if the cache may answer it: every count of the store is local, or
        the store pushes every count to this node (store.caches_usage says which, at this moment)."""
        return entry.used.get(window) if self.store.caches_usage else None

    async def _used(self, entry: _Entry, window: tuple[str, int]) -> int:
        used = self._cached_used(entry, window)
        return used if used is not None else await self._read_used(entry, window)

    async def _read_used(self, entry: _Entry, window: tuple[str, int]) -> int:
        """A window's usage from the store, kept in the entry (never below what this gate counted)."""
        found = await self.timed("usage", self.store.used(entry.stored.state.subject, [window]))
        used = entry.used[window] = max(entry.used.get(window, 0), found[window])
        return used

    def _note_used(self, subject: str, entry: _Entry, window: tuple[str, int], used: int) -> None:
        """A window's usage after this gate's count: in the entry the count decided with, and in the one the
        cache holds now if that is another (read again while the count was in flight: its reading may predate
        the commit)."""
        entry.used[window] = max(entry.used.get(window, 0), used)
        try:
            current = self._cache[subject]
        except KeyError:
            return
        if current is not entry and current.stored.version == entry.stored.version:
            current.used[window] = max(current.used.get(window, 0), used)
            current.grants = None       # a spend may have taken some, after the reading

    def invalidate(self, subject: str) -> None:
        self._cache.pop(subject, None)
        self.feed.subject(subject)

    def usage_counted(self, subject: str, meter: str, window_start: int, used: int) -> None:
        """A count some node committed, pushed by the store: a cached window's usage is kept current (it only
        grows within a window, so the larger value is the newer one)."""
        self.feed.usage(subject, meter, window_start, used)
        try:
            entry = self._cache[subject]        # one call into cachetools; get() makes four
        except KeyError:
            return
        if used > entry.used.get((meter, window_start), 0):
            entry.used[(meter, window_start)] = used

    def invalidate_all(self) -> None:
        self._cache.clear()
        self._due.clear()
        self.feed.reset()

    # --- decisions ----------------------------------------------------------------------------

    def _preempt(self, subject: str, meter: str | None) -> Decision | None:
        """Decisions that need no state: the kill switch (it wins, enforcement on or off), or enforcement off."""
        if self.config.kill_switch:
            return override(Reason.KILL_SWITCH, False, None, None, meter, "SUBSCRIPTION_KILL_SWITCH=true")
        if not self.config.enabled:
            return override(Reason.DISABLED, True, None, None, meter, "SUBSCRIPTION_ENABLED=false")
        return None

    def _fail(self, subject: str, meter: str) -> Decision:
        entry = self._cache.get(subject)      # not _cached: a fail-mode answer is no cache hit
        state = entry.stored.state if entry else None
        mode = self.config.fail_mode
        if mode == "plan":
            mode = self.table.fail_mode(state, meter).value
        why = "PLANGATE_FAIL_MODE" if self.config.fail_mode != "plan" else "the plan's fail_mode"
        self.metrics.fail_mode.labels(mode).inc()
        if mode == FailMode.OPEN.value:
            return override(Reason.FAIL_OPEN, True, state and state.status, state and state.tier, meter,
                            f"store unavailable; {why} is open")
        return override(Reason.FAIL_CLOSED, False, state and state.status, state and state.tier, meter,
                        f"store unavailable; {why} is closed")

    async def check(self, subject: str, meter: str, amount: int) -> Decision:
        decision = self._preempt(subject, meter)
        if decision is None:
            now = self.clock()
            try:
                entry = self._cached(subject) or await self._load_entry(subject, now)
                table = self.table      # one plan decides the whole request, whatever a reload swaps meanwhile
                state = entry.stored.state
                window = (meter, table.window(state, meter, now).start)
                used = self._cached_used(entry, window)      # _used without its coroutine, when the cache has it
                if used is None:
                    used = await self._read_used(entry, window)
                decision = table.can_process(state, meter, amount, used, now)
                if decision.reason is _EXHAUSTED or decision.overage:
                    decision = await self._past_the_limit(entry, table, meter, amount, used, window, decision, now)
            except StoreUnavailable:
                decision = self._fail(subject, meter)
            except UnknownStatus as exc:
                self.state_unknown(subject, exc)
                decision = self._fail(subject, meter)
        self._observe("check", subject, decision)
        return decision

    async def snapshot(self, subject: str) \
            -> tuple[StateTable, SubjectState, dict[tuple[str, int], int], str, float, float]:
        """What a client deciding locally needs of a subject: the table that decides it, its state, the usage of
        every meter's current window, the feed's last event id before they were read (the client applies
        every later event), this gate's time of the reading (the client decides by the gate's clock, not
        its own), and how long the state may be kept: what is left of its cache entry's TTL (a write the feed
        cannot tell reaches the client when it reaches this gate, not a TTL later). StoreUnavailable,
        UnknownStatus."""
        event_id = self.feed.last_id
        now = self.clock()
        entry = self._cached(subject) or await self._load_entry(subject, now)
        table = self.table
        state = entry.stored.state
        windows = [(meter, table.window(state, meter, now).start) for meter in table.meters]
        found = await self.timed("usage", self.store.used(subject, windows))
        used = {w: max(entry.used.get(w, 0), found.get(w, 0)) for w in windows}
        entry.used.update(used)     # this gate's own checks go by the reading the copy has, not a later one
        keep_for = max(0.0, self.config.cache_ttl - (time.monotonic() - entry.kept_at))
        return table, state, used, event_id, now, keep_for

    async def _past_the_limit(self, entry: _Entry, table: StateTable, meter: str, amount: int, used: int,
                              window: tuple[str, int], decision: Decision, now: float) -> Decision:
        """A check's decision past the limit, by what a consume would be decided by: the subject's credits, and
        the overage its window has billed (a capped overage: the window may have billed more than its usage past
        the limit says, when the limit rose within it), both read as the consume reads them."""
        state = entry.stored.state
        balance = 0
        if table.has_credits(meter):
            balance = entitlements.balance_of(table, state, meter, now, await self._grants(entry, now))
            decision = table.can_process(state, meter, amount, used, now, balance)
        if decision.overage and entitlements.overage_cap(table.rule(state, meter, now)) is not None:
            billed = await self.timed("usage", self.store.billed(state.subject, window))
            decision = table.can_process(state, meter, amount, used, now, balance, billed)
        return decision

    async def _grants(self, entry: _Entry, now: float) -> list:
        """The subject's grants: from the cache when this gate is the only writer, else the store."""
        if entry.grants is not None and self.store.caches_grants:
            return entry.grants
        grants = await self.timed("credits", self.store.grants(entry.stored.state.subject, now))
        if self.store.caches_grants:
            entry.grants = grants
        return grants

    async def feature(self, subject: str, feature: str) -> Decision:
        """Is the feature granted to the subject now? UnknownFeature (a ValueError) for one the plan lacks."""
        decision = self._preempt(subject, None)
        if decision is None:
            now = self.clock()
            try:
                entry = self._cached(subject) or await self._load_entry(subject, now)
                decision = self.table.feature(entry.stored.state, feature, now)
            except StoreUnavailable:
                decision = self._fail_feature(subject)
            except UnknownStatus as exc:
                self.state_unknown(subject, exc)
                decision = self._fail_feature(subject)
        decision.feature = feature
        self._observe("check", subject, decision)
        return decision

    def _fail_feature(self, subject: str) -> Decision:
        """A feature whose subject cannot be read: PLANGATE_FAIL_MODE=open lets it through; otherwise closed (a
        feature has no meter, so no fail mode of the plan's)."""
        open_ = self.config.fail_mode == FailMode.OPEN.value
        self.metrics.fail_mode.labels("open" if open_ else "closed").inc()
        return override(Reason.FAIL_OPEN if open_ else Reason.FAIL_CLOSED, open_, None, None, None,
                        f"store unavailable; PLANGATE_FAIL_MODE is {self.config.fail_mode}")

    async def grant(self, subject: str, meter: str, amount: int, *, actor: str, reason: str, key: str | None,
                    expires_at: float | None, priority: int | None):
        """An admin grants credits (audited: the grant keeps who and why). (the grant, made now: False when the
        key's grant was made before, which is the grant answered then). IdempotencyConflict when the key's grant
        was of other credits (meter, amount, expiry or priority)."""
        grant = entitlements.admin_grant(meter, amount, self.clock(), reason=reason, key=key, expires_at=expires_at,
                                         priority=priority)
        # A repeat is answered from what its key made, looked up first: its expiry may have passed since.
        stored = await self.timed("credits", self.store.grant(subject, grant.id)) if key is not None else None
        made = False
        if stored is None:
            if expires_at is not None and expires_at <= grant.created:
                raise entitlements.PastExpiry("'expires_at' must be in the future")
            made = bool(await self.counted("save", self.store.add_grants(subject, (grant,), actor),
                                           invalidates=lambda _: (subject,)))
            if not made and key is not None:        # a concurrent repeat made it first
                stored = await self.timed("credits", self.store.grant(subject, grant.id))
        if stored is not None:
            if entitlements.grant_terms(stored) != entitlements.grant_terms(grant):
                raise IdempotencyConflict(
                    f"idempotency_key {key!r} made another grant before ({stored.amount} of {stored.meter}); a "
                    "repeat must send the same meter, amount, expires_at and priority, other credits a new key")
            grant = stored
        self.invalidate(subject)
        entitlements.log_grant(subject, grant, actor, made)
        return grant, made

    async def set_traits(self, subject: str, traits: dict[str, int], actor: str, why: str = "") -> SubjectState:
        """Set numbers on the subject (a quota per_unit of a trait), through the door: audited as an admin's
        transition is (who, why), the status staying what it was."""
        def decide(table: StateTable, state: SubjectState, now: float) -> list[Outcome]:
            merged = dict(state.traits)
            merged.update(traits)
            if len(merged) > max(MAX_TRAITS, len(state.traits)):     # one stored with more before the rule: no more
                held = sorted(dict(state.traits))
                raise TooManyTraits(f"subject {subject!r} holds {len(held)} traits ({', '.join(held)}); with these it "
                                    f"would hold {len(merged)}, more than the {MAX_TRAITS} a subject may: set those "
                                    "it holds")
            new = state.with_(traits=tuple(sorted(merged.items())))
            return [Outcome(state, new, TRAITS_TRIGGER, "traits set: " + ", ".join(f"{k}={v}" for k, v in
                                                                                 sorted(traits.items())))]
        outcomes = await self._door(subject, decide, why=why, actor=actor)
        return outcomes[-1].state

    async def count(self, subject: str, meter: str, amount: int, key: str | None, *, enforce: bool) -> Counting:
        """consume (enforce=True: check and count in one step) or usage (enforce=False: count work that
        already ran, whatever the quota says). UsageCeiling (nothing written) when it would take the window's
        usage past the store's USAGE_CEILING; IdempotencyConflict for a key used for other work."""
        endpoint = "consume" if enforce else "usage"
        decision = self._preempt(subject, meter) if enforce else None
        if decision is not None:
            self._observe(endpoint, subject, decision)
            return Counting(decision, False)
        try:
            try:
                result = await self._count(subject, meter, amount, key, enforce)
            except UnknownStatus as exc:
                raise self.state_unknown(subject, exc) from None
        except StoreUnavailable:
            if not enforce:
                raise      # work that ran must be counted: the caller retries with the same key
            result = Counting(self._fail(subject, meter), False)
        self._observe(endpoint, subject, result.decision)
        if result.counted and not result.duplicate:
            self.metrics.usage.labels(meter).inc(amount)
        return result

    async def _count(self, subject, meter, amount, key, enforce) -> Counting:
        for _ in range(MAX_CONFLICT_RETRIES):
            now = self.clock()
            entry = self._cached(subject) or await self._load_entry(subject, now)
            table = self.table          # one plan decides the whole count
            state = entry.stored.state
            rule = table.rule(state, meter, now)
            span = rule.span(state, now)
            if enforce and not rule.allows and key is None:
                used = await self._used(entry, (meter, span.start))
                return Counting(table.can_process(state, meter, amount, used, now), False)
            # (A consume a denying status refuses reaches this only to have its key answered: no credits spent.)
            if (rule.allows or not enforce) and rule.beyond and rule.limit is not None:
                try:
                    counting = await self._spend(entry, table, state, rule, meter, span, amount, key, enforce, now)
                except UsageCeiling as exc:
                    raise _ceiling(exc, subject, meter, span) from None
                if counting is None:
                    self.invalidate(subject)
                    continue
                return counting
            # A status that denies is a limit of 0: the store still answers a key it has seen first (a repeat,
            # or the key reused for other work), whatever the status says now.
            limit = (rule.limit_for(state) if rule.allows else 0) if enforce else None
            try:
                done: Counted = await self.counted(
                    "count", self.store.count(entry.stored, meter, span.start, amount, limit, key, now),
                    invalidates=lambda _: (subject,))
            except UsageCeiling as exc:
                raise _ceiling(exc, subject, meter, span) from None
            if done.conflict:
                self.invalidate(subject)
                continue
            if entry.stored.version == 0:
                self.invalidate(subject)   # now stored: reload its version next time
            elif not done.duplicate:       # a repeat's usage is its first count's, maybe of an earlier window
                self._note_used(subject, entry, (meter, span.start), done.used)
            if done.counted and not done.duplicate:
                self.feed.usage(subject, meter, span.start, done.used)
            if enforce and done.counted and rule.allows:
                decision, _ = table.consume(state, meter, amount, done.used - amount, now)
                if done.duplicate:
                    decision = entitlements.repeat_admitted(decision, done.used)
            else:
                # Refused (or a repeat of a key counted before the status came to deny): why, against the usage
                # the database saw. Usage: what is left after counting.
                decision = table.can_process(state, meter, amount if enforce else 1, done.used, now)
            return Counting(decision, done.counted, done.duplicate)
        raise StoreUnavailable("count: the subject kept changing")

    async def _spend(self, entry: _Entry, table: StateTable, state: SubjectState, rule, meter: str, span, amount: int,
                     key: str | None, enforce: bool, now: float) -> Counting | None:
        """A count that may go past the limit (credits, then overage); None when the subject changed meanwhile."""
        grants = await self._grants(entry, now) if rule.credits and table.tier_grants_apply(meter) else None
        spend = entitlements.spend_of(table, state, rule, meter, enforce, now, grants, entry.stored.stripe_customer)
        subject = entry.stored.state.subject
        done = await self.counted("count", self.store.spend(entry.stored, meter, span.start, amount, spend, key, now),
                                  invalidates=lambda _: (subject,))
        if done.conflict:
            return None
        if entry.stored.version == 0:
            self.invalidate(subject)
        elif not done.duplicate:
            self._note_used(subject, entry, (meter, span.start), done.used)
            entry.grants = None
        if done.counted and not done.duplicate:
            self.feed.usage(subject, meter, span.start, done.used)
        decision = entitlements.decided(table, state, meter, amount, enforce, done, now)
        if done.overage and not done.duplicate:
            self.metrics.overage.labels(meter).inc(done.overage)
        return Counting(decision, done.counted, done.duplicate)

    def _observe(self, endpoint: str, subject: str, decision: Decision) -> None:
        reason = decision.reason
        self.metrics.decisions.labels(endpoint, reason).inc()
        if not decision.allowed:
            self.metrics.denials.labels(reason).inc()
            log(logging.INFO, "denied", endpoint=endpoint, subject=subject, meter=decision.meter, reason=reason,
                status=decision.status, used=decision.used, limit=decision.limit, rule=decision.rule)

    # --- the door -----------------------------------------------------------------------------

    async def apply(self, subject: str, trigger: Trigger | None, *, to: str | None = None, why: str = "",
                    cause_id: str | None = None, actor: str | None = None) -> Outcome:
        """A trigger (or an admin's direct move `to` a status) through the door."""
        def decide(table: StateTable, state: SubjectState, now: float) -> list[Outcome]:
            if to is not None:
                if to not in table.statuses:
                    raise NotInPlan("unknown_status", f"unknown status '{to}'; known: {', '.join(table.statuses)}")
                return [table.override(state, to, now, why)]
            if trigger is None:
                raise ValueError("apply: give a trigger or `to`")
            if isinstance(trigger, AdminAction) and trigger.action not in table.actions:
                raise NotInPlan("unknown_action", f"unknown admin action '{trigger.action}'; known: "
                                + (", ".join(table.actions) or "none"))
            return [table.apply(state, trigger, now)]

        return (await self._door(subject, decide, why=why if to is None else "", cause_id=cause_id, actor=actor))[-1]

    async def sweep(self, limit: int, failed: set[str] | None = None) -> tuple[int, int]:
        """Fire due timers of up to `limit` subjects, SWEEP_CHUNK of them a transaction; (subjects found due,
        moved). A subject that changed meanwhile goes through the door on its own. Each subject on its own: one
        that fails is logged, counted and left for the next sweep, and goes into `failed`, which the next
        batches of this sweep skip (the others are never held back by it)."""
        now = self.clock()
        failed = set() if failed is None else failed
        due = await self.timed("due", self.store.due(now, limit, tuple(failed)), timeout=30.0)
        async with self.plan_swap.deciding():       # decided and committed under one plan
            return await self._sweep(due, now, failed)

    async def _sweep(self, due: list[StoredSubject], now: float, failed: set[str]) -> tuple[int, int]:
        table = self.table
        version = table.version
        changes, moved = [], 0
        for stored in due:
            subject = stored.state.subject
            try:
                # A stored name the plan renamed or retired moves first, audited as a plan change.
                first = table.migrate(stored.state, now)
                # Values built directly (with_state, not dataclasses.replace): this loop is a sweep's engine step.
                state, outcomes = advance(table, first.state if first else stored.state, now)
            except Exception as exc:        # noqa: BLE001 - whatever one subject does, the others go on
                self._sweep_failed(subject, "decide", exc, failed)
                continue
            if first is not None:
                outcomes = [first, *outcomes]
            audits = tuple([AuditEntry(subject, o.before.status, o.state.status, o.trigger, o.reason, o.state.since,
                                       version, None, o.trigger if o.trigger == "plan" else "timer")
                            for o in outcomes if o.moved])
            changes.append(Change(stored.with_state(state), stored.version, audits))
        for start in range(0, len(changes), SWEEP_CHUNK):
            moved += await self._commit_timers(changes[start:start + SWEEP_CHUNK], failed)
        return len(due), moved

    def _sweep_failed(self, subject: str, stage: str, exc: BaseException, failed: set[str]) -> None:
        failed.add(subject)
        self.metrics.sweep_failures.labels(stage).inc()
        if self._throttle.ready(f"sweep_{subject}"):
            log(logging.ERROR, "sweep_subject_failed", subject=subject, stage=stage,
                error=f"{type(exc).__name__}: {exc}", retry="at the next sweep")

    async def _commit_timers(self, changes: list[Change], failed: set[str]) -> int:
        """One transaction of a sweep, then the cache, logs and metrics of what it committed; subjects moved."""
        done = await self.timed("sweep", self.store.commit_batch(changes), shield=True, timeout=SWEEP_TIMEOUT,
                                invalidates=lambda committed: committed)
        moved = 0
        fired: dict[tuple[str, str], int] = {}      # (trigger, to_status) -> transitions: bumped once per pair
        lines: list[dict] = []          # a log line per transition, written together (log_each)
        try:
            for change in changes:
                subject = change.subject.state.subject
                if subject in done:
                    # Every moved subject is told to the change feed, cached here or not: a client deciding
                    # locally holds subjects this gate has long stopped caching.
                    self.invalidate(subject)
                    moved += bool(change.audits)
                    for audit in change.audits:
                        key = (audit.trigger, audit.to_status)
                        fired[key] = fired.get(key, 0) + 1
                        lines.append({"subject": subject, "trigger": audit.trigger, "from_status": audit.from_status,
                                      "to_status": audit.to_status, "reason": audit.reason, "actor": audit.actor})
                else:
                    if lines:           # in order with the lines fire_due logs
                        log_each(logging.INFO, "transition", lines)
                        lines = []
                    try:
                        outcomes = await self.fire_due(subject)
                    except Exception as exc:     # noqa: BLE001 - one subject's failure stops no other
                        self._sweep_failed(subject, "commit", exc, failed)
                        continue
                    moved += any(o.moved for o in outcomes)
        finally:
            log_each(logging.INFO, "transition", lines)
            for (trigger, to_status), count in fired.items():
                self.metrics.transitions.labels(trigger, to_status).inc(count)
        return moved

    async def fire_due(self, subject: str) -> list[Outcome]:
        """Fire the subject's due timers, each at its own deadline (catching up after downtime)."""
        return await self._door(subject, lambda table, state, now: advance(table, state, now)[1], actor="timer")

    async def migrate_subject(self, subject: str) -> list[Outcome]:
        """The plan change a stored subject under an old name needs, through the door (nothing when none)."""
        return await self._door(subject, lambda table, state, now: [], actor="plan")

    async def upgrade_subject(self, subject: str, why: str, actor: str) -> list[Outcome]:
        """Move a subject kept on an older plan version to the active one (an admin's decision), audited."""
        def decide(table: StateTable, state: SubjectState, now: float) -> list[Outcome]:
            outcome = table.upgrade(state, now)
            return [outcome] if outcome is not None else []
        return await self._door(subject, decide, why=why, actor=actor)

    async def _door(self, subject: str, decide, *, why: str = "", cause_id: str | None = None,
                    actor: str | None = None) -> list[Outcome]:
        """Every state change goes through here: the engine decides, the store commits state and audit
        in one transaction (retrying on a concurrent writer), and the cache entry is dropped. A stored name
        the plan renamed or retired is moved first, in the same transaction, audited as a plan change."""
        for _ in range(MAX_CONFLICT_RETRIES):
            async with self.plan_swap.deciding():   # one plan decides and commits the whole change
                outcomes = await self._through_door(subject, decide, why, cause_id, actor)
            if outcomes is not None:
                return outcomes
        raise StoreUnavailable("the subject kept changing")

    async def _through_door(self, subject: str, decide, why: str, cause_id: str | None,
                            actor: str | None) -> list[Outcome] | None:
        """One attempt of _door; None when another writer changed the subject first."""
        now = self.clock()
        stored = await self.timed("load", self.store.load(subject))
        table = self.table
        if stored is None:
            stored = StoredSubject(table.initial_state(subject, now), 0)
        try:
            first = table.migrate(stored.state, now)
            outcomes = decide(table, first.state if first else stored.state, now)
        except UnknownStatus as exc:
            raise self.state_unknown(subject, exc) from None
        if first is not None:
            outcomes = [first, *outcomes]
        if not outcomes or not any(o.changed for o in outcomes):
            return outcomes or [Outcome(stored.state, stored.state, "timer", "no timer is due")]
        audits = tuple(
            AuditEntry(subject, o.before.status, o.state.status, o.trigger,
                       o.reason + (f"; {why}" if why and o is not first else ""),
                       o.state.since if o.trigger == "timer" else now, table.version, cause_id,
                       "plan" if o is first else actor)
            for o in outcomes if o.moved or (o.changed and o.trigger.startswith("admin:")))
        # An admin's change is a person's decision: the next Stripe event folds onto it, not onto the
        # state the Stripe events alone gave (timers and plan changes keep that state: the fold recomputes
        # them, and reads its old names as the new ones).
        # Traits are the product's numbers, not a decision about the status: the Stripe state stays too.
        kept = actor in ("timer", "plan") or all(o.trigger == TRAITS_TRIGGER for o in outcomes if o is not first)
        fold_state = stored.fold_state if kept else None
        change = Change(replace(stored, state=outcomes[-1].state, fold_state=fold_state), stored.version,
                        audits=audits)
        if await self.counted("save", self.store.commit(change), invalidates=lambda _: (subject,)):
            self.invalidate(subject)
            for audit in audits:
                self.metrics.transitions.labels(audit.trigger.split(":")[0], audit.to_status).inc()
                log(logging.INFO, "transition", subject=subject, trigger=audit.trigger,
                    from_status=audit.from_status, to_status=audit.to_status, reason=audit.reason,
                    actor=audit.actor, cause_id=cause_id)
            return outcomes
        self.invalidate(subject)
        return None

    async def admin(self, subject: str, *, to: str | None, action: str | None, why: str, actor: str) -> Outcome:
        trigger = AdminAction(action, actor) if action else None
        return await self.apply(subject, trigger, to=to, why=why, actor=actor)

    # --- views --------------------------------------------------------------------------------

    async def describe(self, subject: str) -> dict:
        now = self.clock()
        stored = await self.timed("load", self.store.load(subject))
        table = self.table
        known = stored is not None
        state: SubjectState = stored.state if known else table.initial_state(subject, now)
        try:
            state = table.named(state, now)     # as the plan names it (the next write stores it so)
        except UnknownStatus as exc:
            raise self.state_unknown(subject, exc) from None
        decided_under, kept = table.decided_under(state, now)
        windows = {m: table.window(state, m, now) for m in table.meters}
        used = await self.timed("usage", self.store.used(subject, [(m, w.start) for m, w in windows.items()]))
        usage = []
        for meter, span in windows.items():
            d = table.can_process(state, meter, 1, used[(meter, span.start)], now)
            usage.append({"meter": meter, "used": d.used, "limit": d.limit, "remaining": d.remaining,
                          "allowed": d.allowed, "reason": d.reason.value, "window_start": d.window_start,
                          "resets_at": d.resets_at, "rule": d.rule})
        history = await self.timed("transitions", self.store.transitions(subject)) if known else []
        credits = []
        if any(table.has_credits(m) for m in table.meters):
            spendable = await self.timed("credits", self.store.grants(subject, now))
            recent = await self.timed("credits", self.store.recent_grants(subject))
            reversals = await self.timed("credits", self.store.recent_reversals(subject))
            credits = entitlements.credits_view(table, state, now, spendable, recent, reversals)
        overage = await self.timed("overage", self.store.overage_reports(subject, None, 20))
        return {
            "subject": subject, "known": known, "status": state.status, "tier": state.tier, "since": state.since,
            "tier_since": state.tier_since,
            "timer_due": state.timer_due, "period_start": state.period_start, "period_end": state.period_end,
            "plan_version": decided_under, "plan_kept": kept.value if kept else None,
            "stripe_customer": stored.stripe_customer if known else None,
            "stripe_subscription": stored.stripe_subscription if known else None,
            "subscriptions": _subscriptions_view(state),
            "usage": usage, "transitions": [a.to_dict() for a in history],
            "features": table.features.of(state), "quantity": state.quantity,
            "addons": [{"addon": name, "quantity": q} for name, q in state.addons], "traits": dict(state.traits),
            "credits": credits, "overage": overage,
        }


def _ceiling(exc: UsageCeiling, subject: str, meter: str, span) -> UsageCeiling:
    """A count the store refused at the window's ceiling: logged, with when its window ends."""
    exc.resets_at = span.end
    log(logging.WARNING, "usage_ceiling", subject=subject, meter=meter, used=exc.used, amount=exc.amount,
        window_start=span.start)
    return exc


def _subscriptions_view(state: SubjectState) -> list[dict]:
    """The subject's Stripe subscriptions as the view shows them (times as Unix seconds; the API formats them)."""
    follows = state.follows
    return [{"id": s.id, "status": s.status, "followed": follows is not None and s.id == follows.id, "tier": s.tier,
             "created": s.created, "current_period_start": s.period_start, "current_period_end": s.period_end,
             "trial_end": s.trial_end, "cancel_at": s.cancel_at, "ended_at": s.ended_at}
            for s in state.subscriptions]
