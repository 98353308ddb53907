"""POST /webhook/stripe on a real gate: signatures, exactly once, any order, faults."""
from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import sqlite3
import time

import pytest
from multidict import CIMultiDict

from plangate.server.stripe import ingest
from tests import postgres

from . import stripe_events as se
from .test_openapi import documented

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DAY = 86400.0


def q(database: str, sql: str, *args):
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
async def hook(start_gate):
    return await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)


async def deliver(gate, evt: dict, *, secret: str = se.SECRET, header: str | None = None, raw: bytes | None = None,
                  headers: dict | None = None):
    """Post an event; every answer is checked against schema/openapi.json."""
    body = raw if raw is not None else se.encode(evt)
    sig = header if header is not None else se.sign(body, secret)
    async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                 headers={**(headers or {}), "Stripe-Signature": sig}) as r:
        payload = json.loads(await r.text())
        documented("post", "/webhook/stripe", r.status, r.content_type, payload, r.headers)
        return r.status, payload


async def status_of(gate, subject: str) -> str:
    return (await gate.get(f"/v1/subjects/{subject}"))[1]["status"]


class TestSignatures:
    @pytest.mark.parametrize("case", ["missing", "malformed", "wrong_secret", "expired", "tampered", "v0_only",
                                      "expired_wrong_secret", "timestamp_not_a_number", "v1_not_ascii",
                                      "v1_not_ascii_beside_a_good_one"])
    async def test_refused_with_400_and_nothing_written(self, hook, case):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        body = se.encode(evt)
        header = {
            "missing": "",
            "malformed": "this is not a signature",
            "wrong_secret": se.sign(body, "whsec_other_secret_123456"),
            "expired": se.sign(body, timestamp=int(time.time()) - 301),
            "tampered": se.sign(body),
            "v0_only": se.sign(body).replace("v1=", "v0="),
            "expired_wrong_secret": se.sign(body, "whsec_other_secret_123456", timestamp=int(time.time()) - 301),
            "timestamp_not_a_number": "t=soon," + se.sign(body).split(",", 1)[1],
            "v1_not_ascii": f"t={int(time.time())},v1=\u00e9" + "0" * 63,
            "v1_not_ascii_beside_a_good_one": se.sign(body, "whsec_other_secret_123456") + ",v1=\u00e9\u00e9",
        }[case]
        raw = body.replace(b"alice", b"mallory") if case == "tampered" else body
        status, answer = await deliver(hook, evt, header=header, raw=raw)
        assert status == 400 and answer["error"] in ("signature_missing", "signature_invalid")
        if case.startswith("expired"):      # refused on its time alone, before any HMAC, whatever the secret
            assert "more than 300 s ago" in answer["message"], answer
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]
        assert await status_of(hook, "alice") == "limited_free_trial"
        _, metrics = await hook.get("/metrics")
        assert 'plangate_webhooks_total{outcome="signature_' in metrics

    async def test_rotated_secrets_any_may_match(self, start_gate):
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=f"whsec_old_secret_0001,{se.SECRET}")
        first = se.event("checkout.session.completed", se.checkout("a1"), time.time())
        assert (await deliver(gate, first, secret="whsec_old_secret_0001"))[0] == 200
        second = se.event("checkout.session.completed", se.checkout("a2", "cus_2", "sub_2"), time.time())
        assert (await deliver(gate, second))[0] == 200
        both = se.event("checkout.session.completed", se.checkout("a3", "cus_3", "sub_3"), time.time())
        body = se.encode(both)
        header = se.sign(body, "whsec_unknown_000001") + "," + se.sign(body).split(",")[1]
        assert (await deliver(gate, both, header=header))[0] == 200

    async def test_no_secret_configured_is_503_and_accepts_nothing(self, gate):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        status, answer = await deliver(gate, evt)
        assert (status, answer["error"]) == (503, "webhook_not_configured")
        assert q(gate.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]

    @pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"id": "evt_1", "type": "x"}', b"\xff\xfe"])
    async def test_signed_but_malformed_is_400(self, hook, raw):
        header = se.sign(raw.decode("latin-1")) if raw == b"\xff\xfe" else se.sign(raw)
        status, answer = await deliver(hook, {}, raw=raw, header=header)
        assert status == 400 and answer["error"] in ("invalid_event", "signature_invalid")

    @pytest.mark.parametrize("name", ["type", "client_reference_id"])
    async def test_a_signed_body_naming_a_field_twice_is_400_and_writes_nothing(self, hook, name):
        """Stripe never sends one; which of the two counts would be the parser's choice, so neither does."""
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        body = se.encode(evt)
        twice = {"type": b'"type": "customer.created", "type"',
                 "client_reference_id": b'"client_reference_id": "mallory", "client_reference_id"'}[name]
        raw = body.replace(b'"' + name.encode() + b'"', twice, 1)
        assert raw != body and json.loads(raw) == evt     # the last one is what a parser would take
        status, answer = await deliver(hook, {}, raw=raw, header=se.sign(raw))
        assert (status, answer["error"]) == (400, "invalid_event") and f"'{name}'" in answer["message"]
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]
        assert await status_of(hook, "alice") == "limited_free_trial"
        assert (await deliver(hook, evt))[0] == 200

    async def test_a_body_not_in_the_content_encoding_it_names_is_400(self, hook):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        status, answer = await deliver(hook, evt, headers={"Content-Encoding": "gzip"})
        assert (status, answer["error"]) == (400, "invalid_body")
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]
        assert (await deliver(hook, evt))[0] == 200     # Stripe's retry, as it is sent: taken

    @pytest.mark.parametrize("encoding", ["br", "zstd", "x-made-up"])
    async def test_a_content_encoding_the_gate_does_not_take_is_415(self, hook, encoding):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        status, answer = await deliver(hook, evt, headers={"Content-Encoding": encoding})
        assert (status, answer["error"]) == (415, "unsupported_media_type") and encoding in answer["message"]
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]
        assert (await deliver(hook, evt))[0] == 200

    @pytest.mark.parametrize(("second", "status"), [("gzip", 415), ("identity", 200)])
    async def test_two_content_encoding_headers_are_one_list(self, hook, second, status):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        body = se.encode(evt)
        raw = gzip.compress(gzip.compress(body)) if second == "gzip" else gzip.compress(body)
        headers = CIMultiDict([("Content-Encoding", "gzip"), ("Content-Encoding", second),
                               ("Stripe-Signature", se.sign(body))])
        async with hook.session.post(hook.url + "/webhook/stripe", data=raw, headers=headers) as r:
            payload = json.loads(await r.text())
            documented("post", "/webhook/stripe", r.status, r.content_type, payload, r.headers)
        assert r.status == status, payload
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(1 if status == 200 else 0,)]

    async def test_a_gzip_event_is_taken(self, hook):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        raw = gzip.compress(se.encode(evt))
        status, answer = await deliver(hook, evt, raw=raw, header=se.sign(se.encode(evt)),
                                       headers={"Content-Encoding": "gzip"})
        assert (status, answer["outcome"]) == (200, "applied")

    async def test_body_over_the_limit_is_413(self, start_gate):
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_WEBHOOK_MAX_BYTES="2048")
        evt = se.event("checkout.session.completed", {**se.checkout("a"), "pad": "x" * 5000}, time.time())
        status, answer = await deliver(gate, evt)
        assert (status, answer["error"]) == (413, "body_too_large")


