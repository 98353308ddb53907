"""Overage reported to Stripe as billing meter events (POST /v1/billing/meter_events, through the `stripe` package),
and checked against Stripe's own sums.

Each counted piece of work's overage is a report row, written with its count (never lost with a crash). The `report`
job sends the due ones a batch at a time, a few at once, batch after batch until none is due (or the run's time is
spent); each event carries the report's identifier, so a report sent twice (a timeout, a crash before its row said
`sent`) is counted once by Stripe: a second recording is refused as "already exists", read as sent. Each attempt's
request has an idempotency key of its own (the identifier, then the identifier and the attempt's number): Stripe
answers a key with its first answer for 24 hours, a 500 included, so one key for every attempt held a report back
for a day after one server error. A transient failure (unreachable, 429, 5xx) leaves the report pending, retried
later with a growing pause; one Stripe refuses (4xx: an unknown customer or meter, a timestamp older than 35 days,
its idempotency key already used with other parameters) is kept, `refused`, with Stripe's message: visible in GET
/v1/overage and the metrics, never dropped. A report whose subject has no Stripe customer yet waits (pending) for
one.

Reconciliation asks Stripe for each meter's summaries per customer over the last day (whole minutes, as Stripe
aggregates them, until a few minutes ago: Stripe processes events asynchronously) and compares them with what was
sent; a difference is logged and shown, not resent (Stripe's identifiers dedupe for 24 hours only).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

import stripe
from stripe.params.billing import MeterEventCreateParams

from ..gate import Gate
from ..logs import log
from ..store import OverageReport
from ..store._credits import KEY_CONFLICT
from .api import ASK_TIMEOUT, StripeApi

REPORT_BATCH = 200
SENDING_AT_ONCE = 8
RETRY_FIRST = 30.0          # seconds before the first retry; doubled each attempt
RETRY_MOST = 3600.0
NO_CUSTOMER_PAUSE = 300.0   # a report whose subject has no Stripe customer yet is looked at again this often
RUN_BUDGET = 40.0           # seconds a run goes on taking batches (the job runs every minute)
STRIPE_OLDEST = 35 * 86400  # Stripe takes a meter event's timestamp within the past 35 days
RESEND_MARGIN = 3600        # a refused report is resent only while it has this long left to reach Stripe
RESEND_BATCH = 2000         # refused reports made pending again a transaction
RECONCILE_SPAN = 86400      # reconciliation compares the last day...
RECONCILE_SETTLE = 600      # ...until this long ago, of what reached Stripe at least this long ago
_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError, TimeoutError)


@dataclass(frozen=True)
class Checked:
    """What the last reconciliation found: per (customer, event name) the value sent and the value Stripe sums."""

    at: float
    start: float
    end: float
    differences: tuple[tuple[str, str, int, int], ...]     # (customer, event name, sent, Stripe's)
    compared: int

    def to_dict(self) -> dict:
        return {"at": self.at, "start": self.start, "end": self.end, "compared": self.compared,
                "differences": [{"customer": c, "event_name": e, "sent": s, "stripe": t}
                                for c, e, s, t in self.differences]}


class MeterEvents:
    def __init__(self, gate: Gate, api: StripeApi):
        self.gate = gate
        self.api = api
        self.last_check: Checked | None = None

    async def send_due(self) -> tuple[int, int, int]:
        """Send the reports due now: (sent, left for a retry, refused)."""
        if not self.api.configured:
            return 0, 0, 0
        now, loop = self.gate.clock(), asyncio.get_running_loop()
        ends = loop.time() + RUN_BUDGET
        totals = {"sent": 0, "pending": 0, "refused": 0}
        # Each batch's reports leave the due ones (sent, refused, or due again only after a pause): the next batch
        # is the next reports due.
        while True:
            due = await self.gate.timed("overage", self.gate.store.overage_due(now, REPORT_BATCH), timeout=30.0)
            if not due:
                break
            for status, n in (await self._send_batch(due, now)).items():
                totals[status] += n
            if len(due) < REPORT_BATCH or loop.time() >= ends:
                break
        return totals["sent"], totals["pending"], totals["refused"]

    async def _send_batch(self, due: list[OverageReport], now: float) -> dict[str, int]:
        """One batch sent, a few at once, and every outcome written: how many were sent, left, refused."""
        turns = asyncio.Semaphore(SENDING_AT_ONCE)

        async def one(report: OverageReport) -> OverageReport:
            async with turns:
                try:
                    return await self._send(report, now)
                except Exception as exc:    # noqa: BLE001 - the batch's other outcomes must be recorded
                    log(logging.ERROR, "overage_send_failed", report=report.identifier, subject=report.subject,
                        error=f"{type(exc).__name__}: {exc}")
                    tried = replace(report, attempts=report.attempts + 1)     # each retry waits longer
                    return self._later(tried, now, f"{type(exc).__name__}: {exc}")

        done = await asyncio.gather(*(one(r) for r in due))
        await self.gate.timed("overage", self.gate.store.update_reports(list(done)), shield=True, timeout=30.0)
        counts = {status: sum(1 for r in done if r.status == status) for status in ("sent", "pending", "refused")}
        for result, status in (("sent", "sent"), ("retry", "pending"), ("refused", "refused")):
            if counts[status]:
                self.gate.metrics.overage_reports.labels(result).inc(counts[status])
        return counts

    async def _send(self, report: OverageReport, now: float) -> OverageReport:
        customer = report.stripe_customer or await self._customer(report.subject)
        if customer is None:
            return replace(report, next_attempt_at=now + NO_CUSTOMER_PAUSE,
                           last_error="the subject has no Stripe customer yet")
        report = replace(report, stripe_customer=customer, attempts=report.attempts + 1)
        params: MeterEventCreateParams = {
            "event_name": report.event_name, "identifier": report.identifier, "timestamp": int(report.at),
            "payload": {"stripe_customer_id": customer, "value": str(report.value)}}
        key = report.identifier if report.attempts == 1 else f"{report.identifier}:{report.attempts}"
        try:
            async with asyncio.timeout(ASK_TIMEOUT):
                await self.api.client().v1.billing.meter_events.create_async(params, {"idempotency_key": key})
        except stripe.InvalidRequestError as exc:
            message = str(exc.user_message or exc)
            if "identifier" in message and "already" in message:     # sent before (its answer was lost)
                return replace(report, status="sent", sent_at=self.gate.clock(), last_error=None)
            log(logging.WARNING, "overage_refused", report=report.identifier, subject=report.subject,
                event_name=report.event_name, error=message)
            return replace(report, status="refused", last_error=f"Stripe refused it: {message}"[:500])
        except stripe.IdempotencyError as exc:
            message = str(exc.user_message or exc)
            if exc.http_status == 409 or "in-progress" in message:      # the same request still under way there
                return self._later(report, now, f"IdempotencyError: {message}")
            # Its key went with other parameters (the customer it was first sent for changed since): sending it
            # again after Stripe forgets the key (24 h) could bill it twice. Kept for a person to compare.
            log(logging.WARNING, "overage_refused", report=report.identifier, subject=report.subject,
                event_name=report.event_name, error=message)
            return replace(report, status="refused", last_error=f"{KEY_CONFLICT} ({message})"[:500])
        except (stripe.AuthenticationError, stripe.PermissionError) as exc:
            return self._later(report, now, f"Stripe refused the key: {exc.user_message or exc}")
        except _TRANSIENT as exc:
            return self._later(report, now, f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}")
        return replace(report, status="sent", sent_at=self.gate.clock(), last_error=None)

    @staticmethod
    def _later(report: OverageReport, now: float, error: str) -> OverageReport:
        pause = min(RETRY_FIRST * 2 ** min(max(report.attempts - 1, 0), 32), RETRY_MOST)     # 2**1024: no float
        return replace(report, next_attempt_at=now + pause, last_error=error[:500])

    async def _customer(self, subject: str) -> str | None:
        stored = await self.gate.timed("load", self.gate.store.load(subject))
        return stored.stripe_customer if stored is not None else None

    async def reconcile(self) -> Checked | None:
        """Compare what was sent over the last day with Stripe's meter summaries (logged when they differ)."""
        if not self.api.configured:
            return None
        now = self.gate.clock()
        end = (int(now) - RECONCILE_SETTLE) // 60 * 60
        start = end - RECONCILE_SPAN
        settled = now - RECONCILE_SETTLE
        sent = await self.gate.timed("overage", self.gate.store.overage_sent(start, end, settled), timeout=30.0)
        if not sent:
            self.last_check = Checked(now, start, end, (), 0)
            return self.last_check
        meters = await self._meters()
        differences = []
        compared = 0
        for customer, event_name, value, late in sent:
            meter = meters.get(event_name)
            # A report that reached Stripe lately (retried, or waiting for its customer) may not be in its sums
            # yet: this customer's event is compared up to the minute that report's work was counted in.
            until = end if late is None else int(late) // 60 * 60
            if until <= start:
                continue
            try:
                theirs = await self._summed(meter, customer, start, until) if meter else 0
            except (stripe.StripeError, TimeoutError) as exc:     # this customer's sum, not the others'
                log(logging.WARNING, "overage_reconcile_unanswered", customer=customer, event_name=event_name,
                    error=f"{type(exc).__name__}: {getattr(exc, 'user_message', None) or exc}")
                continue
            compared += 1
            if theirs != value:
                differences.append((customer, event_name, value, theirs))
                log(logging.WARNING, "overage_mismatch", customer=customer, event_name=event_name, sent=value,
                    stripe=theirs, start=start, end=until, meter=meter or "none with this event name")
        self.last_check = Checked(now, start, end, tuple(differences), compared)
        return self.last_check

    async def _meters(self) -> dict[str, str]:
        """Stripe's active meters, every page of them: event name -> meter id (an event name is one active
        meter's at most; an inactive meter sums nothing new)."""
        found: dict[str, str] = {}
        async with asyncio.timeout(ASK_TIMEOUT * 5):
            listed = await self.api.client().v1.billing.meters.list_async({"limit": 100, "status": "active"})
            async for meter in listed.auto_paging_iter():
                found[meter["event_name"]] = meter["id"]
        return found

    async def _summed(self, meter: str, customer: str, start: int, end: int) -> int:
        async with asyncio.timeout(ASK_TIMEOUT):
            listed = await self.api.client().v1.billing.meters.event_summaries.list_async(
                meter, {"customer": customer, "start_time": start, "end_time": end, "limit": 100})
        return int(sum(float(s.get("aggregated_value", 0)) for s in listed.to_dict().get("data", [])))
