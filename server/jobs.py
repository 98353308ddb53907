"""The gate's scheduled jobs (aiocron): fire due timers, reconcile doubtful subjects with Stripe,
drop usage of windows long past. A failing run is logged and counted, never fatal."""
from __future__ import annotations

import json
import logging
import time

import aiocron
import stripe

from plangate.engine import StripeEvent
from plangate.policy import TriggerKind

from .gate import Gate, StoreUnavailable
from .ingest import Ingest
from .logs import log

SWEEP_BATCH = 1000
MAX_SWEEP_ROUNDS = 100
RECONCILE_BATCH = 200
_ENDED = {"canceled", "incomplete_expired"}


class Jobs:
    def __init__(self, gate: Gate, ingest: Ingest):
        self.gate = gate
        self.ingest = ingest
        self.config = gate.config
        self._crons: list[aiocron.Cron] = []
        plan = gate.table.plan
        # Doubtful: grace statuses, and where their timers lead (the billing problem once grace runs out).
        grace = {s.name for s in plan.statuses if s.grace}
        after_grace = {t.target for t in plan.transitions if t.trigger.kind is TriggerKind.TIMER
                       and grace & set(plan.sources_of(t))}
        self.doubtful_statuses = tuple(s.name for s in plan.statuses if s.name in grace | after_grace)
        self._stripe: stripe.StripeClient | None = None
        self._http: stripe.AIOHTTPClient | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, schedule in (("sweep", self.config.sweep_schedule),
                               ("reconcile", self.config.reconcile_schedule),
                               ("cleanup", self.config.cleanup_schedule)):
            self._crons.append(aiocron.crontab(schedule, func=self._runner(name), start=True))

    async def stop(self) -> None:
        for cron in self._crons:
            cron.stop()
        self._crons.clear()
        if self._http is not None:
            await self._http.close_async()
            self._http, self._stripe = None, None

    def _runner(self, name: str):
        async def run():
            await self.run(name)
        return run

    async def run(self, name: str):
        """Run one job now (on one node at a time); its failure is logged and counted, and returns None."""
        job = {"sweep": self.sweep, "reconcile": self.reconcile, "cleanup": self.cleanup}[name]
        started = time.perf_counter()
        try:
            async with self.gate.store.exclusive(name) as mine:
                result = await job() if mine else 0
        except Exception as exc:   # a job must never take the server down
            self.gate.metrics.jobs.labels(name, "error").inc()
            log(logging.ERROR, "job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return None
        self.gate.metrics.jobs.labels(name, "ok").inc()
        log(logging.DEBUG, "job_done", job=name, result=result, seconds=round(time.perf_counter() - started, 4))
        return result

    # --- jobs ------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Fire every timer due now, found through the timer index, a batch at a time; how many moved."""
        moved = 0
        for _ in range(MAX_SWEEP_ROUNDS):
            found, moved_now = await self.gate.sweep(SWEEP_BATCH)
            moved += moved_now
            if found < SWEEP_BATCH:
                break
        return moved

    async def reconcile(self) -> int:
        """Ask Stripe for the subscription of each doubtful subject and apply what it says."""
        if not self.config.stripe_secret_key:
            return 0
        now = self.gate.clock()
        subjects = await self.gate._timed(
            "doubtful", self.gate.store.doubtful(self.doubtful_statuses, now - self.config.reconcile_after,
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
                self.config.stripe_secret_key, http_client=self._http,
                base_addresses={"api": self.config.stripe_api_base}, max_network_retries=2)
        try:
            sub = await self._stripe.v1.subscriptions.retrieve_async(subscription_id)
        except stripe.InvalidRequestError as exc:
            log(logging.WARNING, "reconcile_skipped", subscription=subscription_id, error=str(exc.user_message))
            return None
        return sub.to_dict()

    async def cleanup(self) -> tuple[int, int]:
        now = self.gate.clock()
        usage_before = int(now - self.config.usage_retention_days * 86400)
        keys_before = now - self.config.idempotency_retention_days * 86400
        return await self.gate._timed("cleanup", self.gate.store.cleanup(usage_before, keys_before), timeout=60.0)


def _synthetic(sub: dict, now: float) -> StripeEvent:
    """What Stripe's subscription says now, as the event that would have told us."""
    kind = "customer.subscription.deleted" if sub.get("status") in _ENDED else "customer.subscription.updated"
    return StripeEvent(kind, sub, f"reconcile_{sub.get('id')}_{int(now * 1000)}", now)
