"""Reconciliation: ask Stripe's API about doubtful subjects (in grace or a billing problem, or not confirmed for a
while) and fold what their subscription says now, as the event that would have told us, then its latest invoice
when it is paid (a payment whose invoice.paid was lost: the subscription alone may not show it)."""
from __future__ import annotations

import json
import logging
from dataclasses import replace

from plangate.engine import StripeEvent, Subscription
from plangate.policy import TriggerKind

from ..gate import Gate, StoreUnavailable
from ..logs import log
from ..store import Change, StoredSubject
from .api import StripeUnavailable
from .ingest import Ingest
from .objects import ENDED

RECONCILE_BATCH = 200
UNANSWERED_IN_A_ROW = 3     # subjects Stripe did not answer for, one after another, that end a run


class Reconciler:
    def __init__(self, gate: Gate, ingest: Ingest):
        self.gate = gate
        self.ingest = ingest
        self._doubtful: tuple[object, tuple[str, ...]] = (None, ())

    @property
    def doubtful_statuses(self) -> tuple[str, ...]:
        """Grace statuses, and where their timers lead (the billing problem once grace runs out), under the
        plan the gate runs now."""
        table, statuses = self._doubtful
        if table is not self.gate.table:
            table = self.gate.table
            plan = table.plan
            grace = {s.name for s in plan.statuses if s.grace}
            after_grace = {t.target for t in plan.transitions if t.trigger.kind is TriggerKind.TIMER
                           and grace & set(plan.sources_of(t))}
            statuses = tuple(s.name for s in plan.statuses if s.name in grace | after_grace)
            self._doubtful = (table, statuses)
        return statuses

    async def close(self) -> None:
        await self.ingest.api.close()

    async def run(self) -> int:
        """Ask Stripe for the subscription of each doubtful subject and apply what it says; how many changed."""
        if not self.gate.config.stripe_secret_key:
            return 0
        now = self.gate.clock()
        subjects = await self.gate.timed(
            "doubtful", self.gate.store.doubtful(self.doubtful_statuses, now - self.gate.config.reconcile_after,
                                                 RECONCILE_BATCH), timeout=30.0)
        changed, unanswered, in_a_row, unknown = 0, 0, 0, []
        for stored in subjects:
            try:
                sub = await self.ingest.api.subscription(stored.stripe_subscription)
            except StripeUnavailable as exc:    # asked again next run; the subjects after it are asked now
                unanswered += 1
                if unanswered == 1:
                    log(logging.WARNING, "reconcile_unanswered", subject=stored.state.subject, error=str(exc))
                in_a_row += 1
                if in_a_row == UNANSWERED_IN_A_ROW:     # Stripe is down, not one subject: the next run goes on
                    break
                continue
            in_a_row = 0
            if sub is None:
                unknown.append(stored.state.subject)
                await self._asked(stored, now)
                continue
            invoice = sub.get("latest_invoice")
            if isinstance(invoice, dict):
                sub = {**sub, "latest_invoice": invoice.get("id")}      # as an event carries it
            applied = await self._fold(_synthetic(sub, now, stored.state.subscriptions), record_noop=False)
            paid = _paid(invoice) if not applied and sub.get("status") not in ENDED else None
            if paid is not None:
                # The subscription alone changed nothing: its latest invoice, paid, may. Folded where it happened,
                # as its late webhook would be (an admin's decision made since stands), and recorded, so once per
                # invoice (a later failure of the subscription is a newer invoice).
                applied |= await self._fold(paid, record_noop=True)
            changed += applied
        if unanswered > 1:
            log(logging.WARNING, "reconcile_unanswered", subjects=unanswered, why="Stripe did not answer for "
                "them (or refused the key): asked again at the next run")
        if unknown:
            log(logging.WARNING, "reconcile_unknown_subscription", subjects=len(unknown), first=unknown[0],
                why="Stripe knows no such subscription (another account, or test-mode ids under a live key)")
        return changed

    async def _asked(self, stored: StoredSubject, now: float) -> None:
        """A subject whose subscription Stripe does not know: nothing to apply, but asked now, so that it goes after
        the others in the next run's batch (the least recently confirmed first) instead of holding its first places
        for ever. A change made meanwhile (a version conflict) leaves it as it is."""
        subject = stored.state.subject
        try:
            await self.gate.timed("save", self.gate.store.commit(Change(replace(stored, confirmed_at=now),
                                                                        stored.version)),
                                  shield=True, invalidates=lambda _: (subject,))
        except StoreUnavailable:
            return      # counted and logged by the gate; asked again next run, the others are asked now
        self.gate.invalidate(subject)

    async def _fold(self, event: StripeEvent, *, record_noop: bool) -> bool:
        """The made-up event folded as a delivered one would be; whether it was applied."""
        data: dict = {"object": event.object}
        if event.previous is not None:
            data["previous_attributes"] = event.previous
        received = await self.ingest.receive(event, json.dumps(
            {"id": event.id, "type": event.type, "created": event.created, "data": data}), record_noop=record_noop)
        return received.outcome == "applied"


def _synthetic(sub: dict, now: float, known: tuple[Subscription, ...]) -> StripeEvent:
    """What Stripe's subscription says now, as the event that would have told us: with the status the subject
    last knew of it as the previous attributes, when Stripe's differs (past_due then, active now: what the
    updates the gate missed said between them). A plan tells a payment's recovery from any other update that
    says `active` by that change of status."""
    kind = "customer.subscription.deleted" if sub.get("status") in ENDED else "customer.subscription.updated"
    was = next((s.status for s in known if s.id == sub.get("id")), None)
    previous = {"status": was} if was is not None and was != sub.get("status") else None
    return StripeEvent(kind, sub, f"reconcile_{sub.get('id')}_{int(now * 1000)}", now, previous)


def _paid(invoice) -> StripeEvent | None:
    """The subscription's latest invoice, when it is paid, as the invoice.paid event Stripe sent when it was."""
    if not isinstance(invoice, dict) or invoice.get("status") != "paid":
        return None
    paid_at = (invoice.get("status_transitions") or {}).get("paid_at")
    if not isinstance(paid_at, int) or isinstance(paid_at, bool):
        return None
    return StripeEvent("invoice.paid", invoice, f"reconcile_{invoice.get('id')}", paid_at)
