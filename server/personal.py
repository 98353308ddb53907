"""What the gate keeps about people: Stripe payloads reduced once Stripe can no longer fold them again, and the
erasure of a subject (its rows kept under a stable pseudonym, its personal data gone).

A pseudonym is an HMAC-SHA256 of the subject id with PLANGATE_PSEUDONYM_SECRET: the same subject always gets the
same one (erasing twice, or events naming an erased subject, land on it), and without the secret nobody can tell
whose it is. Stripe ids of an erased subject stay while one of its subscriptions is live (its events must still
find it); once it ended, the retention job replaces them by pseudonyms too.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .gate import MAX_CONFLICT_RETRIES, Gate, StoreUnavailable
from .logs import log
from .store import AuditEntry, Erasure, EventRecord, StoredSubject, migration_number
from .stripe.objects import ENDED
from .stripe.reduction import Reducer

RETENTION_BATCH = 500
# The migration that brought retention: a store migrated across it had raw payloads, reduced once it is.
RETENTION_MIGRATION = migration_number("personal_data")
ERASURE_TIMEOUT = 60.0
PSEUDONYM_PREFIX = "erased_"     # what an erased subject is stored under: erased_ and 32 hex digits
# Keys whose value is a Stripe id, and the prefixes of ids that lead to a person (a price or a product does not).
_ID_KEYS = frozenset({"id", "customer", "subscription", "invoice", "charge", "payment_intent", "latest_invoice",
                      "latest_charge", "payment_method", "default_payment_method", "subscription_item",
                      "setup_intent"})
_PERSONAL_PREFIXES = ("cus_", "sub_", "in_", "il_", "ii_", "si_", "ch_", "py_", "pi_", "pm_", "src_", "card_",
                      "ba_", "cs_", "seti_", "re_", "dp_", "du_", "txn_", "cn_")


class ErasureUnavailable(Exception):
    """Erasure needs PLANGATE_PSEUDONYM_SECRET, and it is not set."""


class Pseudonyms:
    def __init__(self, secret: str):
        self._key = secret.encode()

    def _mac(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def subject(self, subject: str) -> str:
        return PSEUDONYM_PREFIX + self._mac("subject", subject)[:32]

    def stripe_id(self, value: str) -> str:
        """The id kept for a Stripe id of an erased subject: its kind (prefix) and a pseudonym. What follows a '/'
        (an undone refund's fact: the refund's id and /undone) stays, so that it still names its refund's pseudonym."""
        value, slash, tail = value.partition("/")
        prefix = value[:value.index("_") + 1] if "_" in value else ""
        return f"{prefix}erased{self._mac('stripe', value)[:24]}{slash}{tail}"


def pseudonyms_of(gate: Gate) -> Pseudonyms | None:
    secret = gate.config.pseudonym_secret
    return Pseudonyms(secret) if secret else None


@dataclass(frozen=True)
class Erased:
    """What an erasure did."""

    subject: str
    pseudonym: str
    already: bool = False          # erased before; nothing stored under the subject since
    known: bool = False            # a subject row was stored
    events: int = 0                # event rows rewritten
    stripe_ids_kept: bool = False  # a subscription is live: its Stripe ids stay until it ends

    def to_dict(self) -> dict:
        return {"subject": self.subject, "pseudonym": self.pseudonym, "erased": True, "already_erased": self.already,
                "known": self.known, "events": self.events, "stripe_ids_kept": self.stripe_ids_kept}


@dataclass(frozen=True)
class Retained:
    """What a retention run did: payloads reduced, payloads it could not reduce (kept, and logged), erased
    subjects whose Stripe ids it dropped."""

    reduced: int = 0
    kept: int = 0
    ids_dropped: int = 0