class TestExactlyOnce:
    async def test_repeat_delivery_is_a_duplicate_and_changes_nothing(self, hook):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        first = await deliver(hook, evt)
        again = await deliver(hook, evt)
        assert first[1]["outcome"] == "applied" and first[1]["duplicate"] is False
        assert again[0] == 200 and again[1]["duplicate"] is True
        assert q(hook.database, "SELECT COUNT(*) FROM transitions") == [(1,)]

    async def test_fifty_concurrent_deliveries_give_one_transition(self, hook):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        answers = await asyncio.gather(*(deliver(hook, evt) for _ in range(50)))
        assert all(status == 200 for status, _ in answers)
        assert sum(not a["duplicate"] for _, a in answers) == 1
        assert q(hook.database, "SELECT COUNT(*) FROM transitions") == [(1,)]
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(1,)]

    async def test_a_burst_of_distinct_events_for_one_subject_is_all_applied(self, hook):
        """Stripe sends several events of one subscription at once (invoice, payment, subscription). They
        are folded in one after another, not left to race each other: none is answered 500."""
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 600))
        burst = [se.event("invoice.paid", se.invoice("paid", inv_id=f"in_{k}"), now - 300 + k) for k in range(40)]
        answers = await asyncio.gather(*(deliver(hook, evt) for evt in burst))
        assert [status for status, _ in answers] == [200] * 40, answers
        assert sorted(a["outcome"] for _, a in answers) == ["applied"] + ["noop"] * 39
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(41,)]
        assert q(hook.database, "SELECT COUNT(*) FROM payments WHERE subject = 'alice'") == [(40,)]
        assert q(hook.database, "SELECT from_status, to_status FROM transitions ORDER BY id") == \
            [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]

    async def test_a_fold_given_up_while_waiting_for_its_turn_leaves_the_others_in_order(self, hook):
        """Three events of one subject, the first held at its commit by another connection's lock: the second,
        waiting its turn, is cancelled (its caller gave up). The first and third still apply, the second
        leaves nothing behind, and no turn is left waiting."""
        from plangate.engine import StripeEvent
        from plangate.server.http.webhook import INGEST
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 600))
        receiver = hook.app[INGEST]
        events = [se.event("invoice.paid", se.invoice("paid", inv_id=f"in_{k}"), now - 300 + k) for k in range(3)]
        locker = sqlite3.connect(hook.database, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            tasks = [asyncio.create_task(receiver.receive(
                StripeEvent(e["type"], e["data"]["object"], e["id"], e["created"]), json.dumps(e))) for e in events]
            for _ in range(200):
                await asyncio.sleep(0.005)
                if "alice" in receiver._folding and all(not t.done() for t in tasks):
                    break
            tasks[1].cancel()
            await asyncio.sleep(0.05)
            # The third waits for the first, not for the cancelled second: it has queued no write yet.
            assert not tasks[2].done() and receiver.store._groups.waiting == 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        first, second, third = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(second, asyncio.CancelledError)
        assert (first.outcome, third.outcome) == ("applied", "noop")
        stored = q(hook.database, "SELECT event_id FROM subscription_events WHERE type = 'invoice.paid' ORDER BY 1")
        assert stored == sorted([(events[0]["id"],), (events[2]["id"],)])
        assert receiver._folding == {}

    async def test_two_events_for_one_change_apply_once(self, hook):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 60))
        await deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 30))
        await deliver(hook, se.event("invoice.payment_succeeded", se.invoice("paid"), now - 30))
        moves = q(hook.database, "SELECT from_status, to_status FROM transitions ORDER BY id")
        assert moves == [("limited_free_trial", "paid_trial"), ("paid_trial", "paid")]
        assert q(hook.database, "SELECT invoice_id, status, amount FROM payments") == [("in_1", "paid", 2000)]

    async def test_unknown_event_types_are_ignored_cheaply(self, hook):
        evt = se.event("payment_method.attached", {"id": "pm_1", "object": "payment_method", "customer": "cus_1"},
                       time.time())
        status, answer = await deliver(hook, evt)
        assert (status, answer["outcome"]) == (200, "ignored")
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]

    async def test_the_cache_is_invalidated_after_a_transition(self, hook):
        assert (await hook.check("alice"))[1]["status"] == "limited_free_trial"
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), time.time()))
        assert (await hook.check("alice"))[1]["status"] == "paid_trial"


