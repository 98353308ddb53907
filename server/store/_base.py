"""The store the server talks to: one interface, one implementation per database.

Exception tree:

    StoreError          the store failed to answer (unreachable, locked, broken, too slow)
    IdempotencyConflict an idempotency key was reused for different work
    UsageCeiling        a count would take a window's usage past USAGE_CEILING
    DuplicateEvent      a Stripe event id is already stored (a repeat delivery)
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import operator
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, fields

import orjson

from plangate.engine import SubjectState, Subscription
from plangate.engine._credits import Grant
from plangate.engine._reversals import MoneyBack
from plangate.engine._table import SCALED_LIMIT_MAX

from ._credits import OverageReport, Reversal, Spend

from ._plans import Census, Deploy, PlanRecord
from ._console_sessions import ConsoleSession

_STATE_FIELDS = tuple(f.name for f in fields(SubjectState))


class StoreError(Exception):
    """The store could not answer; the gate follows its fail mode."""


class IdempotencyConflict(ValueError):
    """An idempotency key came back with another subject, meter or amount than the first time."""


# The most a window's usage holds: the ceiling of a scaled limit (2**62), so that all a limit allows can be counted,
# while usage plus a count (at most PLANGATE_MAX_AMOUNT, 10**15) stays far inside the stores' 64-bit integers (past
# 2**63 - 1 SQLite made the usage a float, and PostgreSQL's bigint failed every later count of the subject). The
# PostgreSQL functions spell it out (migration usage_ceiling).
USAGE_CEILING = SCALED_LIMIT_MAX


class UsageCeiling(ValueError):
    """A count would take its window's usage (`used` before it) past USAGE_CEILING: refused, nothing written (not
    the usage, not its idempotency key, not an overage report). `resets_at`: when the window ends (None: never),
    set by the gate."""

    def __init__(self, used: int, amount: int):
        super().__init__(f"{amount} more would take the window's usage ({used}) past {USAGE_CEILING}")
        self.used = int(used)       # a SQLite file counted past 2**63 before the ceiling holds a float
        self.amount = amount
        self.resets_at: float | None = None


class DuplicateEvent(Exception):
    """The Stripe event is stored already: another delivery of it came first."""


@dataclass(frozen=True, slots=True)
class StoredSubject:
    state: SubjectState
    version: int                      # 0: not stored yet
    stripe_customer: str | None = None
    stripe_subscription: str | None = None
    watermark: float | None = None    # created of the newest Stripe event in the subject's fold
    confirmed_at: float | None = None # when Stripe last told us about the subject
    fold_state: SubjectState | None = None  # the state its Stripe events alone give (see migration 0003)

    def with_state(self, state: SubjectState) -> StoredSubject:
        """The same row with a new state: dataclasses.replace(self, state=state), at half its cost (a sweep
        makes one per due subject)."""
        return StoredSubject(state, *_BESIDE_STATE(self))


# StoredSubject's fields after `state`, read in one call.
_BESIDE_STATE = operator.attrgetter(*(f.name for f in fields(StoredSubject)[1:]))


def state_json(state: SubjectState | None) -> str | None:
    """A state as compact JSON: orjson's text (asdict and json.dumps cost ten times as much, twice a webhook
    event), which is the standard library's for these fields, but for non-ASCII text, which it writes as
    before."""
    if state is None:
        return None
    text = orjson.dumps({name: getattr(state, name) for name in _STATE_FIELDS}).decode()
    return text if text.isascii() else json.dumps(asdict(state), separators=(",", ":"))


def state_from_json(text: str | None) -> SubjectState | None:
    if text is None:
        return None
    data = orjson.loads(text)
    if data.get("subscriptions"):       # a state written before migration subscriptions_and_links has none
        data["subscriptions"] = subscriptions_from(data["subscriptions"])
    elif "subscriptions" in data:
        data["subscriptions"] = ()
    for key in ("addons", "traits"):    # JSON lists; a state written before migration entitlements has none
        if key in data:
            data[key] = pairs_from(data[key])
    return SubjectState(**data)


def pairs_json(pairs: tuple[tuple[str, int], ...]) -> str | None:
    """A state's (name, number) pairs (add-ons, traits) as JSON; None when there are none."""
    return orjson.dumps(pairs).decode() if pairs else None


