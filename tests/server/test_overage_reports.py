"""Overage reported to Stripe as billing meter events (issue 19), against a small real Stripe-shaped server on
127.0.0.1: one event per counted piece of work (its identifier), sent by the `report` job, retried with a growing
pause, counted once by Stripe when an answer was lost, kept and shown when Stripe refuses it, and checked by
reconciliation against Stripe's meter summaries. On both stores."""
from __future__ import annotations

import asyncio
import time

import pytest

from plangate.server.http.api import GATE, JOBS
from plangate.server.store import OverageReport
from plangate.server.stripe.meter_events import REPORT_BATCH, RETRY_MOST, MeterEvents

from .conftest import TOKEN
from .stripe_meters import KEY
from .test_entitlements import AI, QUIET, consume, database, deliver, subscription, view  # noqa: F401
from . import stripe_events as se

NOW = time.time()
LIMIT = 20_000_000
BIG = {"PLANGATE_MAX_AMOUNT": str(10 * LIMIT)}      # the month's allowance counted in one request


@pytest.fixture
def fake(fake_stripe):
    return fake_stripe


@pytest.fixture
async def scale(start_gate, database, fake):
    """A gate whose subject s1 (customer cus_1) is on the Scale tier, its month's allowance used up."""
    gate = await start_gate(plan=AI, database=database, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake.url, **BIG, **QUIET)
    await deliver(gate, se.event("customer.subscription.created",
                                 subscription("s1", "account", "price_scale_yearly"), NOW - 60))
    assert (await consume(gate, "s1", "tokens", LIMIT, key="fill"))["overage"] == 0
    return gate


async def job(gate, name: str = "report"):
    status, body = await gate.post(f"/v1/jobs/{name}")
    assert status == 200, body
    return body["result"]


async def overage(gate, **query) -> dict:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = await gate.get("/v1/overage" + (f"?{qs}" if qs else ""))
    assert status == 200, body
    return body