def lifecycle(n: int, start: float) -> list[dict]:
    """Checkout into the trial, the trial turning paid, a renewal failing, and recovering (the subscription
    active again after past_due, as Stripe's previous_attributes say)."""
    cus, sub, who = f"cus_{n}", f"sub_{n}", f"user{n}"
    recovered = se.event("customer.subscription.updated", se.subscription("active", who, sub_id=sub, customer=cus),
                         start + 4)
    recovered["data"]["previous_attributes"] = {"status": "past_due"}
    return [
        se.event("checkout.session.completed", se.checkout(who, cus, sub), start),
        se.event("customer.subscription.created", se.subscription("trialing", who, sub_id=sub, customer=cus),
                 start + 1),
        se.event("invoice.paid", se.invoice("paid", sub_id=sub, customer=cus, inv_id=f"in_{n}a"), start + 2),
        se.event("invoice.payment_failed", se.invoice("open", sub_id=sub, customer=cus, inv_id=f"in_{n}b"), start + 3),
        recovered,
    ]


class TestAnyOrder:
    async def test_every_permutation_of_a_lifecycle_converges(self, hook):
        start = time.time() - 3600
        in_order = lifecycle(0, start)
        for evt in in_order:
            await deliver(hook, evt)
        expected = await status_of(hook, "user0")
        assert expected == "paid"
        finals = {}
        for n, order in enumerate(itertools.permutations(range(5)), start=1):
            events = lifecycle(n, start)
            for i in order:
                status, _ = await deliver(hook, events[i])
                assert status == 200
            finals[order] = await status_of(hook, f"user{n}")
        wrong = {o: s for o, s in finals.items() if s != expected}
        assert not wrong, wrong

    async def test_an_older_event_after_a_newer_one_is_stale(self, hook):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 100))
        await deliver(hook, se.event("customer.subscription.created", se.subscription("trialing", "alice"), now - 95))
        await deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 50))
        # An update from the trial, delivered after the payment that ended it: it would move nothing back.
        _, answer = await deliver(hook, se.event("customer.subscription.updated",
                                                 se.subscription("trialing", "alice"), now - 90))
        assert answer["outcome"] == "stale" and answer["status"] == "paid"
        assert q(hook.database, "SELECT outcome FROM subscription_events WHERE type = "
                                "'customer.subscription.updated'") == [("stale",)]
        assert q(hook.database, "SELECT COUNT(*) FROM transitions") == [(2,)]

    @pytest.mark.parametrize("sorts_before_a_stored_event", [False, True])
    async def test_an_event_older_than_an_admins_change_does_not_rewrite_it(self, hook, sorts_before_a_stored_event):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 3 * DAY))
        await deliver(hook, se.event("customer.subscription.created", se.subscription("active", "alice"),
                                     now - 3 * DAY + 1))
        await deliver(hook, se.event("invoice.payment_failed", se.invoice("open", inv_id="in_2"), now - 2 * DAY))
        assert await status_of(hook, "alice") == "grace_period"
        status, _ = await hook.post("/v1/subjects/alice/transition", {"to": "paid", "reason": "paid by transfer"})
        assert status == 200
        # A failed retry from before the admin's decision, delivered only now: after the stored events, or
        # sorting before the stored failure. Delivered in order it would have changed nothing: grace already.
        created = now - 2 * DAY - 60 if sorts_before_a_stored_event else now - DAY
        _, answer = await deliver(hook, se.event("invoice.payment_failed", se.invoice("open", inv_id="in_2"),
                                                 created))
        assert answer["outcome"] == "stale" and answer["status"] == "paid", answer
        assert await status_of(hook, "alice") == "paid"
        # Stripe's word after the admin's change is heard as ever.
        _, answer = await deliver(hook, se.event("invoice.payment_failed", se.invoice("open", inv_id="in_3"),
                                                 time.time() + 1))
        assert answer["outcome"] == "applied" and answer["status"] == "grace_period", answer

    @pytest.mark.parametrize("sorts_before_a_stored_event", [False, True])
    async def test_traits_the_product_sets_are_no_admin_decision_a_stripe_event_must_wait_behind(
            self, start_gate, each_database, sorts_before_a_stored_event):
        """The product syncs a number (members) through /traits; a cancellation Stripe made just before, delivered
        just after, still cancels (it was `stale`, and the canceled customer kept paid access). The traits hold."""
        hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, database=each_database)
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 3600))
        await deliver(hook, se.event("customer.subscription.created", se.subscription("active", "alice"), now - 3500))
        await deliver(hook, se.event("invoice.paid", se.invoice("paid"), now - 3400))
        assert await status_of(hook, "alice") == "paid"
        status, _ = await hook.post("/v1/subjects/alice/traits", {"traits": {"members": 3}, "reason": "sync"})
        assert status == 200
        created = now - 3450 if sorts_before_a_stored_event else now - 5
        _, answer = await deliver(hook, se.event("customer.subscription.deleted", se.subscription("canceled", "alice"),
                                                 created))
        assert answer["outcome"] == "applied" and answer["status"] != "paid", answer
        _, view = await hook.get("/v1/subjects/alice")
        assert view["status"] == answer["status"] and view["traits"] == {"members": 3}

    async def test_events_before_their_link_wait_and_then_apply_in_order(self, hook):
        now = time.time()
        created = se.subscription("trialing", sub_id="sub_9", customer="cus_9")   # no metadata: no subject yet
        _, answer = await deliver(hook, se.event("customer.subscription.created", created, now - 20))
        assert answer["outcome"] == "pending"
        _, answer = await deliver(hook, se.event("invoice.paid", se.invoice("paid", sub_id="sub_9", customer="cus_9"),
                                                 now - 10))
        assert answer["outcome"] == "pending"
        _, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout("late", "cus_9", "sub_9"),
                                                 now - 30))
        assert answer["outcome"] == "applied" and answer["status"] == "paid"    # the status after the waiting events
        assert await status_of(hook, "late") == "paid"
        outcomes = q(hook.database, "SELECT type, outcome, subject FROM subscription_events ORDER BY created")
        assert [o[1] for o in outcomes] == ["applied", "noop", "applied"] and {o[2] for o in outcomes} == {"late"}


