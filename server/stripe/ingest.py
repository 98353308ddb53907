"""Stripe events into subject state: exactly once, in any order, through the one door.

A subject's state is the fold of its Stripe events in created order (engine.replay). An event that
arrives in order is folded onto the stored state; one that arrives late makes the fold run again from
the state before the first event it precedes, and is recorded `stale` when that changes nothing. The
event rows, the state, the audit rows and the payments of one delivery commit in one transaction.
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from typing import NamedTuple

from plangate.engine import (Refs, StateTable, StripeEvent, SubjectState, UnknownStatus, advance, event_order,
                             refold_from, refused_names, relevant_events, replay, stripe_refs, tie_group)
from plangate.engine._reversals import MoneyBack, money_back

from ..gate import WRITES, Gate, StoreUnavailable
from ..logs import log
from ..store import AuditEntry, Change, DuplicateEvent, EventRecord, Payment, StoredSubject
from .adoption import LateAdoption
from .api import StripeApi
from .objects import named_subject, payment_of
from .purchases import what_was_bought

MAX_ATTEMPTS = 8
WEBHOOK_STORE_TIMEOUT = 10.0


_AFTER_ADMIN = "older than an admin's later change to the subject: a person's decision is not rewritten"
_UNMAPPED = ("older than events folded already, and the state before them has a status or tier no plan version maps "
             "now (renamed twice since): not put among them")

class _Unread(enum.Enum):
    """_fold's `loaded` when the caller has not read the subject's row."""

    UNREAD = 0


_UNREAD = _Unread.UNREAD


class _ErasedMeanwhile(Exception):
    """The subject was erased while its events were folded: receive() starts the event again, and it lands on
    the pseudonym (concealed) as any event of an erased subject does."""

Incoming = tuple[tuple[StripeEvent, EventRecord], ...]     # events to fold in, each with its row


class _Fold(NamedTuple):
    """One fold of a subject's events, as its caller asks for it. (A named tuple, not a frozen dataclass: one
    is made per webhook event, and a tuple is built for less.)"""

    subject: str
    incoming: Incoming = ()
    payments: tuple[Payment, ...] = ()
    ids: tuple[str | None, str | None] = (None, None)   # the Stripe customer and subscription the events name
    linking: bool = False       # the events name the subject: their Stripe ids become the subject's
    stored_rows: bool = False   # the events' rows are stored already (adopted): updated, not inserted
    record_noop: bool = True    # False (reconciliation): a fold that changes nothing only confirms the subject
    # Adoption: reads the events to fold (and their payments get the subject) after each load of the
    # subject; () when none is left.
    waiting: Callable[[], Awaitable[Incoming]] | None = None
    answer_for: str | None = None   # the event the answer is about (default: the first incoming one)


@dataclass(frozen=True)
class Received:
    """What the webhook answers: the outcome of the event (applied, noop, stale, other_subscription,
    ended_subscription, pending, ignored)."""

    event_id: str
    outcome: str
    subject: str | None = None
    duplicate: bool = False
    status: str | None = None
    adopted: tuple[str, ...] = ()   # not answered: the waiting events an adoption folded in

    def to_dict(self) -> dict:
        return {"received": True, "event": self.event_id, "outcome": self.outcome, "subject": self.subject,
                "duplicate": self.duplicate, "status": self.status}


class Ingest:
    def __init__(self, gate: Gate, personal=None):
        self.gate = gate
        self.personal = personal        # PersonalData: events that name an erased subject go to its pseudonym
        self.store = gate.store
        self._relevant: tuple[StateTable | None, frozenset[str]] = (None, frozenset())
        self.api = StripeApi(gate.config)       # whose a charge is, when an event names nothing else
        # One fold at a time per subject: Stripe sends a subscription's events in bursts (invoice, payment,
        # subscription at once), and folds that race each other all lose on the version but one, and start
        # over: with enough at once, some fail all MAX_ATTEMPTS and are answered 500. A fold waits for
        # the future of the fold of its subject before it (a chain, not a lock: a dict entry and a future a
        # fold). Folds in other processes (PostgreSQL) still meet on the version.
        self._folding: dict[str, asyncio.Future] = {}
        self.late = LateAdoption(self)      # waiting events whose adoption failed after their link committed

    @property
    def table(self) -> StateTable:
        """The plan the gate decides with now (a reload may swap it: a fold reads it once per attempt)."""
        return self.gate.table

    @property
    def relevant(self) -> frozenset[str]:
        """The Stripe event types that can change a subject under the current plan."""
        table, types = self._relevant
        if table is not self.gate.table:
            table = self.gate.table
            types = relevant_events(table.plan)
            self._relevant = (table, types)
        return types

    async def _io(self, operation: str, coro, invalidates=None):
        # Under receive()'s one time budget for all of an event's store calls. Writes are shielded, as the
        # gate's are; a read given up is harmless, and shielding one made a task of it (~1.5 an event).
        return await self.gate.untimed(operation, coro, shield=operation in WRITES, invalidates=invalidates)

    async def receive(self, event: StripeEvent, payload: str, *, record_noop: bool = True) -> Received:
        """Handle one verified event. StoreUnavailable propagates: the caller answers 5xx and Stripe retries.
        record_noop=False (reconciliation): an event that changes nothing only marks the subject confirmed.
        All the event's store calls share one budget, WEBHOOK_STORE_TIMEOUT."""
        if event.type not in self.relevant:     # no store call, no budget to arm (a flood of these is cheap)
            return Received(event.id, "ignored")
        try:
            async with asyncio.timeout(WEBHOOK_STORE_TIMEOUT):
                for _ in range(2):
                    try:
                        return await self._receive(event, payload, record_noop)
                    except _ErasedMeanwhile:
                        pass        # once more: it lands on the pseudonym now
                raise StoreUnavailable("webhook: the subject was erased under each of two attempts")
        except TimeoutError as exc:
            raise self.gate.store_failed("webhook", exc, f"no answer within {WEBHOOK_STORE_TIMEOUT}s") from exc

    async def _receive(self, event: StripeEvent, payload: str, record_noop: bool) -> Received:
        obj = event.object
        refs = stripe_refs(obj)
        named = named_subject(obj, self.table.plan.subject_link)
        if named is None:
            for value, problem in refused_names(obj, self.table.plan.subject_link):
                # The API refuses such an id, so no subject has it: the event waits for a link by its Stripe ids.
                log(logging.WARNING, "stripe_subject_refused", event_id=event.id, subject=value[:250],
                    problem=f"the subject {problem}")
        linking = named is not None
        seen, subject, stored = await self._io("lookup", self.store.lookup(
            event.id, named, refs.customer, refs.subscription, refs.payments))
        if seen:
            # Its first delivery may have committed a link and failed to adopt what waited for it (answered 5xx):
            # this is Stripe delivering it again.
            subject, status = await self.late.repeated(event.id, refs)
            return Received(event.id, "duplicate", subject, duplicate=True, status=status)
        if self.table.credits.needs_line_items(event.type, obj):
            event, payload = await what_was_bought(self.api, self.table.credits, event, payload)
            obj = event.object
        shared = False
        if subject is None and named is None and refs.any:
            subject, stored, refs, shared = await self._placed_by_stripe(refs)
        if named is not None and stored is None and self.personal is not None:
            # A subject not stored may be one that was erased: its events land on its pseudonym, and keep
            # nothing of it as Stripe sent it.
            pseudonym = await self._io("erased", self.personal.pseudonym_if_erased(named))
            if pseudonym is not None:
                subject, stored = pseudonym, await self._io("load", self.store.load(pseudonym))
                payload = self.personal.conceal(payload, named, pseudonym)
        elif subject is not None and self.personal is not None and \
                await self._io("erased", self.personal.is_erased(subject)):
            # Found through the Stripe ids an erasure kept (a live subscription's): concealed as well.
            payload = self.personal.conceal(payload, named or subject, subject)
        customer, subscription = refs.customer, refs.subscription
        # Found by its charge or payment intent, an event of a customer the subject no longer holds (it moved to
        # another subject since that payment) leaves the subject's customer as it is.
        moved = not linking and subscription is None and stored is not None and \
            stored.stripe_customer not in (None, customer)
        # A customer several subjects hold is kept off a waiting event: a link of that customer to one of them
        # must not adopt it.
        record = EventRecord(event.id, event.type, event.created, payload, "pending", "", subject,
                             None if shared and subject is None else customer, subscription,
                             stripe_payment=refs.charge or refs.payment_intent,
                             stripe_payment_intent=refs.payment_intent)
        payment = payment_of(event.type, event.id, event.created, obj, subject)
        payments = (payment,) if payment else ()
        if subject is None:
            return await self._keep(event, record, refs, payments, shared)
        try:
            received = await self._fold(_Fold(subject, ((event, record),), payments,
                                              (None if moved else customer, subscription), linking,
                                              record_noop=record_noop), loaded=stored)
        except DuplicateEvent:
            return Received(event.id, "duplicate", subject, duplicate=True)
        assert received is not None     # only an adoption (waiting for events) can find none to fold
        # Events that waited for what this one links: its customer and subscription when it names its subject,
        # its charge and payment intent (which a waiting dispute names) in any case.
        adopt = (customer, subscription, refs.payments) if linking else (None, None, refs.payments)
        if any(adopt[:2]) or adopt[2]:
            adopted = await self.adopt_pending(subject, *adopt)
            if adopted is not None:     # the answer tells the status the subject is in now, adopted events included
                received = replace(received, status=adopted.status)
        return received

    async def _placed_by_stripe(self, refs: Refs) -> tuple[str | None, StoredSubject | None, Refs, bool]:
        """Whose an event is that no stored link places, by what Stripe's API says of its payment: the customer of
        a charge or payment intent the gate has not seen (a dispute names no customer); and when several subjects
        hold that customer (one customer paying for two workspaces), the subscription whose invoice the payment
        paid. With the refs so completed, and whether the customer is so shared (its id then links nothing).
        StripeUnavailable propagates: answered 5xx, Stripe delivers again."""
        subject = None
        if refs.only_payments and self.api.configured:
            refs = await self.api.owner(refs)
            if refs.customer:
                subject = await self._io("find_subject", self.store.find_subject(refs.customer, None))
        shared = subject is None and refs.customer is not None and \
            await self._io("shared", self.store.customer_shared(refs.customer))
        if shared and refs.subscription is None and refs.payment_intent and self.api.configured:
            paid = await self.api.paid_subscription(refs.payment_intent)
            if paid is not None:
                refs = replace(refs, subscription=paid)
                subject = await self._io("find_subject", self.store.find_subject(None, paid))
        stored = await self._io("load", self.store.load(subject)) if subject is not None else None
        return subject, stored, refs, shared

    async def _keep(self, event: StripeEvent, record: EventRecord, refs: Refs, payments, shared: bool) -> Received:
        """An event for no known subject: kept `pending` if it names a Stripe id a later event may link."""
        if shared:
            reason = (f"its customer pays for several subjects: kept until its subscription {refs.subscription} "
                      "is linked to one" if refs.subscription else
                      "its customer pays for several subjects and which one's subscription the payment paid is "
                      "not known: kept until an event of its subject names its charge or payment intent")
        elif refs.customer or refs.subscription:
            reason = "no subject yet: kept until a checkout or subscription links its customer or subscription"
        else:
            reason = "no subject yet: kept until an event of its subject names its charge or payment intent"
        stored = await self._io("record_event", self.store.record_event(
            replace(record, reason=reason, outcome="pending" if refs.any else "ignored"), payments))
        if not stored:
            return Received(event.id, "duplicate", duplicate=True)
        if refs.any:
            # The link may have committed after the lookup above (Stripe sends an invoice and the event that
            # links it at the same moment). Look again: either this sees the link, or the linking delivery's
            # own look for waiting events, which comes after its commit, sees this row.
            linked = await self._io("find_subject", self.store.find_subject(record.stripe_customer,
                                                                            refs.subscription, refs.payments))
            if linked is not None:
                adopted = await self.adopt_pending(linked, record.stripe_customer, refs.subscription,
                                                    refs.payments, answer_for=event.id)
                if adopted is not None:
                    return adopted
        return Received(event.id, "pending" if refs.any else "ignored")

    async def adopt_pending(self, subject: str, customer: str | None, subscription: str | None,
                             payments: tuple[str, ...] = (), *, answer_for: str | None = None) -> Received | None:
        """Events that came before the link to their subject: folded in now, in created order. Several
        deliveries (and the sweep) may find the same waiting events at once; the fold reads them afresh after each
        load of the subject, so that only one of them folds each event in (the others' commits fail on the
        version). The answer's `adopted`: the events the committed fold took in."""
        erased = self.personal is not None and await self._io("erased", self.personal.is_erased(subject))
        taken: list[str] = []       # what the last read found: the fold that committed took those

        async def waiting() -> Incoming:
            found: dict[str, tuple[StripeEvent, EventRecord]] = {}
            asked, ask = set(payments), (customer, subscription, payments)
            while True:
                new = [r for r in await self._io("pending", self.store.pending(*ask)) if r.id not in found]
                if erased and new:
                    new = await self._concealed(new, subject)
                for r in new:
                    found[r.id] = (_as_event(r), replace(r, subject=subject))
                # What they link in turn: the charges and payment intents of the events found (a dispute waits
                # for a charge that waited for its customer).
                more = {p for r in new for p in stripe_refs(found[r.id][0].object).payments} - asked
                if not more:
                    incoming = tuple(sorted(found.values(), key=lambda pair: (pair[1].created, pair[1].id)))
                    taken[:] = [r.id for _, r in incoming]
                    return incoming
                asked |= more
                ask = (None, None, tuple(sorted(more)))

        # Mostly none wait: then the subject is not loaded at all. When some do, the fold reads them again
        # after its load (above), which is what keeps two deliveries from folding one event in twice.
        if not await waiting():
            return None
        received = await self._fold(_Fold(subject, stored_rows=True, waiting=waiting, answer_for=answer_for))
        return None if received is None else replace(received, adopted=tuple(taken))

    async def _concealed(self, rows: list[EventRecord], pseudonym: str) -> list[EventRecord]:
        """Waiting events an erased subject adopts (a dispute whose charge came only after the erasure, which
        could not know them as the subject's): reduced as the erasure reduced the subject's other events, and
        written so before the fold takes them in (a fold rewrites an adopted row's outcome, not its payload); then
        the database lets go of its copies of what they were. The rows as they are now."""
        assert self.personal is not None
        concealed = [replace(r, payload=self.personal.conceal(r.payload, pseudonym, pseudonym)) for r in rows]
        changed = [(new.id, new.payload) for new, old in zip(concealed, rows) if new.payload != old.payload]
        if changed:
            await self._io("conceal", self.store.reduce_payloads(changed, self.gate.clock()))
            if not await self._io("scrub", self.store.scrub()):
                log(logging.WARNING, "scrub_incomplete", why="the database was busy: copies of rewritten rows stay "
                                                             "in its write-ahead log until the next cleanup")
        return concealed

    async def _fold(self, fold: _Fold, loaded: StoredSubject | None | _Unread = _UNREAD) -> Received | None:
        """The fold, after the fold of the same subject before it (if any). loaded: the subject's row as the
        caller just read it, for the first attempt. None: the fold was waiting for events and found none."""
        subject = fold.subject
        before = self._folding.get(subject)
        mine = self._folding[subject] = asyncio.get_running_loop().create_future()
        try:
            if before is not None:
                loaded = _UNREAD        # read before the fold ahead committed: read again once it is done
                await asyncio.shield(before)    # cancelled while waiting: `before` itself goes on
            return await self._fold_alone(fold, loaded)
        finally:
            if before is None or before.done():
                mine.set_result(None)
            else:       # cancelled while waiting: the fold after this one still waits for the one before
                before.add_done_callback(lambda _: mine.set_result(None))
            if self._folding.get(subject) is mine:
                del self._folding[subject]

    async def _fold_alone(self, fold: _Fold, loaded: StoredSubject | None | _Unread) -> Received | None:
        # Decided and committed under one plan: a deploy's check of the store and its swap go between folds.
        async with self.gate.plan_swap.deciding():
            return await self._fold_attempts(fold, loaded)

    async def _fold_attempts(self, fold: _Fold, loaded: StoredSubject | None | _Unread) -> Received | None:
        subject = fold.subject
        incoming = fold.incoming
        for attempt in range(MAX_ATTEMPTS):
            now = self.gate.clock()
            stored = loaded if attempt == 0 and loaded is not _UNREAD else \
                await self._io("load", self.store.load(subject))
            assert stored is not _UNREAD
            if stored is None and (attempt or loaded is _UNREAD) and self.personal is not None and \
                    await self._io("erased", self.personal.pseudonym_if_erased(subject)) is not None:
                # Gone since it was read: erased. Written again here, it would be under the person's own id.
                raise _ErasedMeanwhile(subject)
            if fold.waiting is not None:
                incoming = await fold.waiting()
                if not incoming:
                    return None
                # Their invoices' payments rows were written without a subject: they get it now.
                fold = fold._replace(incoming=incoming, payments=tuple(
                    p for p in (payment_of(e.type, e.id, e.created, e.object, subject) for e, _ in incoming) if p))
            table = self.table
            if stored is not None and await self._migrated(table, subject, stored, now):
                continue        # moved to the plan's names first, through the door: fold onto the row it wrote
            first = min((e for e, _ in incoming), key=event_order)
            stored = stored or StoredSubject(table.initial_state(subject, first.created), 0)
            later = await self._later(subject, stored, first, [e for e, _ in incoming])
            # An admin's change may be newer than the event: when Stripe events were stored after it (they sort
            # after this one), or when none was since (the change dropped the fold state).
            admin_may_be_newer = later or (stored.version > 0 and stored.fold_state is None)
            if not fold.record_noop and stored.version and not _news(table, stored.state, incoming, now):
                # Reconciliation, and Stripe says of the subscription what the subject holds already: confirmed,
                # nothing folded (a fold of old facts dated now would undo an admin's decision made since them).
                change = Change(replace(stored, confirmed_at=now), stored.version)
            elif admin_may_be_newer and \
                    (await self._io("admin", self.store.last_admin_change(subject)) or 0) >= first.created:
                change = self._stale(stored, fold._replace(incoming=incoming), now)
            else:
                change = self._change(table, fold, stored, later, now)
            if not fold.record_noop and not change.audits and \
                    _essence(change.subject.state) == _essence(stored.state):
                change = Change(replace(stored, confirmed_at=now), stored.version)
            # A commit that lands after the event's budget ran out (a 5xx: Stripe delivers again) drops the
            # subject's cached state then.
            if await self._io("commit", self.store.commit(change), lambda ok: (subject,) if ok else ()):
                self.gate.invalidate(subject)
                self._log(change, stored)
                answer = fold.answer_for or incoming[0][0].id
                mine = next((r for r in change.new_events + change.replayed_events if r.id == answer), None)
                return Received(answer, mine.outcome if mine else "noop", subject,
                                status=change.subject.state.status)
        log(logging.WARNING, "webhook_retry", subject=subject, events=[e.id for e, _ in incoming],
            why=f"the subject changed under each of {MAX_ATTEMPTS} attempts; answered 500 for Stripe to deliver again")
        raise StoreUnavailable("webhook: the subject kept changing; Stripe will deliver again")

    async def _migrated(self, table: StateTable, subject: str, stored: StoredSubject, now: float) -> bool:
        """Did the subject need a plan change (a status or tier name the plan renamed or retired)? Then it was
        made, audited, through the gate's door."""
        try:
            needed = table.migrate(stored.state, now) is not None
        except UnknownStatus as exc:
            raise self.gate.state_unknown(subject, exc) from None
        if needed:
            await self.gate.migrate_subject(subject)
        return needed

    async def _later(self, subject: str, stored: StoredSubject, first: StripeEvent,
                     incoming: list[StripeEvent]) -> list[EventRecord]:
        """Stored events of the subject the fold takes after `first`, in the order it took them: the part of the
        fold to run again. It starts no later than a stored update tied with an incoming one (engine.tie_group:
        their order depends on each other), and never inside a tie group: from the state before its first."""
        if stored.watermark is None or first.created > stored.watermark:
            return []
        ids = {e.id for e in incoming}
        ties = {tie_group(e) for e in incoming} - {None}
        rows = await self._io("history", self.store.history(subject, first.created))
        folded = _in_fold_order([(_as_event(r), r) for r in rows if r.id not in ids])
        key = event_order(first)
        start = next((i for i, (e, _) in enumerate(folded) if event_order(e) > key or tie_group(e) in ties),
                     len(folded))
        # Back to the first of every tie group the part holds: a group is folded again whole, its ranks with it.
        return [r for _, r in folded[refold_from([e for e, _ in folded], start):]]

    def _change(self, table: StateTable, fold: _Fold, stored: StoredSubject, later: list[EventRecord],
                now: float) -> Change:
        # Where the fold starts: before the first later event; else the state the Stripe events alone gave
        # (so that an event created before a timer that already fired is folded in before it); else, after
        # an admin's change (which drops the fold state), the stored state.
        base = (later[0].state_before if later and later[0].state_before else
                stored.fold_state if stored.fold_state is not None else stored.state)
        try:
            unknown = table.unmapped(base)
            base = table.named(base, now)    # stored before a rename: under the plan's names
        except UnknownStatus:
            unknown = base.status
        if unknown is not None:
            # A name from before two renames of it (a plan maps one step back): its status, tier or a subscription's
            # tier. The fold cannot start there. An event newer than all folded goes onto the stored state, which
            # every deploy moved; a late one cannot be put among the events before it, and is recorded stale
            # rather than applied after newer ones.
            log(logging.WARNING, "fold_from_stored_state", subject=stored.state.subject, unknown=unknown,
                late=bool(later), why="the state the fold would start from has a name no plan version maps now")
            if later:
                return self._stale(stored, fold, now, _UNMAPPED)
            base = table.named(stored.state, now)
        if base.traits != stored.state.traits:      # set through the API, never by Stripe: the stored ones hold
            base = base.with_(traits=stored.state.traits)
        if base.plan_version != stored.state.plan_version:
            # Versions only move forward (an admin's upgrade, entering a tier's status): a refold keeps the stored.
            base = base.with_(plan_version=stored.state.plan_version)
        exact = not later and base == stored.state
        incoming = fold.incoming
        records = {r.id: r for _, r in incoming}
        records.update({r.id: r for r in later})
        folded, steps = replay(table, base, [e for e, _ in incoming] + [_as_event(r) for r in later])
        held = stored.state
        if (later and folded.status == held.status and folded.since == held.since < table.deployed_at and
                folded.timer_due is not None and held.timer_due is not None and table.timer_from_entry(folded)):
            # Folded again, the status is entered again under this plan, whose duration may differ from the one
            # it was entered under: a running timer keeps its due time across a deploy, as a rename keeps it (and
            # grace still never ends before the date paid through, which the refold may have learnt).
            folded = folded.with_(timer_due=table.kept_due(folded, held.timer_due))
        # Folded from before timers that already fired: fire again what is still due, at the deadlines, so the
        # subject does not step back. (Folded onto the stored state, due timers are left to the sweep.)
        final, timers = (folded, []) if exact else advance(table, folded, now)
        changed = _essence(final) != _essence(stored.state)
        mine = {e.id for e, _ in incoming}
        rows, audits = [], []
        ranks = _fold_ranks(steps)
        for step in steps:
            outcome = "applied" if step.outcome.moved else "noop"
            reason = step.outcome.reason
            if later and step.event.id in mine:
                outcome = "applied" if changed else "stale"
                reason = (f"arrived after {len(later)} newer event(s); folded in created order: {reason}"
                          if changed else f"older than events already applied; changes nothing ({reason})")
            if step.outcome.other_subscription:     # whenever it came, another subscription's event moves nothing
                outcome = "other_subscription"
            elif step.outcome.ended_subscription:   # nor an invoice of one that had ended, paid late
                outcome = "ended_subscription"
            rows.append(replace(records[step.event.id], outcome=outcome, reason=reason, state_before=step.before,
                                fold_rank=ranks.get(step.event.id)))
            if exact:
                audits.extend(self._audits(table, step, now))
        if exact:
            audits.extend(self._timer_audits(table, timers))
        elif final.status != stored.state.status:
            cause = incoming[0][0]
            audits.append(AuditEntry(stored.state.subject, stored.state.status, final.status, cause.key,
                                     f"events folded again in created order after {cause.id} arrived: "
                                     f"{steps[-1].outcome.reason}", now, table.version, cause.id, "stripe"))
        customer, subscription = fold.ids
        watermark = max([stored.watermark or 0.0] + [e.created for e, _ in incoming])
        keep = bool(later) and not fold.linking
        follows = final.follows
        new = replace(stored, state=final, fold_state=folded, watermark=watermark, confirmed_at=now,
                      stripe_customer=_newer(stored.stripe_customer, customer, keep),
                      stripe_subscription=follows.id if follows is not None else
                      _newer(stored.stripe_subscription, subscription, keep))
        fresh = mine if not fold.stored_rows else set()
        return Change(new, stored.version, tuple(audits),
                      new_events=tuple(r for r in rows if r.id in fresh),
                      replayed_events=tuple(r for r in rows if r.id not in fresh), payments=fold.payments,
                      links=_links(stored.state, final, [e for e, _ in incoming]),
                      grants=_grants(table, incoming), reversals=_reversals(incoming))

    def _timer_audits(self, table: StateTable, outcomes) -> list[AuditEntry]:
        return [AuditEntry(o.before.subject, o.before.status, o.state.status, o.trigger, o.reason, o.state.since,
                           table.version, None, "timer") for o in outcomes if o.moved]

    def _audits(self, table: StateTable, step, now: float) -> list[AuditEntry]:
        out = self._timer_audits(table, step.timers)
        if step.outcome.moved:
            o = step.outcome
            out.append(AuditEntry(o.before.subject, o.before.status, o.state.status, o.trigger, o.reason,
                                  o.state.since, table.version, step.event.id, "stripe"))
        return out

    def _stale(self, stored: StoredSubject, fold: _Fold, now: float, reason: str = _AFTER_ADMIN) -> Change:
        """The events recorded `stale` (why: `reason`), the subject's status left as it is. What they say of whose
        Stripe ids still holds: their subscriptions, charges and payment intents are linked to the subject, and
        its customer and subscription are kept where it has none yet (those it has come from newer events), so
        that the events naming only those ids find it."""
        rows = tuple(replace(r, outcome="stale", reason=reason) for _, r in fold.incoming)
        grants = _grants(self.table, fold.incoming)      # money paid grants its credits, whatever an admin did
        reversals = _reversals(fold.incoming)            # and money back takes them back
        customer, subscription = fold.ids
        new = replace(stored, confirmed_at=now, stripe_customer=stored.stripe_customer or customer,
                      stripe_subscription=stored.stripe_subscription or subscription)
        links = _stale_links(stored.state, [e for e, _ in fold.incoming])
        if fold.stored_rows:     # adopted pending events: their rows exist already and are updated, not inserted
            return Change(new, stored.version, replayed_events=rows, grants=grants, links=links, reversals=reversals)
        return Change(new, stored.version, new_events=rows, grants=grants, links=links, reversals=reversals)

    def _log(self, change: Change, stored: StoredSubject) -> None:
        for audit in change.audits:
            self.gate.metrics.transitions.labels(audit.trigger.split(":")[0], audit.to_status).inc()
            log(logging.INFO, "transition", subject=audit.subject, trigger=audit.trigger, from_status=audit.from_status,
                to_status=audit.to_status, reason=audit.reason, cause_id=audit.cause_id, actor=audit.actor)