class TestResending:
    """POST /v1/overage/resend: refused reports go again once what Stripe lacked exists (a meter created late
    refused every report until then, and nothing could send them)."""

    async def test_reports_refused_for_a_missing_meter_go_again_once_it_exists(self, scale, fake):
        meter = fake.meters.pop("api_tokens_overage")
        await consume(scale, "s1", "tokens", 10, key="job-r1")
        await consume(scale, "s1", "tokens", 20, key="job-r2")
        assert await job(scale) == [0, 0, 2]
        refused = (await overage(scale, status="refused"))["reports"]
        assert {r["value"] for r in refused} == {10, 20}
        fake.meters["api_tokens_overage"] = meter
        assert await job(scale) == [0, 0, 0]            # refused stays refused: nothing goes by itself
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops"}, token=TOKEN)
        assert status == 403 and body["error"] == "forbidden"
        ten = next(r for r in refused if r["value"] == 10)
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops", "reason": "meter created",
                                                               "identifier": ten["identifier"]})
        assert status == 200 and (body["resent"], body["too_old"], body["key_conflicts"]) == (1, 0, 0), body
        (pending,) = (await overage(scale, status="pending"))["reports"]
        assert pending["identifier"] == ten["identifier"] and pending["last_error"] == "resent by ops: meter created"
        assert await job(scale) == [1, 0, 0]
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops", "event_name": "api_tokens_overage"})
        assert status == 200 and body["resent"] == 1
        assert await job(scale) == [1, 0, 0]
        assert sorted(int(e["payload"]["value"]) for e in fake.events) == [10, 20]
        assert (await overage(scale))["counts"]["refused"] == {"reports": 0, "value": 0}

    async def test_reports_stripe_would_refuse_as_too_old_stay_refused(self, scale, fake):
        fake.meters.pop("api_tokens_overage")
        await consume(scale, "s1", "tokens", 10, key="job-old")
        assert await job(scale) == [0, 0, 1]
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 35 * 86400 - 1800         # half an hour left: too late to send it
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops", "subject": "s1"})
        assert status == 200 and (body["resent"], body["too_old"]) == (0, 1), body
        assert (await overage(scale))["counts"]["refused"]["reports"] == 1
        gate.clock = lambda: real() + 35 * 86400 - 7200         # two hours left: sent again
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops", "subject": "s1"})
        assert status == 200 and (body["resent"], body["too_old"]) == (1, 0), body

    async def test_a_report_refused_for_a_key_conflict_is_never_resent_and_many_go_in_batches(
            self, scale, fake, monkeypatch):
        """A refusal for an idempotency key Stripe had seen with other parameters may follow a request Stripe
        recorded: resent past the identifier's 24 hours it would bill twice. It stays refused, counted; the
        others go, RESEND_BATCH a transaction, however many."""
        from plangate.server.http import api
        monkeypatch.setattr(api, "RESEND_BATCH", 2)
        await consume(scale, "s1", "tokens", 1, key="job-conflict")
        fake.reused = 1
        assert await job(scale) == [0, 0, 1]
        meter = fake.meters.pop("api_tokens_overage")
        for i in range(5):
            await consume(scale, "s1", "tokens", 10 + i, key=f"job-many-{i}")
        assert await job(scale) == [0, 0, 5]
        fake.meters["api_tokens_overage"] = meter
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops"})
        assert status == 200 and (body["resent"], body["too_old"], body["key_conflicts"]) == (5, 0, 1), body
        assert await job(scale) == [5, 0, 0]
        (kept,) = (await overage(scale, status="refused"))["reports"]
        assert kept["value"] == 1 and "used with other parameters" in kept["last_error"]
        status, body = await scale.post("/v1/overage/resend", {"actor": "ops", "identifier": kept["identifier"]})
        assert status == 200 and (body["resent"], body["key_conflicts"]) == (0, 1), body

    @pytest.mark.parametrize("body, error", [
        ({}, "missing_field"), ({"actor": ""}, "invalid_field"), ({"actor": "ops", "status": "sent"}, "unknown_field"),
        ({"actor": "ops", "subject": 7}, "invalid_field"), ({"actor": "ops", "subject": None}, "invalid_field"),
    ])
    async def test_bad_input_is_a_400_that_resends_nothing(self, scale, fake, body, error):
        fake.meters.pop("api_tokens_overage")
        await consume(scale, "s1", "tokens", 10, key="job-bad")
        assert await job(scale) == [0, 0, 1]
        status, answer = await scale.post("/v1/overage/resend", body)
        assert status == 400 and answer["error"] == error, answer
        assert (await overage(scale))["counts"]["refused"]["reports"] == 1