class PersonalData:
    def __init__(self, gate: Gate):
        self.gate = gate
        self.store = gate.store
        self._reducer = Reducer(gate.table)
        self.pseudonyms = pseudonyms_of(gate)

    @property
    def reducer(self) -> Reducer:
        """The reducer of the plan the gate decides with now: after a reload, payloads keep what the reloaded
        plan reads (its conditions and facts), not what the plan the gate started with read."""
        table = self.gate.table
        if self._reducer.table is not table:
            self._reducer = Reducer(table)
        return self._reducer

    # --- retention ----------------------------------------------------------------------------------

    async def retain(self) -> Retained:
        """Reduce the payloads of events older than PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS, drop the Stripe ids of
        erased subjects whose subscription ended, and let go of the database's copies of what was rewritten."""
        now = self.gate.clock()
        before = now - self.gate.config.payload_retention_days * 86400.0
        reduced, kept, after = 0, [], None
        while True:
            rows = await self.gate.timed("unreduced", self.store.unreduced(before, after, RETENTION_BATCH),
                                         timeout=ERASURE_TIMEOUT)
            done = []
            for row in rows:
                payload = self.reducer.reduce(row.payload)
                if payload is None:
                    kept.append(row.id)
                else:
                    done.append((row.id, payload))
                await asyncio.sleep(0)      # a batch is ~100 ms of reducing: requests go on meanwhile
            reduced += await self.gate.timed("reduce", self.store.reduce_payloads(done, now), shield=True,
                                             timeout=ERASURE_TIMEOUT)
            if len(rows) < RETENTION_BATCH:
                break
            after = (rows[-1].created, rows[-1].id)
        dropped = await self._drop_ended_ids(now)
        if reduced or dropped:
            await self._scrub()
        if kept:
            log(logging.WARNING, "payloads_kept", events=len(kept), first=kept[:10],
                why="reducing them would change what the gate reads of them; kept as Stripe sent them")
        return Retained(reduced, len(kept), dropped)

    async def after_migration(self, before: int, after: int) -> Retained | None:
        """After a migration across RETENTION_MIGRATION of a store that held events: reduce what is stored
        now, then rewrite the database without the free space the raw payloads left (SQLite: VACUUM)."""
        if not before or not before < RETENTION_MIGRATION <= after:
            return None
        retained = await self.retain()
        await self.gate.timed("compact", self.store.compact(), shield=True, timeout=3600.0)
        log(logging.INFO, "payloads_reduced", reduced=retained.reduced, kept=retained.kept,
            why=f"migration {RETENTION_MIGRATION}: payloads older than PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS")
        return retained

    async def _drop_ended_ids(self, now: float) -> int:
        if self.pseudonyms is None:
            return 0
        dropped, after = 0, ""
        while True:     # every page: those still live stay where they are, and must not hide the ones after them
            page = await self.gate.timed("erasures", self.store.erasures_keeping_ids(RETENTION_BATCH, after),
                                         timeout=ERASURE_TIMEOUT)
            for pseudonym in page:
                done = await self._erase(pseudonym, pseudonym, "retention", now)
                dropped += done is not None and not done.stripe_ids_kept
            if len(page) < RETENTION_BATCH:
                return dropped
            after = page[-1]

    # --- erasure ------------------------------------------------------------------------------------

    async def erase(self, subject: str, actor: str) -> Erased:
        """Erase a subject (idempotent). ErasureUnavailable without a pseudonym secret; StoreUnavailable when
        the store fails or the subject kept changing."""
        if self.pseudonyms is None:
            raise ErasureUnavailable("PLANGATE_PSEUDONYM_SECRET is not set: erasure needs it for stable pseudonyms")
        pseudonym = self.pseudonyms.subject(subject)
        done = await self._erase(subject, pseudonym, actor, self.gate.clock())
        if done is None:
            done = Erased(subject, pseudonym, already=True)
        else:
            await self._scrub()
        log(logging.INFO, "erased", pseudonym=pseudonym, actor=actor, already_erased=done.already,
            events=done.events, stripe_ids_kept=done.stripe_ids_kept)
        return done

    async def _scrub(self) -> None:
        """After what was rewritten has committed: a scrub that fails or runs out of time is logged (the next
        cleanup scrubs again), never the erasure's or the retention's failure."""
        try:
            scrubbed = await self.gate.timed("scrub", self.store.scrub(), shield=True, timeout=ERASURE_TIMEOUT)
        except StoreUnavailable as exc:
            scrubbed, why = False, f"the store failed or did not answer in time ({exc})"
        else:
            why = "the database was busy"
        if not scrubbed:
            log(logging.WARNING, "scrub_incomplete", why=f"{why}: copies of rewritten rows stay in its write-ahead "
                                                         "log until the next cleanup")

    async def is_erased(self, subject: str) -> bool:
        """Whether `subject` is the pseudonym of an erased subject (an event its Stripe ids lead to is concealed
        at once, as one that names the subject)."""
        return subject.startswith(PSEUDONYM_PREFIX) and await self.store.erased(subject)

    async def pseudonym_if_erased(self, subject: str) -> str | None:
        """The subject's pseudonym if it was erased (and not stored again since: the caller knows that)."""
        if self.pseudonyms is None:
            return None
        pseudonym = self.pseudonyms.subject(subject)
        return pseudonym if await self.store.erased(pseudonym) else None

    def conceal(self, payload: str, subject: str, pseudonym: str) -> str:
        """The payload of an event that names an erased subject, as the erasure left its others: reduced, with
        the pseudonym for the subject (Stripe ids stay: the erasure kept them, or they name nothing stored)."""
        return self._payload(payload, "", 0.0, subject, pseudonym, False)

    async def _erase(self, subject: str, pseudonym: str, actor: str, now: float) -> Erased | None:
        """One erasure, retried while the subject changes under it; None when there was nothing to do."""
        timed, store = self.gate.timed, self.store
        for _ in range(MAX_CONFLICT_RETRIES):
            stored = await timed("load", store.load(subject), timeout=ERASURE_TIMEOUT)
            customer, subscription = (stored.stripe_customer, stored.stripe_subscription) if stored else (None, None)
            events, invoices, grants, credit_ids = await timed(
                "personal_rows", store.personal_rows(subject, customer, subscription), timeout=ERASURE_TIMEOUT)
            # Any of its subscriptions still live keeps the Stripe ids (an add-on's beside an ended one's): its
            # events must still find the pseudonym.
            held = {subscription, *(s.id for s in stored.state.subscriptions)} - {None} if stored else set()
            live = any(_live(events, s) for s in held)
            if subject == pseudonym:
                if stored is None or live:
                    return None
            elif stored is None and not events and not invoices and not grants and \
                    not await timed("personal_rows", store.recent_grants(subject, 1), timeout=ERASURE_TIMEOUT) and \
                    await timed("erased", store.erased(pseudonym), timeout=ERASURE_TIMEOUT):
                return None     # erased before, and nothing under the id since (an admin's grant makes no row)
            erasure = self._erasure(subject, pseudonym, stored, events, invoices, grants, live, actor, now)
            if not live:
                ids = self._pseudonyms().stripe_id
                kept = tuple((i, ids(i)) for i in credit_ids if i.startswith(_PERSONAL_PREFIXES) and "_erased" not in i)
                erasure = replace(erasure, credit_ids=kept)
            if await timed("erase", store.erase(erasure), shield=True, timeout=ERASURE_TIMEOUT,
                           invalidates=lambda ok: (subject, pseudonym) if ok else ()):
                self.gate.invalidate(subject)
                self.gate.invalidate(pseudonym)
                return Erased(subject, pseudonym, known=stored is not None, events=len(events), stripe_ids_kept=live)
        raise StoreUnavailable("erase: the subject kept changing")

    def _pseudonyms(self) -> Pseudonyms:
        """The pseudonyms of an erasure under way (erase() refuses to start without them)."""
        if self.pseudonyms is None:
            raise ErasureUnavailable("PLANGATE_PSEUDONYM_SECRET is not set: erasure needs it for stable pseudonyms")
        return self.pseudonyms

    def _erasure(self, subject: str, pseudonym: str, stored: StoredSubject | None, events: list[EventRecord],
                 invoices: list[str], grants: list[str], live: bool, actor: str, now: float) -> Erasure:
        drop = not live
        row = audit = None
        if stored is not None:
            fold = self._state(stored.fold_state, pseudonym, drop) if stored.fold_state is not None else None
            row = replace(stored, state=self._state(stored.state, pseudonym, drop), fold_state=fold,
                          stripe_customer=None if drop else stored.stripe_customer,
                          stripe_subscription=None if drop else stored.stripe_subscription)
            why = ("personal data erased; Stripe ids kept while the subscription is live" if live else
                   "personal data erased" if subject != pseudonym else
                   "the erased subject's subscription ended: its Stripe ids replaced by pseudonyms")
            status = stored.state.status
            audit = AuditEntry(pseudonym, status, status, "erasure", why, now, self.gate.table.version, None, actor)
        ids = self._pseudonyms().stripe_id
        return Erasure(subject, pseudonym, stored.version if stored else 0, row,
                       tuple(self._rewritten(r, subject, pseudonym, drop) for r in events),
                       tuple((i, ids(i)) for i in invoices if not i.startswith("in_erased")) if drop else (),
                       drop, now, actor, audit, tuple(_pseudonymised_grants(grants, ids)) if drop else ())

    def _payload(self, payload: str, event_id: str, created: float, subject: str, pseudonym: str,
                 drop_ids: bool) -> str:
        reduced = self.reducer.reduce(payload, strict=False) or json.dumps(
            {"id": event_id, "type": "", "created": created, "data": {"object": {}}})
        body = _substituted(json.loads(reduced), subject, pseudonym, self._pseudonyms().stripe_id if drop_ids else None)
        return json.dumps(body, separators=(",", ":"))

    def _rewritten(self, row: EventRecord, subject: str, pseudonym: str, drop_ids: bool) -> EventRecord:
        before = row.state_before
        if before is not None and before.subject in (subject, pseudonym):
            before = self._state(before, pseudonym, drop_ids)
        # The Stripe ids its reason may quote ("about subscription sub_A7, but ... follows sub_B7"): its own, and
        # the subscriptions the subject held before it.
        quoted = () if not drop_ids else (row.stripe_customer, row.stripe_subscription, row.stripe_payment,
                                          row.stripe_payment_intent,
                                          *(s.id for s in (row.state_before.subscriptions if row.state_before else ())))
        return replace(row, payload=self._payload(row.payload, row.id, row.created, subject, pseudonym, drop_ids),
                       reason=self._reason(row.reason, subject, pseudonym, quoted),
                       subject=pseudonym if row.subject == subject else row.subject, state_before=before,
                       stripe_customer=None if drop_ids else row.stripe_customer,
                       stripe_subscription=None if drop_ids else row.stripe_subscription,
                       stripe_payment=None if drop_ids else row.stripe_payment,
                       stripe_payment_intent=None if drop_ids else row.stripe_payment_intent)

    def _reason(self, reason: str, subject: str, pseudonym: str, stripe_ids: Iterable[str | None] = ()) -> str:
        """An event's reason (the gate's words, which may quote the subject and Stripe ids) as the erasure leaves
        its payload: the pseudonym for the subject, and for each of `stripe_ids` (those dropped) its pseudonym.
        Each replaced where it stands whole: a plan's name that merely looks like an id (`in_trial`) stays."""
        ids = self._pseudonyms().stripe_id
        for old, new in ((subject, pseudonym), *((i, ids(i)) for i in stripe_ids if i and "_erased" not in i)):
            if old and old in reason:
                reason = re.sub(rf"(?<![\w@.+-]){re.escape(old)}(?![\w@+-]|\.\w)", new, reason)
        return reason

    def _state(self, state, pseudonym: str, drop_ids: bool):
        """A state of the subject under its pseudonym; the ids of its Stripe subscriptions replaced by theirs when
        Stripe ids are dropped (the same pseudonym as in the payloads, so the fold still matches them)."""
        state = state.with_(subject=pseudonym)
        if drop_ids and state.subscriptions:
            ids = self._pseudonyms().stripe_id
            state = state.with_(subscriptions=tuple(
                s if "_erased" in s.id else replace(s, id=ids(s.id)) for s in state.subscriptions))
        return state