def _links(before: SubjectState, after: SubjectState, events: list[StripeEvent]) -> tuple[str, ...]:
    """Stripe ids the fold links to the subject that it had not: subscriptions it had not seen (those it had
    were linked when first seen, or by migration subscriptions_and_links), and the charges and payment intents
    of the events."""
    known = {s.id for s in before.subscriptions}
    ids = [s.id for s in after.subscriptions if s.id not in known]
    for event in events:
        ids.extend(stripe_refs(event.object).payments)
    return tuple(dict.fromkeys(ids))


def _stale_links(state: SubjectState, events: list[StripeEvent]) -> tuple[str, ...]:
    """The Stripe ids events not folded in link to the subject that it had not: the subscriptions, charges and
    payment intents they name."""
    known = {s.id for s in state.subscriptions}
    ids = [i for e in events for refs in (stripe_refs(e.object),) for i in (refs.subscription, *refs.payments)
           if i and i not in known]
    return tuple(dict.fromkeys(ids))


def _grants(table: StateTable, incoming) -> tuple:
    """The credits the events grant (a paid one-time Checkout of credit packs): made with their commit, by ids the
    same payment always gives, so a repeat or a refold grants nothing more."""
    return tuple(g for e, _ in incoming for g in table.credits.purchased(e.type, e.object, e.created))