class TestReporting:
    async def test_overage_is_counted_reported_once_and_sent(self, scale, fake):
        first = await consume(scale, "s1", "tokens", 1500, key="job-1")
        assert (first["allowed"], first["overage"], first["used"]) == (True, 1500, LIMIT + 1500)
        again = await consume(scale, "s1", "tokens", 1500, key="job-1")
        assert again["duplicate"] is True and again["overage"] == 1500
        (report,) = (await view(scale, "s1"))["overage"]
        assert (report["status"], report["value"], report["stripe_customer"]) == ("pending", 1500, "cus_1")
        assert await job(scale) == [1, 0, 0]
        (event,) = fake.events
        assert (event["identifier"], event["payload"]) == \
            (report["identifier"], {"stripe_customer_id": "cus_1", "value": "1500"})
        assert event["event_name"] == "api_tokens_overage"
        assert await job(scale) == [0, 0, 0]
        assert (await overage(scale, status="sent"))["counts"]["sent"] == {"reports": 1, "value": 1500}

    async def test_a_transient_failure_is_retried_after_a_pause(self, scale, fake):
        await consume(scale, "s1", "tokens", 10, key="job-2")
        fake.failing = 1
        assert await job(scale) == [0, 1, 0]
        (pending,) = (await overage(scale, status="pending"))["reports"]
        assert pending["attempts"] == 1 and "APIError" in pending["last_error"]
        assert await job(scale) == [0, 0, 0]            # not due yet: it waits its pause
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 31
        assert await job(scale) == [1, 0, 0]
        assert len(fake.events) == 1

    async def test_a_lost_answer_is_not_counted_twice(self, scale, fake):
        await consume(scale, "s1", "tokens", 10, key="job-3")
        fake.lost = 1                                    # Stripe records it, its answer never arrives
        assert await job(scale) == [0, 1, 0]
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 31
        assert await job(scale) == [1, 0, 0]
        assert len(fake.events) == 1 and len(fake.requests) == 2
        assert {r[1]["identifier"] for r in fake.requests} == {fake.events[0]["identifier"]}

    @pytest.mark.parametrize("recorded", [False, True], ids=["failed-before-recording", "failed-after-recording"])
    async def test_a_server_error_is_retried_under_a_new_key_and_counted_once(self, scale, fake, recorded):
        """Stripe answers a key with its first answer for 24 hours, a 500 included: every retry under the report's
        one key got the same 500 back for a day (the report past its invoice). Each attempt has a key of its own;
        the identifier keeps it counted once when the failing request had recorded it."""
        await consume(scale, "s1", "tokens", 10, key="job-500")
        fake.broken, fake.broken_recorded = 1, recorded
        assert await job(scale) == [0, 1, 0]
        assert len(fake.events) == int(recorded)
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 31
        assert await job(scale) == [1, 0, 0]
        (event,) = fake.events
        assert {form["identifier"] for _, form in fake.requests} == {event["identifier"]}

    async def test_one_report_failing_unexpectedly_keeps_the_others_outcomes(self, scale, fake):
        """A report whose sending fails in a way not foreseen (here a card_error) is left for a retry; the
        reports sent beside it are recorded as sent. Before, the whole batch's outcomes were lost: the sent ones
        went again at every run, and past Stripe's 24 hours of deduplication would be billed twice."""
        await consume(scale, "s1", "tokens", 10, key="job-4")
        await consume(scale, "s1", "tokens", 20, key="job-5")
        fake.unforeseen = 1
        assert await job(scale) == [1, 1, 0]
        (pending,) = (await overage(scale, status="pending"))["reports"]
        assert "CardError" in pending["last_error"] and pending["attempts"] == 1     # the next waits longer
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 31
        assert await job(scale) == [1, 0, 0]
        assert len(fake.events) == 2 and len(fake.requests) == 3     # the one sent first was not sent again

    async def test_a_key_used_with_other_parameters_is_refused_not_retried_for_ever(self, scale, fake):
        """Stripe's idempotency_error for a key first used with other parameters was retried hourly without end
        (and sent again once Stripe forgot the key, 24 hours on: maybe billed twice). It is refused and shown; a
        key whose first request is still under way at Stripe (409) is retried."""
        await consume(scale, "s1", "tokens", 10, key="job-6")
        fake.in_progress = 10           # more than the stripe package's own retries of a 409
        assert await job(scale) == [0, 1, 0]
        fake.in_progress = 0
        (pending,) = (await overage(scale, status="pending"))["reports"]
        assert "in-progress" in pending["last_error"]
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 31
        fake.reused = 1
        assert await job(scale) == [0, 0, 1]
        (refused,) = (await overage(scale))["reports"]
        assert refused["status"] == "refused" and "used with other parameters" in refused["last_error"]
        gate.clock = lambda: real() + 7200
        assert await job(scale) == [0, 0, 0] and fake.events == []

    async def test_one_run_sends_every_due_report_not_one_batch(self, scale, fake):
        """A run sent one batch (200) and stopped: past 200 pieces of overage work a minute the backlog grew for
        ever, reaching Stripe later and later (refused past 35 days)."""
        total = REPORT_BATCH + 30
        for start in range(0, total, 25):
            await asyncio.gather(*(consume(scale, "s1", "tokens", 1, key=f"burst-{i}")
                                   for i in range(start, min(start + 25, total))))
        assert (await overage(scale, status="pending"))["counts"]["pending"]["reports"] == total
        assert await job(scale) == [total, 0, 0]
        assert len(fake.events) == total and await job(scale) == [0, 0, 0]

    def test_the_pause_stays_an_hour_however_many_attempts(self):
        """2 ** 1024 is no float: a report that had failed 1,024 times (six weeks of hourly tries with a revoked
        key) raised OverflowError in every run, and the batch's other outcomes were lost with it."""
        report = OverageReport("ovr_1", "s1", "tokens", "api_tokens_overage", 5, NOW, "cus_1", attempts=1025)
        later = MeterEvents._later(report, NOW, "Stripe refused the key")
        assert later.next_attempt_at == NOW + RETRY_MOST

    async def test_a_report_sent_late_is_compared_once_stripe_had_time_to_sum_it(self, scale, fake):
        """Reconciliation compared work counted over ten minutes ago, however lately its report reached Stripe
        (after retries, or waiting for its customer): Stripe had not summed it yet, a false difference. The
        customer's reports are compared up to the minute of the late one; a real difference before it is still
        found (leaving the whole customer out hid it at every run that had one late report)."""
        gate = scale.app[GATE]
        real = gate.clock
        await consume(scale, "s1", "tokens", 40, key="on-time")
        assert await job(scale) == [1, 0, 0]
        fake.events.append({**fake.events[0], "identifier": "sent_by_someone_else"})     # a real difference
        gate.clock = lambda: real() + 120           # two minutes on
        await consume(scale, "s1", "tokens", 2, key="late")
        fake.failing = 1
        assert await job(scale) == [0, 1, 0]
        gate.clock = lambda: real() + 1200          # both counted past the settling time
        assert await job(scale) == [1, 0, 0]        # the late one reaches Stripe only now...
        fake.unprocessed.add(fake.events[-1]["identifier"])      # ...which has not summed it yet
        await job(scale, "reconcile")
        checked = (await overage(scale))["reconciliation"]
        assert checked["differences"] == [{"customer": "cus_1", "event_name": "api_tokens_overage", "sent": 40,
                                           "stripe": 80}]
        fake.unprocessed.clear()
        fake.events.pop(1)                          # (the other party's event taken back: no difference now)
        gate.clock = lambda: real() + 1200 + 601
        await job(scale, "reconcile")
        checked = (await overage(scale))["reconciliation"]
        assert checked["differences"] == [] and checked["compared"] == 1

    async def test_a_refused_report_is_kept_and_shown(self, start_gate, database, fake):
        fake.customers.clear()                           # Stripe knows no such customer
        gate = await start_gate(plan=AI, database=database, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake.url,
                                **BIG, **QUIET)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("s2", "account", "price_scale_yearly"), NOW - 60))
        await consume(gate, "s2", "tokens", LIMIT + 5, key="job-4")
        assert await job(gate) == [0, 0, 1]
        body = await overage(gate)                       # refused ones by default
        (refused,) = body["reports"]
        assert refused["status"] == "refused" and "No such customer" in refused["last_error"]
        assert body["counts"]["refused"] == {"reports": 1, "value": 5}
        assert await job(gate) == [0, 0, 0]              # kept, not sent again
        assert (await view(gate, "s2"))["overage"][0]["status"] == "refused"

    async def test_without_a_key_reports_wait(self, start_gate, database):
        gate = await start_gate(plan=AI, database=database, **BIG, **QUIET)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("s3", "account", "price_scale_yearly"), NOW - 60))
        await consume(gate, "s3", "tokens", LIMIT + 7)
        assert await job(gate) == [0, 0, 0]
        assert (await overage(gate, status="pending"))["counts"]["pending"] == {"reports": 1, "value": 7}


    async def test_a_key_counted_again_after_its_retention_reports_again(self, scale, fake):
        """Keys are kept PLANGATE_IDEMPOTENCY_RETENTION_DAYS; past that the same key is new work, counted (and its
        overage too) again. Its report's identifier was made of the subject, meter and key alone, so the second
        report met the first's and was dropped: overage counted and admitted, never billed."""
        first = await consume(scale, "s1", "tokens", 500, key="nightly-batch")
        assert first["overage"] == 500
        scale.app[GATE].clock = lambda: NOW + 40 * 86400
        assert (await scale.post("/v1/jobs/cleanup"))[0] == 200
        await consume(scale, "s1", "tokens", LIMIT, key="fill-again")
        again = await consume(scale, "s1", "tokens", 500, key="nightly-batch")
        assert (again["counted"], again["duplicate"], again["overage"]) == (True, False, 500), again
        reports = (await view(scale, "s1"))["overage"]
        assert sorted(r["value"] for r in reports) == [500, 500], reports
        assert len({r["identifier"] for r in reports}) == 2


    async def test_a_run_asked_for_while_another_runs_waits_for_it(self, scale, fake):
        """A run slower than the schedule's minute (Stripe slow), or one asked for by the route meanwhile, sent the
        same due reports again beside it on SQLite (one node: nothing kept two runs apart), and the later one's
        outcome could overwrite the first's. The route's run now waits for the one under way, then finds nothing
        due; a scheduled run is skipped."""
        await consume(scale, "s1", "tokens", 10, key="job-slow")
        fake.pause = 0.5
        first, second = await asyncio.gather(job(scale), job(scale))
        assert sorted([first, second]) == [[0, 0, 0], [1, 0, 0]], (first, second)
        assert len(fake.requests) == 1
        assert (await overage(scale, status="sent"))["counts"]["sent"]["reports"] == 1
        await consume(scale, "s1", "tokens", 10, key="job-slow-2")
        asked = asyncio.ensure_future(job(scale))
        while not fake.requests[1:]:
            await asyncio.sleep(0.01)
        assert await scale.app[JOBS].run("report") == 0       # the schedule's run: skipped, Stripe not asked
        assert await asked == [1, 0, 0]
        assert len(fake.requests) == 2


