"""Reconciliation: ask Stripe's API about doubtful subjects (in grace or a billing problem, or not confirmed for a
while) and fold what their subscription says now, as the event that would have told us."""
from __future__ import annotations

import json
import logging

import stripe

from plangate.engine import StripeEvent
from plangate.policy import TriggerKind

from ..gate import Gate
from ..logs import log
from .ingest import Ingest
from .objects import ENDED

RECONCILE_BATCH = 200


class Reconciler:
    def __init__(self, gate: Gate, ingest: Ingest):
        self.gate = gate
        self.ingest = ingest
        self._doubtful: tuple[object, tuple[str, ...]] = (None, ())
        self._stripe: stripe.StripeClient | None = None
        self._http: stripe.AIOHTTPClient | None = None

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
        if self._http is not None:
            await self._http.close_async()
            self._http, self._stripe = None, None

    async def run(self) -> int:
        """Ask Stripe for the subscription of each doubtful subject and apply what it says; how many changed."""
        if not self.gate.config.stripe_secret_key:
            return 0
        now = self.gate.clock()
        subjects = await self.gate.timed(
            "doubtful", self.gate.store.doubtful(self.doubtful_statuses, now - self.gate.config.reconcile_after,
                                                 RECONCILE_BATCH), timeout=30.0)
        changed = 0
        for stored in subjects:
            sub = await self._subscription(stored.stripe_subscription)
            if sub is None:
                continue
            event = _synthetic(sub, now)
            received = await self.ingest.receive(event, json.dumps(
                {"id": event.id, "type": event.type, "created": event.created, "data": {"object": sub}}),
                record_noop=False)
            changed += received.outcome == "applied"
        return changed

    async def _subscription(self, subscription_id: str) -> dict | None:
        if self._stripe is None:
            self._http = stripe.AIOHTTPClient()
            self._stripe = stripe.StripeClient(
                self.gate.config.stripe_secret_key, http_client=self._http,
                base_addresses={"api": self.gate.config.stripe_api_base}, max_network_retries=2)
        try:
            sub = await self._stripe.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.InvalidRequestError as exc:
            log(logging.WARNING, "reconcile_skipped", subscription=subscription_id, error=str(exc.user_message))
            return None
        return sub.to_dict()


def _synthetic(sub: dict, now: float) -> StripeEvent:
    """What Stripe's subscription says now, as the event that would have told us."""
    kind = "customer.subscription.deleted" if sub.get("status") in ENDED else "customer.subscription.updated"
    return StripeEvent(kind, sub, f"reconcile_{sub.get('id')}_{int(now * 1000)}", now)
