"""The gate's scheduled jobs (aiocron): adopt pending Stripe events a link places now and fire due timers,
reconcile doubtful subjects with Stripe, drop usage of windows long past and reduce personal data past its
retention (the reconciliation itself is stripe.reconcile, the adoption stripe.adoption, retention is personal).
A failing run is logged and counted, never fatal."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiocron

from .gate import Gate
from .logs import log
from .personal import PersonalData
from .stripe.ingest import Ingest
from .stripe.meter_events import MeterEvents
from .stripe.reconcile import Reconciler

SWEEP_BATCH = 1000
MAX_SWEEP_ROUNDS = 100


@dataclass(frozen=True, slots=True)
class JobRun:
    """A job's last run on this node (the console's jobs page): when, how long, and its result or its error."""

    at: float
    seconds: float
    ok: bool
    outcome: str


class JobRunning(Exception):
    """Another PostgreSQL node runs the job now: the route's run did nothing."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class Jobs:
    def __init__(self, gate: Gate, ingest: Ingest, personal: PersonalData | None = None):
        self.gate = gate
        self.ingest = ingest
        self.personal = personal or PersonalData(gate)
        self.config = gate.config
        self._crons: list[aiocron.Cron] = []
        self.reconciler = Reconciler(gate, ingest)
        self.meter_events = MeterEvents(gate, ingest.api)
        self.last_runs: dict[str, JobRun] = {}
        self.last_failures: dict[str, JobRun] = {}
        self._running: dict[str, asyncio.Lock] = {}     # per job: held while it runs on this node

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for name, schedule in (("sweep", self.config.sweep_schedule),
                               ("reconcile", self.config.reconcile_schedule),
                               ("cleanup", self.config.cleanup_schedule),
                               ("report", self.config.report_schedule)):
            self._crons.append(aiocron.crontab(schedule, func=self._runner(name), start=True))

    async def stop(self) -> None:
        for cron in self._crons:
            cron.stop()
        self._crons.clear()
        await self.reconciler.close()

    def _runner(self, name: str):
        async def run():
            await self.run(name)
        return run

    async def run(self, name: str, *, wait: bool = False):
        """Run one job now (on one node at a time); its failure is logged and counted, and returns None. One run
        of a job at a time on this node too (a report run slower than its schedule, or one asked for by the
        route meanwhile, sent Stripe the same reports beside it): `wait` (the route) runs it once the run under
        way ends; else (the schedule) a run is skipped, unrecorded, and answers 0. While another PostgreSQL node
        runs it, the schedule's run answers 0 and the route's raises JobRunning (nothing done, nothing recorded)."""
        job = {"sweep": self.sweep, "reconcile": self.reconcile, "cleanup": self.cleanup, "report": self.report}[name]
        running = self._running.setdefault(name, asyncio.Lock())
        if running.locked() and not wait:
            log(logging.DEBUG, "job_skipped", job=name, why="a run of it is under way on this gate")
            return 0
        result: object = 0
        async with running:
            started, at = time.perf_counter(), self.gate.clock()
            try:
                async with self.gate.store.exclusive(name) as mine:
                    if not mine and wait:
                        raise JobRunning(name)
                    result = await job() if mine else 0
            except JobRunning:
                raise
            except Exception as exc:   # a job must never take the server down
                self.last_runs[name] = self.last_failures[name] = JobRun(
                    at, time.perf_counter() - started, False, f"{type(exc).__name__}: {exc}")
                self.gate.metrics.jobs.labels(name, "error").inc()
                log(logging.ERROR, "job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
                return None
        self.last_runs[name] = JobRun(at, time.perf_counter() - started, True, _in_words(name, result))
        self.gate.metrics.jobs.labels(name, "ok").inc()
        log(logging.DEBUG, "job_done", job=name, result=result, seconds=round(time.perf_counter() - started, 4))
        return result

    # --- jobs ------------------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Adopt the pending Stripe events a link places now (their adoption failed after the link committed), then
        fire every timer due now, found through the timer index, a batch at a time; how many timers moved.
        Adopted first: a paid invoice folded in before a trial's end fires moves the subject to paid, not through
        a billing problem."""
        await self.ingest.late.sweep()
        moved = 0
        failed: set[str] = set()        # subjects that failed in this sweep: the next batches pass them over
        for _ in range(MAX_SWEEP_ROUNDS):
            found, moved_now = await self.gate.sweep(SWEEP_BATCH, failed)
            moved += moved_now
            if found < SWEEP_BATCH:
                break
        return moved

    async def reconcile(self) -> int:
        """Ask Stripe about each doubtful subject and apply what it says; how many changed. Then compare the overage
        sent over the last day with Stripe's meter summaries (differences are logged and shown in /v1/overage)."""
        changed = await self.reconciler.run()
        await self.meter_events.reconcile()
        return changed

    async def report(self) -> tuple[int, int, int]:
        """Send the overage reports due now to Stripe: (sent, left for a retry, refused)."""
        return await self.meter_events.send_due()

    async def cleanup(self) -> tuple[int, int, int, int]:
        """Drop usage of windows long past and old idempotency keys, reduce Stripe payloads past their retention,
        drop the Stripe ids of erased subjects whose subscription ended: (usage rows, keys, payloads reduced,
        erased subjects whose Stripe ids were dropped)."""
        now = self.gate.clock()
        usage_before = int(now - self.config.usage_retention_days * 86400)
        keys_before = now - self.config.idempotency_retention_days * 86400
        usage, keys = await self.gate.timed("cleanup", self.gate.store.cleanup(usage_before, keys_before),
                                            timeout=60.0)
        retained = await self.personal.retain()
        return usage, keys, retained.reduced, retained.ids_dropped


# What each job's result counts, in the order it returns them.
_COUNTS = {"sweep": ("moved",), "reconcile": ("changed",), "report": ("sent", "left for a retry", "refused"),
           "cleanup": ("usage rows dropped", "keys dropped", "payloads reduced", "erased subjects' Stripe ids dropped")}


def _in_words(name: str, result) -> str:
    """A job's result as the operator reads it: "3 sent, 0 left for a retry, 0 refused"."""
    counts = result if isinstance(result, tuple) else (result,)
    words = _COUNTS.get(name, ())
    if len(words) != len(counts):
        return repr(result)
    return ", ".join(f"{n} {w}" for n, w in zip(counts, words))
