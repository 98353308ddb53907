"""Pending events adopted late: those a committed link places, whose adoption after that commit failed.

A linking delivery commits, then adopts what waited for its Stripe ids (Ingest.adopt_pending). When that fails
(the store fails or times out, the process stops), the delivery is answered 5xx and Stripe delivers it again;
so a repeat delivery adopts what waits for the ids it names, and the sweep adopts every pending event that
find_subject places now. Each adoption reads the waiting events again after loading the subject and commits on
its version: however many of them meet (other deliveries, other nodes), each event is folded in once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from plangate.engine import Refs

from ..gate import StoreUnavailable
from ..logs import Throttle, log
from ..store import EventRecord

if TYPE_CHECKING:
    from .ingest import Ingest, Received

ADOPT_BATCH = 200           # pending events read at a time, in created order
MAX_ADOPT_ROUNDS = 50
ADOPTION_TIMEOUT = 10.0     # one subject's adoption: the store calls of a webhook's (ingest.WEBHOOK_STORE_TIMEOUT)
SCAN_TIMEOUT = 30.0         # one batch's search: it reads every pending event no link names
MAX_FAILURES = 10           # subjects whose adoption failed, after which a sweep leaves the rest for the next


class LateAdoption:
    """The adoptions a repeat delivery and the sweep make, through the ingest's one door (adopt_pending)."""

    def __init__(self, ingest: Ingest):
        self.ingest = ingest
        self.gate = ingest.gate
        self._throttle = Throttle()     # a subject failing at every sweep is logged once per interval
        # Where the last pass stopped early (the created and id of the row it stopped at): the next starts after
        # it, so that subjects failing at every sweep never keep the events after them waiting; a pass that
        # reaches the end leaves the next to start from the beginning.
        self._resume: tuple[float, str] | None = None

    async def repeated(self, event_id: str, refs: Refs) -> tuple[str | None, str | None]:
        """A repeat delivery: the waiting events it names that a subject's link places now are adopted. (the
        subject, its status after) of the last adoption, else (None, None). StoreUnavailable propagates: 5xx,
        and Stripe delivers it again."""
        if not refs.any:
            return None, None
        rows = await self.gate.untimed("pending", self.ingest.store.pending(refs.customer, refs.subscription,
                                                                          refs.payments))
        adopted: list[str] = []
        last: Received | None = None
        for row in rows:
            if row.id not in adopted:
                received = await self._adopt(row)
                if received is not None:
                    adopted.extend(received.adopted)
                    last = received
        if last is None:
            return None, None
        self.gate.metrics.adopted_late.labels("redelivery").inc(len(adopted))
        log(logging.INFO, "pending_adopted_late", by="redelivery", event_id=event_id, subject=last.subject,
            events=adopted, status=last.status)
        return last.subject, last.status

    async def sweep(self) -> int:
        """Every pending event find_subject places now, adopted a batch at a time in created order; how many were.
        A subject whose adoption fails is logged and counted, and its events wait for the next sweep; the others
        go on, unless the store does not answer, or fails for MAX_FAILURES subjects: then the pass ends (the
        sweep's timers still run; the next pass starts where this one stopped)."""
        adopted = 0
        failed: list[str | None] = []      # the subjects that failed in this pass (None: before one was placed)
        after, self._resume = self._resume, None
        for _ in range(MAX_ADOPT_ROUNDS):
            try:
                rows = await self.gate.timed("pending_linked", self.ingest.store.pending_linked(after, ADOPT_BATCH),
                                             timeout=SCAN_TIMEOUT)
            except StoreUnavailable:        # counted and logged (throttled) as the store's error
                self._resume = after
                break
            adopted_now, stopped_at = await self._batch(rows, failed)
            adopted += adopted_now
            if stopped_at is not None:
                self._resume = stopped_at
                break
            if len(rows) < ADOPT_BATCH:
                break
            after = (rows[-1].created, rows[-1].id)
        else:
            self._resume = after            # MAX_ADOPT_ROUNDS batches: the next pass goes on from here
        return adopted

    async def _batch(self, rows: list[EventRecord], failed: list[str | None]) \
            -> tuple[int, tuple[float, str] | None]:
        """One batch's adoptions: (events adopted, the row the pass stopped at, or None: it goes on)."""
        adopted: set[str] = set()
        subjects: set[str] = set()
        failed_before, stopped = len(failed), False
        for row in rows:
            if row.id in adopted:
                continue
            subject = None
            try:
                async with asyncio.timeout(ADOPTION_TIMEOUT):
                    subject = await self._place(row)
                    if subject is None or subject in failed:
                        continue
                    received = await self.ingest.adopt_pending(subject, *_ids(row))
            except TimeoutError as exc:
                self.gate.store_failed("adopt", exc, f"no answer within {ADOPTION_TIMEOUT}s")
                self._failed(subject, row, exc, failed)
                stopped = True      # waiting out the budget again for each event would only hold the sweep back
            except Exception as exc:    # noqa: BLE001 - whatever one subject does, the others go on
                self._failed(subject, row, exc, failed)
                stopped = len(failed) >= MAX_FAILURES
            else:
                if received is not None:
                    adopted.update(received.adopted)
                    subjects.add(subject)
            if stopped:
                log(logging.ERROR, "adoption_stopped", retry="at the next sweep, after this event",
                    event_id=row.id, failed=len(failed), why="the store did not answer" if len(failed) <
                    MAX_FAILURES else f"the adoptions of {len(failed)} subjects failed")
                break
        if adopted:
            self.gate.metrics.adopted_late.labels("sweep").inc(len(adopted))
        level = logging.INFO if adopted or len(failed) > failed_before else logging.DEBUG
        log(level, "pending_adopted_late", by="sweep", found=len(rows), adopted=len(adopted), subjects=len(subjects),
            failed=len(failed) - failed_before)
        return len(adopted), (row.created, row.id) if stopped else None

    async def _place(self, row: EventRecord) -> str | None:
        """The subject a waiting event's Stripe ids place now."""
        return await self.gate.untimed("find_subject", self.ingest.store.find_subject(*_ids(row)))

    async def _adopt(self, row: EventRecord) -> Received | None:
        """The subject the waiting event's Stripe ids place now adopts it and what waits for the same ids, as the
        delivery that linked them would have. None when none is placed, or the event was adopted meanwhile."""
        subject = await self._place(row)
        return None if subject is None else await self.ingest.adopt_pending(subject, *_ids(row))

    def _failed(self, subject: str | None, row: EventRecord, exc: BaseException, failed: list[str | None]) -> None:
        failed.append(subject)
        self.gate.metrics.sweep_failures.labels("adopt").inc()
        if self._throttle.ready(f"adopt_{subject}"):
            log(logging.ERROR, "adoption_failed", subject=subject, event_id=row.id, retry="at the next sweep",
                error=f"{type(exc).__name__}: {exc}")


def _ids(row: EventRecord) -> tuple[str | None, str | None, tuple[str, ...]]:
    """The Stripe ids a waiting event was kept for: (customer, subscription, its charge and payment intent)."""
    payments = tuple(dict.fromkeys(p for p in (row.stripe_payment, row.stripe_payment_intent) if p))
    return row.stripe_customer, row.stripe_subscription, payments