def pairs_from(data) -> tuple[tuple[str, int], ...]:
    if isinstance(data, (str, bytes)):
        data = orjson.loads(data)
    return tuple((str(name), int(value)) for name, value in data) if data else ()


def subscriptions_json(subscriptions: tuple[Subscription, ...]) -> str | None:
    """A subject's subscriptions as JSON (the stripe_subscriptions column); None when it has none."""
    return orjson.dumps([s.to_dict() for s in subscriptions]).decode() if subscriptions else None


def subscriptions_from(data) -> tuple[Subscription, ...]:
    if isinstance(data, (str, bytes)):
        data = orjson.loads(data)
    return tuple(Subscription.from_dict(d) for d in data) if data else ()


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A Stripe event as stored: what it was, whose it is, and what it did (applied, noop, stale, pending)."""

    id: str
    type: str
    created: float
    payload: str
    outcome: str
    reason: str = ""
    subject: str | None = None
    stripe_customer: str | None = None
    stripe_subscription: str | None = None
    state_before: SubjectState | None = None
    stripe_payment: str | None = None     # the charge (else payment intent) it names: a pending event waits for it
    # An update's place among its subscription's updates of the same second, as the fold took them (0 first;
    # engine.tie_group): a fold that runs again starts before the first. None: any other event, or one folded in
    # event_order before this was stored.
    fold_rank: int | None = None
    # The payment intent it names (beside its charge, in stripe_payment): a pending event waits for either.
    stripe_payment_intent: str | None = None


@dataclass(frozen=True, slots=True)
class Payment:
    invoice_id: str
    status: str
    created: float
    subject: str | None = None
    stripe_customer: str | None = None
    stripe_subscription: str | None = None
    amount: int | None = None
    currency: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class Change:
    """Everything one state change writes, committed in one transaction or not at all."""

    subject: StoredSubject                         # the new row
    expected_version: int                          # 0: the subject is not stored yet
    audits: tuple[AuditEntry, ...] = ()
    new_events: tuple[EventRecord, ...] = ()       # inserted; a stored id raises DuplicateEvent
    replayed_events: tuple[EventRecord, ...] = ()  # stored already; outcome, state_before, fold_rank rewritten
    payments: tuple[Payment, ...] = ()
    links: tuple[str, ...] = ()                    # Stripe ids (sub_, ch_, pi_) linked to the subject, if not yet
    grants: tuple[Grant, ...] = ()               # credits its events grant (a grant held already is not made again)
    # Money its events say came back of payments (refunds, lost disputes): recorded once each, and what it takes of
    # the grants those payments bought taken in the same transaction (engine._reversals).
    reversals: tuple[MoneyBack, ...] = ()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    subject: str
    from_status: str | None
    to_status: str
    trigger: str
    reason: str
    at: float
    plan_version: str
    cause_id: str | None = None
    actor: str | None = None

    def to_dict(self) -> dict:
        return {"from": self.from_status, "to": self.to_status, "trigger": self.trigger, "reason": self.reason,
                "at": self.at, "plan_version": self.plan_version, "cause_id": self.cause_id, "actor": self.actor}


@dataclass(frozen=True)
class Erasure:
    """Everything one erasure writes, in one transaction: the subject's rows moved to its pseudonym, its events
    rewritten, and the erasure remembered (by pseudonym). Erasing a pseudonym again (subject == pseudonym)
    drops the Stripe ids an erasure kept while a subscription was live."""

    subject: str                                   # the id erased
    pseudonym: str
    expected_version: int                          # of the subject's row as read; 0: none was stored
    row: StoredSubject | None                      # the pseudonym's row to write; None: nothing stored
    events: tuple[EventRecord, ...]                # rewritten: payload, subject, Stripe ids, state_before
    invoices: tuple[tuple[str, str], ...]          # (invoice id stored, id kept) when Stripe ids are dropped
    drop_stripe_ids: bool
    at: float
    actor: str
    audit: AuditEntry | None = None
    grants: tuple[tuple[str, str], ...] = ()       # (grant id stored, id kept) of bought grants, as invoices
    credit_ids: tuple[tuple[str, str], ...] = ()   # (stored, kept) of the Stripe ids of grants and reversals


@dataclass(frozen=True, slots=True)
class Counted:
    """What a counting write did. `conflict`: the subject changed since it was read; nothing written."""

    counted: bool
    used: int
    duplicate: bool = False
    conflict: bool = False
    credits_used: int = 0           # a spend: what the work took of the subject's credits
    overage: int = 0                # ... and how much of it was billed as overage (reported)
    balance: int | None = None      # ... and the credits left (None: not read)
    billed: int | None = None       # ... and the overage its window has billed, with it (None: not read)


class Store(abc.ABC):
    """Durable state of every subject. Methods raise StoreError when the database fails."""

    # True when this process is the only writer (SQLite): usage read once may be kept up to date locally.
    caches_usage = True
    # True when this process is the only writer: credit grants read once may be kept (spends update them).
    caches_grants = True

    def listen(self, on_subject, on_reset, on_plan=None, on_usage=None) -> None:  # noqa: B027 - one node: nothing
        """Start telling this node about subjects other nodes changed, on_subject(subject); (on_plan, with the
        version) about plans they deployed; (on_usage(subject, meter, window_start, used)) about their counts;
        on_reset() when some may have been missed (nothing to do for one node)."""

    async def listening(self) -> bool:
        """Wait until what listen() started hears other nodes, for as long as a connection may take to open;
        whether it does (one node: nothing to hear, always)."""
        return True

    async def unlisten(self) -> None:  # noqa: B027 - nor anything to stop
        """Stop what listen() started."""

    async def claim(self) -> None:  # noqa: B027 - most stores serve any number of gates: nothing to claim
        """Make this process the store's gate, where the store serves one gate process only (SQLite);
        StoreError naming the other process when one has it. Released by close()."""

    def outside_writes(self) -> int | None:
        """A number that changes whenever something other than this process's own writes may have changed the
        store (another connection or process committed); None when the store cannot tell. Equal readings mean
        every row read since the first is still as read, but for this process's own writes, which the gate's
        cache already follows."""
        return None

    def replica_lags(self) -> dict[str, float]:
        """Measured lag (seconds) of each read replica, by host:port (none but on PostgreSQL with replicas)."""
        return {}

    def withdraw(self, pending: asyncio.Future) -> bool:
        """Withdraw a write (the future a count, spend, commit or grant gave) the gate gave up waiting for: True
        when it is certain never to be written (it is cancelled); False when it was handed to the database already,
        or the store cannot tell (its outcome stands: the gate awaits it)."""
        return False

    @contextlib.asynccontextmanager
    async def exclusive(self, job: str):
        """Run a job on one node at a time; yields False when another node is running it."""
        yield True

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> tuple[int, int]:
        """Apply pending migrations; (version before, version after)."""

    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def load(self, subject: str) -> StoredSubject | None: ...

    @abc.abstractmethod
    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Usage of the given (meter, window start) pairs; missing ones are 0."""

    @abc.abstractmethod
    async def billed(self, subject: str, window: tuple[str, int]) -> int:
        """The overage a (meter, window start) of the subject has billed so far (0 when none)."""

    async def load_many(self, subjects: list[str], windows: list[tuple[str, str, int]]) \
            -> tuple[list[StoredSubject | None], dict[tuple[str, str, int], int]]:
        """Several subjects' rows (None: not stored) and the usage of (subject, meter, window start) triples
        (missing ones are 0), read together: the cache reads its busy subjects again this way before they expire.
        This default reads them one by one; the stores read them in one trip."""
        rows = [await self.load(subject) for subject in subjects]
        usage: dict[tuple[str, str, int], int] = {}
        for subject, meter, start in windows:
            usage[(subject, meter, start)] = (await self.used(subject, [(meter, start)]))[(meter, start)]
        return rows, usage

    # The three writes of requests are awaitables, not necessarily coroutines: a store may answer with the
    # future of a group commit.

    @abc.abstractmethod
    def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
              limit: int | None, key: str | None, now: float) -> Awaitable[Counted]:
        """Add amount to a window's usage in one atomic step, unless that would pass `limit`
        (None: no limit, the work already ran). Refuses with conflict=True when the subject's stored
        version is no longer current.version (a version of 0 stores current.state first)."""

    @abc.abstractmethod
    def spend(self, current: StoredSubject, meter: str, window_start: int, amount: int, spend: Spend,
              key: str | None, now: float) -> Awaitable[Counted]:
        """A count that may go past the window's limit, in one atomic step: the limit first, then the subject's
        credits (spend.which, in spending order; spend.grants made first), then overage up to spend.ceiling,
        billed up to what spend.cap leaves of the window's (a report row for what it bills when spend.report).
        Refuses (nothing written) past the ceiling, or a consume whose overage the cap cannot bill whole; a key
        seen before answers as the first time; conflict=True as for count."""

    @abc.abstractmethod
    async def grants(self, subject: str, now: float) -> list[Grant]:
        """The subject's spendable grants, and its latest tier grants (spent or not)."""

    @abc.abstractmethod
    async def grant(self, subject: str, grant_id: str) -> Grant | None:
        """One of the subject's grants by its id (None when it has none of that id)."""

    @abc.abstractmethod
    async def recent_grants(self, subject: str, limit: int = 50) -> list[Grant]:
        """The subject's newest grants, spent and expired ones included."""

    @abc.abstractmethod
    async def add_grants(self, subject: str, grants: tuple[Grant, ...], actor: str | None) -> int:
        """Make grants (one already made, by its id, is not made again); how many were made."""

    @abc.abstractmethod
    async def recent_reversals(self, subject: str, limit: int = 200) -> list[Reversal]:
        """What refunds and lost disputes took back of the subject's grants, the newest first."""

    @abc.abstractmethod
    async def overage_due(self, now: float, limit: int) -> list[OverageReport]:
        """Pending overage reports due to be sent, the longest waiting first."""

    @abc.abstractmethod
    async def update_reports(self, reports: list[OverageReport]) -> None:
        """Record what sending reports did (status, attempts, next attempt, error)."""

    @abc.abstractmethod
    async def overage_reports(self, subject: str | None, status: str | None, limit: int = 100
                              ) -> list[OverageReport]:
        """A subject's newest reports, or the newest with a status."""

    @abc.abstractmethod
    async def resend_refused(self, filters: dict[str, str], since: float, now: float, note: str, limit: int) -> int:
        """Up to `limit` refused reports counted since `since` (narrowed by filters: subject, event_name,
        identifier), but for key conflicts, made pending again, due at `now`, with `note` as their last error, in
        one transaction; how many."""

    @abc.abstractmethod
    async def refused_kept(self, filters: dict[str, str], since: float) -> tuple[int, int]:
        """Refused reports (narrowed as resend_refused) that it leaves: (counted before `since`, key conflicts
        counted since)."""

    @abc.abstractmethod
    async def overage_counts(self) -> dict[str, tuple[int, int]]:
        """Reports per status: (how many, their total value)."""

    @abc.abstractmethod
    async def overage_sent(self, start: float, end: float, settled: float) \
            -> list[tuple[str, str, int, float | None]]:
        """(customer, meter event name, value, late) of the reports sent for work counted between start and end:
        `late` when the first of them that reached Stripe at or after `settled` was counted (None: none did), and
        the value of the whole minutes before that one (all of it when none did)."""

    @abc.abstractmethod
    def commit(self, change: Change) -> Awaitable[bool]:
        """Write a change in one transaction, if the subject's stored version is still the expected one.
        False when another writer came first (nothing written); DuplicateEvent when a new event is stored
        already (nothing written)."""

    @abc.abstractmethod
    def record_event(self, event: EventRecord, payments: tuple[Payment, ...] = ()) -> Awaitable[bool]:
        """Store an event that changes no subject (pending, or for no subject); False if stored already."""

    @abc.abstractmethod
    async def event_seen(self, event_id: str) -> bool: ...

    @abc.abstractmethod
    async def find_subject(self, customer: str | None, subscription: str | None,
                           payments: tuple[str, ...] = ()) -> str | None:
        """The subject linked to a Stripe subscription id, else to one of `payments` (charge and payment intent ids
        seen in its events before: a payment is its buyer's, wherever its customer went since), else to a customer
        id no other subject holds."""

    @abc.abstractmethod
    async def customer_shared(self, customer: str) -> bool:
        """Whether several subjects hold the Stripe customer (one customer paying for two workspaces): then its id
        alone says whose an event is not."""

    async def lookup(self, event_id: str, subject: str | None, customer: str | None,
                     subscription: str | None, payments: tuple[str, ...] = ()
                     ) -> tuple[bool, str | None, StoredSubject | None]:
        """What a webhook event needs first: (stored already, its subject, that subject's row). The subject is
        the one the event names, else the one its Stripe ids are linked to. A store may answer it in one call."""
        if await self.event_seen(event_id):
            return True, None, None
        if subject is None:
            subject = await self.find_subject(customer, subscription, payments)
        return False, subject, (await self.load(subject) if subject is not None else None)

    @abc.abstractmethod
    async def history(self, subject: str, since: float) -> list[EventRecord]:
        """The subject's folded events with created >= since, oldest first."""

    @abc.abstractmethod
    async def pending(self, customer: str | None, subscription: str | None,
                      payments: tuple[str, ...] = ()) -> list[EventRecord]:
        """Events kept for no subject yet that name this customer or subscription, or wait for one of
        `payments` (charge and payment intent ids), oldest first."""

    @abc.abstractmethod
    async def pending_linked(self, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        """Pending events that name a Stripe id a subject holds now (a subject's subscription or customer, a
        linked subscription, charge or payment intent), in (created, event_id) order after the key `after`; their
        payloads left out (""). A customer several subjects hold is such an id too: find_subject decides whose
        each one is. It reads every pending event that no link names: not a call for a request's path."""

    @abc.abstractmethod
    async def last_admin_change(self, subject: str) -> float | None:
        """When an admin last moved the subject (a person's decision the fold does not rewrite); traits set
        (`admin:traits`, the status kept) are the product's numbers, not such a decision."""

    @abc.abstractmethod
    async def due(self, now: float, limit: int, skip: tuple[str, ...] = ()) -> list[StoredSubject]:
        """Subjects whose timer is due at now, earliest first (through the timer index), but those in skip (the
        sweep's subjects that failed: they wait for the next sweep rather than hold back the others)."""

    @abc.abstractmethod
    async def commit_batch(self, changes: list[Change]) -> set[str]:
        """Commit many changes of stored subjects (state and audit rows only) in one transaction; the
        subjects whose expected version still held. The others are left untouched."""

    @abc.abstractmethod
    async def doubtful(self, statuses: tuple[str, ...], unconfirmed_before: float,
                       limit: int) -> list[StoredSubject]:
        """Subjects with a Stripe subscription that are in one of statuses, or not confirmed since a time."""

    @abc.abstractmethod
    async def cleanup(self, usage_before: int, keys_before: float) -> tuple[int, int]:
        """Drop usage rows of windows that started before usage_before (never lifetime ones) and
        idempotency keys older than keys_before; (usage rows, keys) dropped."""

    # --- personal data (retention and erasure) ---------------------------------------------------

    @abc.abstractmethod
    async def unreduced(self, before: float, after: tuple[float, str] | None, limit: int) -> list[EventRecord]:
        """Events created before `before` whose payload is still as Stripe sent it, in (created, id) order,
        from after the (created, id) `after`."""

    @abc.abstractmethod
    async def reduce_payloads(self, payloads: list[tuple[str, str]], at: float) -> int:
        """Replace the payloads of events ((event id, reduced payload) each), stamped reduced at `at`."""

    async def scrub(self) -> bool:
        """Let go of copies of what was just rewritten that the database still holds outside its tables; False
        when it could not (they go at a later scrub)."""
        return True

    async def compact(self) -> None:  # noqa: B027 - a store with nothing to compact does nothing
        """Rewrite the database without the free space old rows left (once, after the first reduction)."""

    @abc.abstractmethod
    async def personal_rows(self, subject: str, customer: str | None,
                            subscription: str | None) -> tuple[list[EventRecord], list[str], list[str], list[str]]:
        """The subject's events (and those waiting that name its Stripe customer or subscription), oldest first,
        the invoice ids of its payments, the ids of its grants bought through Checkout, and the Stripe ids its
        credits keep (payment intents of bought grants; refunds, disputes, charges of money that came back)."""

    @abc.abstractmethod
    async def erase(self, erasure: Erasure) -> bool:
        """Write an erasure in one transaction, if the subject's row is still at the version read; False when
        another writer came first (nothing written). Other nodes drop the subject and its pseudonym."""

    @abc.abstractmethod
    async def erased(self, pseudonym: str) -> bool:
        """Was the subject of this pseudonym erased?"""

    @abc.abstractmethod
    async def erasures_keeping_ids(self, limit: int, after: str = "") -> list[str]:
        """Pseudonyms of erased subjects whose Stripe ids are still kept (a subscription was live), in order,
        after `after`: a page at a time."""

    @abc.abstractmethod
    async def events(self, subject: str, limit: int = 20) -> list[EventRecord]:
        """The subject's most recent Stripe events, newest first."""

    @abc.abstractmethod
    async def event_log(self, outcome: str | None, type_: str | None, before: tuple[float, str] | None,
                        limit: int) -> list[EventRecord]:
        """Stored Stripe events of any subject (or none yet), newest first, of one outcome and one type if given,
        created before the key `before` (created, event_id) if given; their payloads left out ("")."""

    @abc.abstractmethod
    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        """The subject's most recent transitions, newest first."""

    # --- plans (_plans.py) ---------------------------------------------------------------------

    @abc.abstractmethod
    async def census(self) -> Census:
        """Stored subjects counted by status, tier and plan version (a read of every subject)."""

    @abc.abstractmethod
    async def record_deploy(self, plan: PlanRecord, deploy: Deploy) -> Deploy:
        """Store a plan version (unless stored already) and its deploy, in one transaction; the deploy as stored
        (with its id). On a shared store every node is told (listen's on_plan)."""

    @abc.abstractmethod
    async def deploy_moved(self, deploy_id: int, moved: int) -> None:
        """Record how many stored subjects a deploy's renames and retirements moved."""

    @abc.abstractmethod
    async def deploys(self, limit: int = 50) -> list[Deploy]:
        """The newest deploys first: the first is the active plan."""

    @abc.abstractmethod
    async def plan_versions(self, versions: tuple[str, ...]) -> dict[str, PlanRecord]:
        """The stored documents of these plan versions (those the store has)."""

    @abc.abstractmethod
    async def subjects_named(self, statuses: tuple[str, ...], tiers: tuple[str, ...], limit: int,
                             skip: tuple[str, ...] = (), *, subscriptions: bool = False) -> list[StoredSubject]:
        """Up to `limit` stored subjects in one of statuses or on one of tiers (or, with `subscriptions`, with a
        subscription on one of them), but those in skip."""

    @abc.abstractmethod
    async def subjects_on(self, versions: tuple[str, ...], limit: int, after: str = "") -> list[StoredSubject]:
        """Up to `limit` stored subjects on one of these plan versions, by subject name after `after`."""

    # --- console sessions (_console_sessions.py) ------------------------------------------------

    @abc.abstractmethod
    async def open_console_session(self, session: ConsoleSession, keep: int, replacing: str | None) -> None:
        """Store a session, in one transaction with: the end of `replacing` (the id hash a browser logging in
        again presented), of every expired session, and of the oldest of its scope past `keep`."""

    @abc.abstractmethod
    async def console_session(self, id_hash: str) -> ConsoleSession | None:
        """The session of this id hash, expired or not."""

    @abc.abstractmethod
    async def close_console_session(self, id_hash: str) -> None:
        """End a session (logout)."""