class TestShapes:
    @pytest.mark.parametrize("new_shape", [True, False])
    async def test_both_shapes_link_and_carry_the_period(self, hook, new_shape):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 100))
        sub = se.subscription("active", "alice", start=now - DAY, end=now + 29 * DAY, new_shape=new_shape)
        await deliver(hook, se.event("customer.subscription.created", sub, now - 90))
        await deliver(hook, se.event("invoice.payment_failed", se.invoice("open", new_shape=new_shape), now - 80))
        _, view = await hook.get("/v1/subjects/alice")
        assert view["status"] == "grace_period" and view["tier"] == "pro"
        assert view["period_end"] is not None and view["stripe_subscription"] == "sub_1"


class TestGraceAndTimers:
    async def test_grace_never_ends_before_the_paid_through_date(self, hook):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 100))
        await deliver(hook, se.event("invoice.paid", se.invoice("paid", period_end=now + 10 * DAY), now - 90))
        await deliver(hook, se.event("invoice.payment_failed", se.invoice("open", inv_id="in_2"), now - 80))
        _, view = await hook.get("/v1/subjects/alice")
        assert view["status"] == "grace_period"
        assert view["timer_due"] == q(hook.database, "SELECT strftime('%Y-%m-%dT%H:%M:%SZ', paid_through, "
                                                     "'unixepoch') FROM subscriptions")[0][0]

    async def test_server_down_across_a_trial_end_catches_up_on_start(self, start_gate):
        first = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_SWEEP_SCHEDULE="0 0 1 1 *")
        await deliver(first, se.event("checkout.session.completed", se.checkout("alice"), time.time() - 8 * DAY))
        assert await status_of(first, "alice") == "paid_trial"          # due a day ago; nobody swept
        await first.app.shutdown()
        await first.app.cleanup()
        second = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        _, view = await second.get("/v1/subjects/alice")
        assert view["status"] == "billing_problem"
        assert view["transitions"][0]["trigger"] == "timer"

    async def test_an_event_from_before_a_fired_timer_is_folded_in_before_it(self, hook):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 8 * DAY))
        await hook.post("/v1/jobs/sweep")
        assert await status_of(hook, "alice") == "billing_problem"       # the trial timer fired a day ago
        # Stripe's word from before the deadline, delivered late: in order, it ends the trial paid.
        sub = se.subscription("active", "alice", start=now - 8 * DAY, end=now + 22 * DAY)
        _, answer = await deliver(hook, se.event("customer.subscription.created", sub, now - 8 * DAY + 5))
        assert answer["status"] == "paid" and await status_of(hook, "alice") == "paid"

    async def test_a_late_event_that_changes_nothing_does_not_undo_a_fired_timer(self, hook):
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), now - 8 * DAY))
        await hook.post("/v1/jobs/sweep")
        moves = q(hook.database, "SELECT count(*) FROM transitions")
        sub = se.subscription("trialing", "alice", start=now - 8 * DAY, end=now - DAY)
        await deliver(hook, se.event("customer.subscription.updated", sub, now - 7 * DAY))
        assert await status_of(hook, "alice") == "billing_problem"
        assert q(hook.database, "SELECT count(*) FROM transitions") == moves

    async def test_sweep_job_on_demand(self, hook):
        await deliver(hook, se.event("invoice.payment_failed", se.invoice("open"), time.time()))
        await deliver(hook, se.event("checkout.session.completed", se.checkout("alice"), time.time() - 9 * DAY))
        status, answer = await hook.post("/v1/jobs/sweep")
        assert status == 200 and answer["result"] >= 0
        assert await status_of(hook, "alice") == "billing_problem"
        status, answer = await hook.post("/v1/jobs/nonsense")
        assert (status, answer["error"]) == (422, "unknown_job")

    async def test_a_sweep_of_several_transactions_moves_every_due_subject_once(self, start_gate):
        """More subjects due than one of the sweep's transactions holds (gate.SWEEP_CHUNK): each moves once,
        with its audit row, and the cached ones answer their new status at once. Only the sweep the test asks for
        runs (the schedule's, every minute, would move them while a slow machine is still delivering)."""
        from plangate.server import gate as gate_module
        hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_SWEEP_SCHEDULE="0 0 1 1 *")
        count = 2 * gate_module.SWEEP_CHUNK + 17
        started = time.time() - 9 * DAY
        for first in range(0, count, 50):
            answers = await asyncio.gather(*(deliver(hook, se.event(
                "checkout.session.completed", se.checkout(f"u{i}", f"cus_{i}", f"sub_{i}"), started))
                for i in range(first, min(count, first + 50))))
            assert all(status == 200 for status, _ in answers)
        cached = [f"u{i}" for i in (0, gate_module.SWEEP_CHUNK, count - 1)]
        for subject in cached:
            assert (await hook.check(subject))[1]["status"] == "paid_trial"
        status, answer = await hook.post("/v1/jobs/sweep")
        assert (status, answer["result"]) == (200, count)
        assert q(hook.database, "SELECT status, COUNT(*) FROM subscriptions GROUP BY status") == \
            [("billing_problem", count)]
        assert q(hook.database, "SELECT COUNT(*), COUNT(DISTINCT subject) FROM transitions WHERE actor = 'timer'") == \
            [(count, count)]
        for subject in cached:
            assert (await hook.check(subject))[1]["status"] == "billing_problem"