class TestReconciliation:
    async def test_what_was_sent_is_compared_with_stripes_sums(self, scale, fake):
        await consume(scale, "s1", "tokens", 40, key="job-5")
        await consume(scale, "s1", "tokens", 2, key="job-6")
        assert await job(scale) == [2, 0, 0]
        gate = scale.app[GATE]
        real = gate.clock
        gate.clock = lambda: real() + 1200               # past the settling time Stripe gets
        await job(scale, "reconcile")
        checked = (await overage(scale))["reconciliation"]
        assert (checked["compared"], checked["differences"]) == (1, [])
        fake.events.append({**fake.events[0], "identifier": "sent_by_someone_else"})
        await job(scale, "reconcile")
        (difference,) = (await overage(scale))["reconciliation"]["differences"]
        assert difference == {"customer": "cus_1", "event_name": "api_tokens_overage", "sent": 42, "stripe": 82}

    async def test_every_page_of_active_meters_is_read_and_one_customer_failing_fails_only_itself(
            self, start_gate, database, fake):
        """Reconciliation read the first 100 meters, inactive ones too (a deactivated meter of the same event
        name could stand for the live one: a false difference), and one customer's failing sum ended the whole
        comparison (the job failed, the last check went stale)."""
        fake.meters.pop("api_tokens_overage")
        fake.meters.update({f"other_event_{n}": f"mtr_other_{n}" for n in range(120)})
        fake.meters["api_tokens_overage"] = "mtr_test_1"                  # on the second page
        fake.inactive_meters["api_tokens_overage"] = "mtr_retired"        # listed after it, deactivated
        fake.customers.add("cus_2")
        gate = await start_gate(plan=AI, database=database, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake.url,
                                **BIG, **QUIET)
        for subject, customer in (("s1", "cus_1"), ("s2", "cus_2")):
            await deliver(gate, se.event("customer.subscription.created",
                                         subscription(subject, "account", "price_scale_yearly", customer=customer,
                                                      sub_id=f"sub_{subject}"),
                                         NOW - 60))
            await consume(gate, subject, "tokens", LIMIT + 7, key=f"fill-{subject}")
        assert await job(gate) == [2, 0, 0]
        real = gate.app[GATE].clock
        gate.app[GATE].clock = lambda: real() + 1200
        fake.summaries_failing.add("cus_2")
        await job(gate, "reconcile")
        checked = (await overage(gate))["reconciliation"]
        assert (checked["compared"], checked["differences"]) == (1, [])