def _reversals(incoming) -> tuple[MoneyBack, ...]:
    """The money the events say came back of payments (a refund, a lost dispute): recorded with their commit, once
    each, and what they take of the credits those payments bought taken with it."""
    return tuple(f for e, _ in incoming for f in (money_back(e.type, e.id, e.object, e.created),) if f is not None)


def _news(table: StateTable, state: SubjectState, incoming: Incoming, now: float) -> bool:
    """Whether the events tell anything of the subject's subscriptions it does not hold."""
    try:
        state = table.named(state, now)
        return any(table.apply(state, event, now).state.subscriptions != state.subscriptions for event, _ in incoming)
    except UnknownStatus:
        return True         # the fold says what to do about it


def _fold_ranks(steps) -> dict[str, int]:
    """Each tied update's place in its tie group (engine.tie_group), as the fold took them."""
    seen: dict[tuple[float, str], int] = {}
    ranks = {}
    for step in steps:
        group = tie_group(step.event)
        if group is not None:
            ranks[step.event.id] = seen[group] = seen.get(group, -1) + 1
    return ranks


def _in_fold_order(folded: list[tuple[StripeEvent, EventRecord]]) -> list[tuple[StripeEvent, EventRecord]]:
    """Stored events in the order their fold took them: event_order, but for the updates of each tie group
    (engine.tie_group), which took the group's places in the order of their fold_rank."""
    folded = sorted(folded, key=lambda pair: event_order(pair[0]))
    places: dict[tuple[float, str], list[int]] = {}
    for i, (event, _) in enumerate(folded):
        group = tie_group(event)
        if group is not None:
            places.setdefault(group, []).append(i)
    for at in places.values():
        if len(at) > 1:
            ranked = sorted((folded[i] for i in at), key=lambda pair: -1 if pair[1].fold_rank is None else
                            pair[1].fold_rank)
            for i, pair in zip(at, ranked):
                folded[i] = pair
    return folded


def _as_event(row: EventRecord) -> StripeEvent:
    body = json.loads(row.payload)
    return StripeEvent.of({**body, "type": row.type, "id": row.id}, row.created)


# What a fold may change of a state, compared to tell whether it changed anything: every field but the
# subject, when it entered its status and the plan version it was decided under.
_essence = attrgetter(*(f.name for f in fields(SubjectState) if f.name not in ("subject", "since", "plan_version")))


def _newer(current: str | None, seen: str | None, keep_current: bool) -> str | None:
    if seen is None:
        return current
    return current if keep_current and current else seen