class TestFaults:
    async def test_store_failing_mid_event_answers_500_then_the_retry_applies_once(self, hook):
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        db = sqlite3.connect(hook.database, isolation_level=None, timeout=5)
        db.execute("BEGIN IMMEDIATE")           # a long write elsewhere: our commit cannot get the lock
        try:
            status, answer = await deliver(hook, evt)
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert status == 500 and answer["error"] == "store_unavailable"
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]
        status, answer = await deliver(hook, evt)
        assert status == 200 and answer["outcome"] == "applied"
        assert (await deliver(hook, evt))[1]["duplicate"] is True
        assert q(hook.database, "SELECT COUNT(*) FROM transitions") == [(1,)]

    async def test_a_commit_that_lands_after_the_budget_still_reaches_the_cache(self, start_gate, monkeypatch):
        """The event's budget runs out while its commit waits for another process's lock (500: Stripe delivers
        again); the shielded commit lands once the lock goes. The subject's cached state is dropped then: checks
        answered from the old status until the cache expired (here five minutes)."""
        hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_CACHE_TTL="300")
        now = time.time()
        await deliver(hook, se.event("checkout.session.completed", se.checkout("cleo"), now - 100))
        await deliver(hook, se.event("customer.subscription.created", se.subscription("active", "cleo"), now - 90))
        assert (await hook.check("cleo"))[1]["status"] == "paid"            # cached
        monkeypatch.setattr(ingest, "WEBHOOK_STORE_TIMEOUT", 0.3)
        db = sqlite3.connect(hook.database, isolation_level=None, timeout=5)
        db.execute("BEGIN IMMEDIATE")
        try:
            status, _ = await deliver(hook, se.event("customer.subscription.deleted",
                                                     se.subscription("canceled", "cleo"), now - 10))
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert status == 500

        async def stored_canceled() -> bool:
            return (await hook.get("/v1/subjects/cleo"))[1]["status"] == "canceled"
        assert await postgres.await_until(stored_canceled, timeout=5)
        assert (await hook.check("cleo"))[1]["status"] == "canceled"

    async def test_a_sweep_that_lands_after_its_budget_still_reaches_the_cache(self, start_gate, monkeypatch):
        """A sweep's transaction outlasts its budget behind another process's lock (the job fails); it lands once
        the lock goes, and the timers it fired reach the cache then (the trial ended in the store while checks
        answered paid_trial until the cache expired)."""
        from plangate.server import gate as gate_module
        hook = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_CACHE_TTL="300",
                                PLANGATE_SWEEP_SCHEDULE="0 0 1 1 *")
        await deliver(hook, se.event("checkout.session.completed", se.checkout("dora"), time.time() - 9 * DAY))
        assert (await hook.check("dora"))[1]["status"] == "paid_trial"          # cached; its timer is due
        monkeypatch.setattr(gate_module, "SWEEP_TIMEOUT", 0.3)
        db = sqlite3.connect(hook.database, isolation_level=None, timeout=5)
        db.execute("BEGIN IMMEDIATE")
        try:
            status, _ = await hook.post("/v1/jobs/sweep")
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert status != 200

        async def stored_moved() -> bool:
            return (await hook.get("/v1/subjects/dora"))[1]["status"] == "billing_problem"
        assert await postgres.await_until(stored_moved, timeout=5)
        assert (await hook.check("dora"))[1]["status"] == "billing_problem"

    async def test_one_budget_bounds_all_of_an_events_store_calls(self, hook, monkeypatch):
        """A commit held back by another process's lock: the event answers 500 once the budget is spent (not
        at the lock's own 5 s), counted as the webhook's store error, nothing written meanwhile. The write was
        shielded: it may still land once the lock is gone, so Stripe's retry finds it applied or applies it,
        once either way."""
        monkeypatch.setattr(ingest, "WEBHOOK_STORE_TIMEOUT", 0.3)
        evt = se.event("checkout.session.completed", se.checkout("bob"), time.time())
        db = sqlite3.connect(hook.database, isolation_level=None, timeout=5)
        db.execute("BEGIN IMMEDIATE")
        try:
            started = time.perf_counter()
            status, answer = await deliver(hook, evt)
            took = time.perf_counter() - started
            # Read while the lock still holds: once it is gone the shielded write may land at any moment.
            written_meanwhile = q(hook.database, "SELECT COUNT(*) FROM subscription_events")
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert (status, answer["error"]) == (500, "store_unavailable") and took < 3, took
        assert written_meanwhile == [(0,)]
        _, metrics = await hook.get("/metrics")
        assert 'plangate_store_errors_total{operation="webhook"} 1.0' in metrics
        status, answer = await deliver(hook, evt)
        assert status == 200 and answer["outcome"] in ("applied", "duplicate")
        assert q(hook.database, "SELECT COUNT(*) FROM subscription_events") == [(1,)]
        assert q(hook.database, "SELECT COUNT(*) FROM transitions") == [(1,)]