def _substituted(value, subject: str, pseudonym: str, stripe_id, key: str | None = None):
    """A JSON value with the subject replaced by its pseudonym wherever it appears whole, and (stripe_id given)
    every Stripe id that leads to a person replaced by its pseudonym (the same one everywhere, so that what
    links events together still does)."""
    if isinstance(value, dict):
        return {k: _substituted(v, subject, pseudonym, stripe_id, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_substituted(v, subject, pseudonym, stripe_id, key) for v in value]
    if value == subject:
        return pseudonym
    if stripe_id is not None and isinstance(value, str) and key in _ID_KEYS and value.startswith(_PERSONAL_PREFIXES) \
            and "_erased" not in value:
        return stripe_id(value)
    return value


def _live(events: list[EventRecord], subscription: str) -> bool:
    """Is the subscription live, as the newest of the events about it says (no word of its end: live)?"""
    status = None
    for row in sorted(events, key=lambda r: (r.created, r.id)):
        try:
            obj = json.loads(row.payload)["data"]["object"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(obj, dict) and obj.get("object") == "subscription" and obj.get("id") == subscription:
            status = "canceled" if row.type == "customer.subscription.deleted" else obj.get("status")
    return status not in ENDED


def _pseudonymised_grants(grants: list[str], ids: Callable[[str], str]):
    """(id stored, id kept) of bought grants ("SESSION:LINE"): the session's id replaced as the payloads' is, so
    the grant a refold of the rewritten event makes is this one."""
    for grant in grants:
        session, sep, line = grant.rpartition(":")
        if sep and session and "_erased" not in session:
            yield grant, f"{ids(session)}:{line}"
