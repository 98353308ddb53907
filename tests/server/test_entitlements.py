"""Entitlements through a running gate, on both stores (issue 19): features in /v1/check, seats from Stripe's
subscription items, traits set through the API, credits granted by an admin or a paid Checkout and spent once
the window's allowance is used up (never twice, never past the balance, also across PostgreSQL nodes)."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from aiohttp import web

from plangate.engine import compile_file
from plangate.engine._credits import Grant, GrantSource
from plangate.server import entitlements
from plangate.server.http.api import GATE
from plangate.server.store import Counted

from . import stripe_events as se
from .conftest import ROOT
from .stripe_meters import KEY

SAAS = ROOT / "examples" / "saas" / "plans.yaml"
AI = ROOT / "examples" / "ai-api" / "plans.yaml"
B2B = ROOT / "examples" / "b2b" / "plans.yaml"
QUIET = {"STRIPE_WEBHOOK_SECRET": se.SECRET}
NOW = time.time()


@pytest.fixture
def database(each_database) -> str:
    """The store of the test's gates (start_gate's): each kind."""
    return each_database


@pytest.fixture
def start(start_gate, database):
    async def run(plan, **env):
        return await start_gate(plan=plan, database=database, **{**QUIET, **env})
    return run


async def deliver(gate, evt: dict) -> dict:
    body = se.encode(evt)
    async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                 headers={"Stripe-Signature": se.sign(body)}) as r:
        text = await r.text()
        assert r.status == 200, text
        return json.loads(text)


def subscription(subject: str, key: str, price: str, quantity: int = 1, *, sub_id: str = "sub_1",
                 customer: str = "cus_1", status: str = "active", extra=()) -> dict:
    items = [{"id": "si_1", "object": "subscription_item", "quantity": quantity,
              "price": {"id": price, "object": "price"},
              "current_period_start": int(NOW - 86400), "current_period_end": int(NOW + 29 * 86400)}]
    items += [{"id": f"si_{i + 2}", "object": "subscription_item", "quantity": q,
               "price": {"id": p, "object": "price"}} for i, (p, q) in enumerate(extra)]
    return {"id": sub_id, "object": "subscription", "status": status, "customer": customer,
            "created": int(NOW - 86400), "metadata": {key: subject}, "items": {"object": "list", "data": items}}


def pack_checkout(subject: str, session: str, lines=None, *, customer: str = "cus_1") -> dict:
    obj = {"id": session, "object": "checkout.session", "mode": "payment", "payment_status": "paid",
           "status": "complete", "client_reference_id": subject, "customer": customer, "subscription": None,
           "metadata": {}}
    if lines is not None:
        obj["line_items"] = {"object": "list", "data": [
            {"id": f"li_{i}", "object": "item", "quantity": q, "price": {"id": p, "object": "price"}}
            for i, (p, q) in enumerate(lines)]}
    return obj


async def check(gate, subject: str, **body) -> dict:
    status, answer = await gate.post("/v1/check", {"subject": subject, **body})
    assert status == 200, answer
    return answer


async def consume(gate, subject: str, meter: str, amount: int, key: str | None = None) -> dict:
    body = {"subject": subject, "meter": meter, "amount": amount}
    if key:
        body["idempotency_key"] = key
    status, answer = await gate.post("/v1/consume", body)
    assert status == 200, answer
    return answer


async def view(gate, subject: str) -> dict:
    status, body = await gate.get(f"/v1/subjects/{subject}")
    assert status == 200, body
    return body


class TestFeaturesAndSeats:
    async def test_a_feature_follows_the_tier_and_the_limit_the_seats(self, start):
        gate = await start(SAAS)
        free = await check(gate, "ws1", feature="sso")
        assert (free["allowed"], free["reason"], free["feature"], free["meter"]) == (False, "not_entitled", "sso", None)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("ws1", "workspace", "price_team_seat_monthly", 5), NOW - 60))
        team = await check(gate, "ws1", feature="sso")
        assert (team["allowed"], team["reason"], team["status"], team["tier"]) == (True, "ok", "paid", "team")
        assert (await check(gate, "ws1", meter="exports"))["limit"] == 500
        await deliver(gate, se.event("customer.subscription.updated",
                                     subscription("ws1", "workspace", "price_team_seat_monthly", 8), NOW - 30))
        assert (await check(gate, "ws1", meter="exports"))["limit"] == 800
        body = await view(gate, "ws1")
        assert (body["features"], body["quantity"]) == (["custom_domain", "sso", "audit_log"], 8)

    async def test_consumes_count_up_to_the_seats_limit_and_no_further(self, start):
        """5 seats of 100 exports: 500 counted, then refused; never allowed without being counted."""
        gate = await start(SAAS)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("ws5", "workspace", "price_team_seat_monthly", 5), NOW - 60))
        first = await consume(gate, "ws5", "exports", 97)
        assert (first["allowed"], first["counted"], first["limit"]) == (True, True, 500)
        for n in range(1, 5):
            more = await consume(gate, "ws5", "exports", 100)
            assert (more["allowed"], more["counted"], more["used"]) == (True, True, 97 + 100 * n), more
        past = await consume(gate, "ws5", "exports", 4)
        assert (past["allowed"], past["counted"], past["used"], past["reason"]) == (False, False, 497,
                                                                                   "quota_exhausted")
        last = await consume(gate, "ws5", "exports", 3)
        assert (last["allowed"], last["counted"], last["used"], last["remaining"]) == (True, True, 500, 0)

    async def test_an_addon_item_and_an_addon_subscription_each_end_on_their_own(self, start):
        gate = await start(SAAS)
        main = subscription("ws2", "workspace", "price_pro_monthly", extra=[("price_audit_log_monthly", 1)])
        await deliver(gate, se.event("customer.subscription.created", main, NOW - 90))
        pack = subscription("ws2", "workspace", "price_export_pack_monthly", 2, sub_id="sub_2")
        pack["items"]["data"][0]["price"]["id"] = "price_export_pack_monthly"
        await deliver(gate, se.event("customer.subscription.created", pack, NOW - 80))
        assert (await check(gate, "ws2", meter="exports"))["limit"] == 200 + 2 * 500
        assert (await check(gate, "ws2", feature="audit_log"))["allowed"] is True
        await deliver(gate, se.event("customer.subscription.deleted", {**pack, "status": "canceled"}, NOW - 70))
        body = await view(gate, "ws2")
        assert (body["status"], body["addons"]) == ("paid", [{"addon": "audit_log_addon", "quantity": 1}])
        assert (await check(gate, "ws2", meter="exports"))["limit"] == 200

    async def test_an_addon_bought_alone_leaves_the_workspace_free_until_a_plan_is_beside_it(self, start):
        """An export pack on a subscription of its own, no plan: not the default tier's (pro) price, so the signed
        event is recorded as another subscription's and the workspace keeps free's limits and features; the pack
        adds to pro's exports once pro is bought, and stops counting when pro ends."""
        gate = await start(SAAS)
        pack = subscription("ws7", "workspace", "price_export_pack_monthly", sub_id="sub_pack", customer="cus_7")
        answer = await deliver(gate, se.event("customer.subscription.created", pack, NOW - 90))
        assert (answer["outcome"], answer["status"]) == ("other_subscription", "free"), answer
        paid = await deliver(gate, se.event("invoice.paid", se.invoice("paid", sub_id="sub_pack", customer="cus_7",
                                                                      inv_id="in_pack"), NOW - 89))
        assert (paid["outcome"], paid["status"]) == ("other_subscription", "free"), paid
        exports = await check(gate, "ws7", meter="exports")
        assert (exports["status"], exports["tier"], exports["limit"]) == ("free", None, 10)
        assert (await check(gate, "ws7", meter="api_calls"))["limit"] == 10
        assert (await check(gate, "ws7", feature="custom_domain"))["allowed"] is False
        body = await view(gate, "ws7")
        assert (body["status"], body["tier"], body["features"]) == ("free", None, [])
        assert body["addons"] == [{"addon": "export_pack", "quantity": 1}]
        assert [(s["id"], s["followed"]) for s in body["subscriptions"]] == [("sub_pack", False)]
        pro = subscription("ws7", "workspace", "price_pro_monthly", sub_id="sub_pro", customer="cus_7")
        answer = await deliver(gate, se.event("customer.subscription.created", pro, NOW - 80))
        assert (answer["outcome"], answer["status"]) == ("applied", "paid"), answer
        exports = await check(gate, "ws7", meter="exports")
        assert (exports["tier"], exports["limit"]) == ("pro", 200 + 500)
        await deliver(gate, se.event("customer.subscription.deleted", {**pro, "status": "canceled"}, NOW - 70))
        exports = await check(gate, "ws7", meter="exports")
        assert (exports["status"], exports["limit"]) == ("ended", 10)

    async def test_an_addons_event_delivered_late_leaves_the_plan_followed(self, start):
        """The pack's subscription was created first but its event comes after pro's: folded again in created
        order, the workspace is on pro with the pack, as in order."""
        gate = await start(SAAS)
        pack = subscription("ws8", "workspace", "price_export_pack_monthly", sub_id="sub_pack", customer="cus_8")
        pro = subscription("ws8", "workspace", "price_pro_monthly", sub_id="sub_pro", customer="cus_8")
        await deliver(gate, se.event("customer.subscription.created", pro, NOW - 80))
        late = await deliver(gate, se.event("customer.subscription.created", pack, NOW - 90))
        assert (late["outcome"], late["status"]) == ("other_subscription", "paid"), late
        exports = await check(gate, "ws8", meter="exports")
        assert (exports["status"], exports["tier"], exports["limit"]) == ("paid", "pro", 700)
        body = await view(gate, "ws8")
        assert sorted((s["id"], s["followed"]) for s in body["subscriptions"]) == [("sub_pack", False), ("sub_pro", True)]

    async def test_an_unknown_feature_and_a_mixed_body_are_refused(self, start):
        gate = await start(SAAS)
        status, body = await gate.post("/v1/check", {"subject": "ws", "feature": "teleport"})
        assert (status, body["error"]) == (422, "unknown_feature")
        status, body = await gate.post("/v1/check", {"subject": "ws", "feature": "sso", "meter": "exports"})
        assert (status, body["error"]) == (400, "invalid_field")

    async def test_traits_scale_a_quota_and_outlive_stripes_events(self, start):
        gate = await start(B2B)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("org1", "org", "price_business_yearly"), NOW - 60))
        status, body = await gate.post("/v1/subjects/org1/traits", {"traits": {"members": 40}, "actor": "crm"})
        assert (status, body) == (200, {"subject": "org1", "traits": {"members": 40}})
        assert (await check(gate, "org1", meter="documents"))["limit"] == 2000
        await deliver(gate, se.event("customer.subscription.updated",
                                     subscription("org1", "org", "price_business_yearly"), NOW - 30))
        # A late event makes the fold run again from before the traits were set: they hold.
        await deliver(gate, se.event("invoice.paid", se.invoice("paid"), NOW - 45))
        assert (await check(gate, "org1", meter="documents"))["limit"] == 2000
        assert (await view(gate, "org1"))["traits"] == {"members": 40}


    async def test_a_limit_scaled_past_what_a_store_holds_is_counted_against(self, start, tmp_path):
        """The plan's largest limit times the largest trait is past 64 bits: the limit is capped where no window
        can reach it, and a count against it is stored (it was a 500 on SQLite, fail_closed on PostgreSQL)."""
        plan = tmp_path / "plans.yaml"
        plan.write_text(B2B.read_text().replace("documents: {limit: 50, per: month",
                                                "documents: {limit: 1000000000000000, per: month"))
        gate = await start(plan)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("org3", "org", "price_business_yearly"), NOW - 60))
        assert (await gate.post("/v1/subjects/org3/traits", {"traits": {"members": 1_000_000_000}}))[0] == 200
        done = await consume(gate, "org3", "documents", 7, key="doc-1")
        assert (done["allowed"], done["reason"], done["counted"], done["used"]) == (True, "ok", True, 7)
        assert done["limit"] == 2**62 and done["remaining"] == 2**62 - 7
        assert (await check(gate, "org3", meter="documents"))["used"] == 7

    async def test_traits_set_by_an_admin_are_audited_who_and_why(self, start):
        gate = await start(B2B)
        body = {"traits": {"members": 40}, "actor": "crm", "reason": "contract 2027-114: 40 members"}
        status, answer = await gate.post("/v1/subjects/org2/traits", body)
        assert status == 200, answer
        (audit,) = [t for t in (await view(gate, "org2"))["transitions"] if t["trigger"] == "admin:traits"]
        assert audit["actor"] == "crm" and audit["from"] == audit["to"]
        assert "members=40" in audit["reason"] and "contract 2027-114: 40 members" in audit["reason"]
        # the same traits again change nothing: nothing more is audited
        assert (await gate.post("/v1/subjects/org2/traits", body))[0] == 200
        assert [t["trigger"] for t in (await view(gate, "org2"))["transitions"]].count("admin:traits") == 1


class TestCredits:
    async def test_an_admin_grant_is_spent_past_the_allowance_once(self, start):
        gate = await start(AI)
        await consume(gate, "a1", "tokens", 50000)
        refused = await consume(gate, "a1", "tokens", 600)
        assert (refused["allowed"], refused["reason"], refused["credits"]) == (False, "quota_exhausted", 0)
        grant = {"meter": "tokens", "amount": 1000, "reason": "support ticket 42", "actor": "ops",
                 "idempotency_key": "ticket-42"}
        status, body = await gate.post("/v1/subjects/a1/credits", grant)
        assert status == 200 and body["granted"] is True and body["grant"]["source"] == "admin"
        status, again = await gate.post("/v1/subjects/a1/credits", grant)
        assert status == 200 and again["granted"] is False and again["grant"]["id"] == body["grant"]["id"]
        assert (await check(gate, "a1", meter="tokens", amount=600))["credits"] == 400
        spent = await consume(gate, "a1", "tokens", 600, key="job-1")
        assert (spent["allowed"], spent["credits_used"], spent["credits"], spent["used"]) == (True, 600, 400, 50000)
        repeat = await consume(gate, "a1", "tokens", 600, key="job-1")
        assert repeat["duplicate"] is True and repeat["credits_used"] == 600
        (credits,) = (await view(gate, "a1"))["credits"]
        assert credits["balance"] == 400
        assert [(g["amount"], g["remaining"], g["note"]) for g in credits["grants"]] == \
            [(1000, 400, "support ticket 42")]

    async def test_credits_pay_for_work_in_a_window_that_usage_took_past_its_limit(self, start):
        """/v1/usage counts work that already ran, which no limit holds: it took the window past its limit (the
        ceiling of a rule without overage). A consume paid whole by credits was then refused by the store, nothing
        counted nor spent, yet answered allowed, again and again: work for free. It is counted and spent now, and
        what credits cannot pay is refused."""
        gate = await start(AI)
        status, body = await gate.post("/v1/usage", {"subject": "u1", "meter": "tokens", "amount": 50001,
                                                     "idempotency_key": "ran"})
        assert status == 200 and body["used"] == 50001, body
        status, _ = await gate.post("/v1/subjects/u1/credits", {"meter": "tokens", "amount": 1000, "reason": "r"})
        assert status == 200
        for n in (1, 2):
            spent = await consume(gate, "u1", "tokens", 400, key=f"paid-{n}")
            assert (spent["allowed"], spent["counted"], spent["credits_used"], spent["overage"]) == \
                (True, True, 400, 0), spent
            assert spent["credits"] == 1000 - 400 * n
        short = await consume(gate, "u1", "tokens", 400, key="paid-3")        # 200 left: not enough
        assert (short["allowed"], short["counted"], short["credits_used"]) == (False, False, 0), short
        (credits,) = (await view(gate, "u1"))["credits"]
        assert credits["balance"] == 200

    def test_work_the_store_refused_is_never_answered_allowed(self):
        """Whatever the engine makes of the store's figures, a consume the store did not count is refused: the
        answer once said allowed while nothing was counted nor spent (the test above)."""
        table = compile_file(AI)
        state = table.initial_state("u2", NOW)
        refused = Counted(False, 50001, balance=1000, billed=0)
        decision = entitlements.decided(table, state, "tokens", 400, True, refused, NOW)
        assert (decision.allowed, decision.reason, decision.credits_used) == (False, "quota_exhausted", 0)
        assert decision.credits == 1000             # nothing was spent
        assert decision.retry_after is not None and decision.retry_after > 0

    async def test_a_grants_key_repeated_answers_the_grant_it_made_and_refuses_other_credits(self, start):
        gate = await start(AI)
        grant = {"meter": "tokens", "amount": 1000, "reason": "support ticket 43", "idempotency_key": "ticket-43"}
        status, first = await gate.post("/v1/subjects/a3/credits", grant)
        assert status == 200 and first["granted"] is True
        await consume(gate, "a3", "tokens", 50000 + 300)
        status, again = await gate.post("/v1/subjects/a3/credits", {**grant, "reason": "retried"})
        assert status == 200 and again["granted"] is False
        assert again["grant"] == {**first["grant"], "remaining": 700}
        for other in ({"amount": 5000}, {"priority": 7}, {"expires_at": "2099-01-01T00:00:00Z"}):
            status, refused = await gate.post("/v1/subjects/a3/credits", {**grant, **other})
            assert (status, refused["error"]) == (409, "idempotency_key_reused"), other
            assert "1000 of tokens" in refused["message"]
        (credits,) = (await view(gate, "a3"))["credits"]
        assert (credits["balance"], len(credits["grants"])) == (700, 1)

    async def test_a_grants_key_repeated_after_its_expiry_answers_the_grant_it_made(self, start):
        """A retry that arrives once the grant has expired is still a repeat (200, granted false), not a 400 for an
        expiry in the past; a new key with that expiry is the 400."""
        gate = await start(AI)
        expires = datetime.fromtimestamp(int(time.time()) + 3600, UTC)
        grant = {"meter": "tokens", "amount": 10, "reason": "trial credits", "idempotency_key": "ticket-44",
                 "expires_at": expires.isoformat().replace("+00:00", "Z")}
        status, first = await gate.post("/v1/subjects/a4/credits", grant)
        assert status == 200 and first["granted"] is True
        core = gate.app[GATE]
        real = core.clock
        core.clock = lambda: real() + 7200      # two hours on: the grant has expired
        status, again = await gate.post("/v1/subjects/a4/credits", grant)
        assert (status, again.get("granted"), again["grant"]["id"]) == (200, False, first["grant"]["id"]), again
        status, refused = await gate.post("/v1/subjects/a4/credits", {**grant, "idempotency_key": "ticket-45"})
        assert (status, refused["error"]) == (400, "invalid_field") and "future" in refused["message"]
        assert len((await view(gate, "a4"))["credits"][0]["grants"]) == 1

    @pytest.mark.parametrize("expires_at", ["9999-12-31T23:59:59-14:00", "9000-01-01T00:00:00Z"])
    async def test_an_expiry_past_what_a_date_holds_is_refused_and_nothing_stored(self, start, expires_at):
        """A grant expiring past the year 9999 in UTC (an offset takes 9999-12-31 there) was stored, answered 500,
        and the subject's view was a 500 from then on."""
        gate = await start(AI)
        status, refused = await gate.post("/v1/subjects/gx/credits", {"meter": "tokens", "amount": 5, "reason": "r",
                                                                       "expires_at": expires_at})
        assert (status, refused["error"]) == (400, "invalid_field") and "expires_at" in refused["message"], refused
        assert (await view(gate, "gx"))["credits"][0]["grants"] == []
        # One stored before the API refused such times: the view shows it, at the last second a date holds.
        old = Grant("admin:old", "tokens", 5, 5, 5, NOW, 253402351199.0, GrantSource.ADMIN, "r")
        assert await gate.app[GATE].store.add_grants("gx", (old,), "ops") == 1
        (shown,) = (await view(gate, "gx"))["credits"][0]["grants"]
        assert shown["expires_at"] == "9999-12-31T23:59:59Z"

    async def test_grants_holding_more_than_64_bits_are_spent_and_the_balance_says_2_62(self, start):
        """Grants whose credits add up past 2**63 - 1 (9,224 admin grants of the most one may give; here three of 2**62,
        written by the store as a stored grant is): a consume past the allowance spends them. On PostgreSQL the
        balance's sum overflowed bigint, and every such consume of the subject answered 503 (the fail mode); now
        the balance says 2**62 at the most on both stores, and each grant is still spent in turn."""
        gate = await start(AI)
        await consume(gate, "b1", "tokens", 50000)
        big = tuple(Grant(f"admin:big-{i}", "tokens", 2**62, 2**62, 5, NOW + i, None, GrantSource.ADMIN, "r")
                    for i in range(3))
        assert await gate.app[GATE].store.add_grants("b1", big, "ops") == 3
        # A check says what would be left of the balance (2**62) after the work; the consume, what the balance says.
        assert (await check(gate, "b1", meter="tokens", amount=600))["credits"] == 2**62 - 600
        spent = await consume(gate, "b1", "tokens", 600, key="past-the-allowance")
        assert (spent["allowed"], spent["counted"], spent["credits_used"], spent["credits"]) == \
            (True, True, 600, 2**62), spent
        (credits,) = (await view(gate, "b1"))["credits"]
        assert credits["balance"] == 2**62
        assert sorted(g["remaining"] for g in credits["grants"]) == [2**62 - 600, 2**62, 2**62]

    async def test_concurrent_spends_never_pass_the_balance(self, start):
        gate = await start(AI)
        await consume(gate, "a2", "tokens", 50000)
        await gate.post("/v1/subjects/a2/credits", {"meter": "tokens", "amount": 95, "reason": "test"})
        answers = await asyncio.gather(*(consume(gate, "a2", "tokens", 10, key=f"k{i}") for i in range(20)))
        assert sum(a["counted"] for a in answers) == 9
        assert (await view(gate, "a2"))["credits"][0]["balance"] == 5

    async def test_a_paid_checkout_of_packs_grants_per_quantity_once(self, start):
        gate = await start(AI)
        lines = [("price_tokens_1m", 2)]
        first = se.event("checkout.session.completed", pack_checkout("a3", "cs_pack_1", lines), NOW - 20)
        answer = await deliver(gate, first)
        assert answer["status"] == "free"           # a credit purchase moves no status (the plan tests `mode`)
        await deliver(gate, first)                  # the same event again
        await deliver(gate, se.event("checkout.session.completed", pack_checkout("a3", "cs_pack_1", lines), NOW - 10))
        (credits,) = (await view(gate, "a3"))["credits"]
        assert credits["balance"] == 2_000_000 and len(credits["grants"]) == 1
        assert credits["grants"][0]["source"] == "purchase" and credits["grants"][0]["expires_at"] is not None

    async def test_a_line_that_is_not_an_object_is_passed_over_not_a_500(self, start):
        gate = await start(AI)
        obj = pack_checkout("a3b", "cs_pack_odd", [("price_tokens_1m", 1)])
        obj["line_items"]["data"][:0] = [None, "li_x", 7]      # no Stripe line is any of these: passed over
        await deliver(gate, se.event("checkout.session.completed", obj, NOW - 10))    # was a 500, for ever
        (credits,) = (await view(gate, "a3b"))["credits"]
        assert credits["balance"] == 1_000_000 and len(credits["grants"]) == 1

    async def test_credits_are_kept_when_the_subscription_ends(self, start):
        gate = await start(AI)
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("a4", "account", "price_starter_monthly"), NOW - 90))
        await deliver(gate, se.event("checkout.session.completed",
                                     pack_checkout("a4", "cs_pack_4", [("price_tokens_1m", 1)]), NOW - 80))
        body = await view(gate, "a4")
        assert body["credits"][0]["balance"] == 1_000_000 + 200_000      # bought, and the tier's for the period
        await deliver(gate, se.event("customer.subscription.deleted",
                                     subscription("a4", "account", "price_starter_monthly", status="canceled"),
                                     NOW - 70))
        body = await view(gate, "a4")
        assert (body["status"], body["credits"][0]["balance"]) == ("lapsed", 1_000_000)


class TestLineItemsFromStripe:
    async def test_a_checkout_without_its_line_items_is_read_from_stripe(self, start, fake_stripe):
        fake_stripe.line_items["cs_pack_5"] = [{"price": "price_tokens_1m", "quantity": 3}]
        gate = await start(AI, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake_stripe.url)
        await deliver(gate, se.event("checkout.session.completed", pack_checkout("a5", "cs_pack_5"), NOW - 10))
        assert (await view(gate, "a5"))["credits"][0]["balance"] == 3_000_000
        (stored,) = [e for e in await gate.app[GATE].store.events("a5") if e.type == "checkout.session.completed"]
        assert json.loads(stored.payload)["data"]["object"]["line_items"]["data"][0]["quantity"] == 3

    @pytest.mark.parametrize("stripe_says", ["nothing (down)", "the key is refused"])
    async def test_stripe_down_or_refusing_the_key_answers_503_and_the_retry_grants(self, start, fake_stripe,
                                                                                    stripe_says):
        """A refused key (revoked, rotated) is no reason to record the purchase as granting nothing (it was, and
        every redelivery was a duplicate: the credits paid for were never granted): Stripe delivers again."""
        fake_stripe.line_items["cs_pack_6"] = [{"price": "price_tokens_1m", "quantity": 2}]
        if stripe_says == "the key is refused":
            fake_stripe.revoked = 1
        else:
            fake_stripe.failing = 1
        gate = await start(AI, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake_stripe.url)
        evt = se.event("checkout.session.completed", pack_checkout("a6", "cs_pack_6"), NOW - 10)
        body = se.encode(evt)
        async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                     headers={"Stripe-Signature": se.sign(body)}) as r:
            answer = await r.json()
            assert (r.status, answer["error"]) == (503, "stripe_unavailable"), answer
            assert KEY not in answer["message"]
        assert await gate.app[GATE].store.events("a6") == []
        await deliver(gate, evt)
        assert (await view(gate, "a6"))["credits"][0]["balance"] == 2_000_000

    async def test_a_redelivery_is_a_duplicate_without_asking_stripe(self, start, fake_stripe):
        fake_stripe.line_items["cs_pack_9"] = [{"price": "price_tokens_1m", "quantity": 1}]
        gate = await start(AI, STRIPE_SECRET_KEY=KEY, STRIPE_API_BASE=fake_stripe.url)
        evt = se.event("checkout.session.completed", pack_checkout("a9", "cs_pack_9"), NOW - 10)
        await deliver(gate, evt)
        fake_stripe.failing = 5         # Stripe's API is down: a redelivery needs nothing of it
        assert (await deliver(gate, evt))["duplicate"] is True
        assert fake_stripe.lines_asked == 1
        assert (await view(gate, "a9"))["credits"][0]["balance"] == 1_000_000

    async def test_without_a_key_a_purchase_is_answered_503_and_nothing_stored(self, start, tmp_path):
        """Stored as granting nothing (it was, answered 200), the paid pack was lost: Stripe stopped delivering
        and a redelivery after the key was set was a duplicate. `plangate serve` refuses such a plan without a
        key (TestStartupRefusesBadSettings); a reload refuses to deploy one."""
        gate = await start(AI)
        evt = se.event("checkout.session.completed", pack_checkout("a7", "cs_pack_7"), NOW)
        body = se.encode(evt)
        async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                     headers={"Stripe-Signature": se.sign(body)}) as r:
            answer = await r.json()
            assert (r.status, answer["error"]) == (503, "stripe_unavailable"), answer
            assert "STRIPE_SECRET_KEY is not set" in answer["message"]
        assert await gate.app[GATE].store.events("a7") == []

    async def test_a_reload_to_a_plan_selling_packs_needs_the_key(self, start_gate, database, tmp_path):
        plans = tmp_path / "plans.yaml"
        plans.write_text((ROOT / "plans.yaml").read_text(), encoding="utf-8")
        gate = await start_gate(plan=plans, database=database, **QUIET)
        plans.write_text(AI.read_text(), encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert (status, answer["error"]) == (409, "stripe_key_needed"), answer
        assert "STRIPE_SECRET_KEY" in answer["message"]


class TestAcrossNodes:
    async def test_two_nodes_spend_one_balance_exactly(self, start_gate, pg_dsn):
        first = await start_gate(plan=AI, database=pg_dsn, **QUIET)
        second = await start_gate(plan=AI, database=pg_dsn, **QUIET)
        await consume(first, "n1", "tokens", 50000)
        await first.post("/v1/subjects/n1/credits", {"meter": "tokens", "amount": 200, "reason": "test"})
        answers = await asyncio.gather(*(consume(node, "n1", "tokens", 7, key=f"n{i}")
                                         for i in range(40) for node in ((first, second)[i % 2],)))
        assert sum(a["counted"] for a in answers) == 28          # 28 x 7 = 196 <= 200 < 29 x 7
        assert (await view(second, "n1"))["credits"][0]["balance"] == 4


def _unused(_: web.Application) -> None:
    """aiohttp's web is imported for the fake's fixture's types."""


class TestPersonalData:
    async def test_erasure_moves_credits_and_overage_to_the_pseudonym(self, start):
        gate = await start(AI, PLANGATE_MAX_AMOUNT="100000000")
        await deliver(gate, se.event("customer.subscription.created",
                                     subscription("p1", "account", "price_scale_yearly"), NOW - 60))
        await gate.post("/v1/subjects/p1/credits", {"meter": "tokens", "amount": 10,
                                                     "reason": "Jane Doe asked nicely", "actor": "ops"})
        await consume(gate, "p1", "tokens", 20_000_015)
        status, erased = await gate.post("/v1/subjects/p1/erase", {"actor": "privacy"})
        assert status == 200, erased
        store = gate.app[GATE].store
        pseudonym = erased["pseudonym"]
        assert await store.recent_grants("p1") == [] and await store.overage_reports("p1", None) == []
        (grant,) = await store.recent_grants(pseudonym)
        assert grant.remaining == 0 and "Jane" not in grant.note
        (report,) = await store.overage_reports(pseudonym, None)
        assert (report.subject, report.value) == (pseudonym, 5)

    def test_a_reduced_checkout_keeps_its_credit_packs(self):
        from plangate.engine import compile_file
        from plangate.server.stripe.reduction import Reducer
        obj = pack_checkout("p2", "cs_pack_9", [("price_tokens_1m", 4)])
        obj["customer_details"] = {"email": "jane@example.com", "name": "Jane Doe"}
        evt = se.event("checkout.session.completed", obj, NOW)
        reduced = json.loads(Reducer(compile_file(AI)).reduce(json.dumps(evt)))
        kept = reduced["data"]["object"]
        assert "customer_details" not in kept
        assert kept["line_items"]["data"] == [{"price": {"id": "price_tokens_1m"}, "quantity": 4}]


class TestForfeit:
    """`on_cancel: forfeit` through a running gate on each store: credits bought or granted while subscribed
    cannot be spent once the subscription ends (the balance says 0, consume refuses past the allowance); what is
    bought after the end is spendable; `keep` (the shipped example) keeps them."""

    @pytest.fixture
    def forfeiting(self, tmp_path):
        path = tmp_path / "ai-forfeit.yaml"
        text = AI.read_text()
        assert text.count("on_cancel: keep") == 1
        path.write_text(text.replace("on_cancel: keep", "on_cancel: forfeit"), encoding="utf-8")
        return path

    @pytest.mark.parametrize("on_cancel", ["forfeit", "keep"])
    async def test_credits_of_an_ended_subscription(self, start, forfeiting, on_cancel):
        gate = await start(forfeiting if on_cancel == "forfeit" else AI)
        sub = subscription("f1", "account", "price_starter_monthly", sub_id="sub_f1", customer="cus_f1")
        await deliver(gate, se.event("customer.subscription.created", sub, NOW - 600))
        await deliver(gate, se.event("checkout.session.completed",
                                     pack_checkout("f1", "cs_f1_a", [("price_tokens_1m", 1)], customer="cus_f1"),
                                     NOW - 500))
        assert (await view(gate, "f1"))["credits"][0]["balance"] == 1_200_000     # the tier grants 200000 too
        ended = {**sub, "status": "canceled", "ended_at": int(NOW - 300), "canceled_at": int(NOW - 300)}
        await deliver(gate, se.event("customer.subscription.deleted", ended, NOW - 300))
        assert (await view(gate, "f1"))["status"] == "lapsed"
        await consume(gate, "f1", "tokens", 50000)           # the lapsed allowance used up
        after_end = await consume(gate, "f1", "tokens", 1000)
        if on_cancel == "keep":
            assert (after_end["allowed"], after_end["credits_used"]) == (True, 1000)
            assert (await view(gate, "f1"))["credits"][0]["balance"] >= 999_000
            return
        assert (after_end["allowed"], after_end["reason"], after_end["credits"]) == (False, "quota_exhausted", 0)
        credits = (await view(gate, "f1"))["credits"][0]
        assert credits["balance"] == 0
        # The view still lists the forfeited grants, with something left, and says they cannot be spent.
        assert ("purchase", 1_000_000, False) in [(g["source"], g["remaining"], g["spendable"])
                                                  for g in credits["grants"]]
        assert not any(g["spendable"] for g in credits["grants"])
        # granted or bought after the end: spendable, and only they
        status, _ = await gate.post("/v1/subjects/f1/credits", {"meter": "tokens", "amount": 5000,
                                                                 "reason": "goodwill", "actor": "ops"})
        assert status == 200 and (await view(gate, "f1"))["credits"][0]["balance"] == 5000
        await deliver(gate, se.event("checkout.session.completed",
                                     pack_checkout("f1", "cs_f1_b", [("price_tokens_1m", 1)], customer="cus_f1"),
                                     NOW - 100))
        bought = await consume(gate, "f1", "tokens", 1000)
        assert (bought["allowed"], bought["credits_used"]) == (True, 1000)
        credits = (await view(gate, "f1"))["credits"][0]
        assert credits["balance"] == 1_004_000
        assert credits["balance"] == sum(g["remaining"] for g in credits["grants"] if g["spendable"])


    async def test_a_first_subscription_never_paid_forfeits_nothing(self, start, forfeiting):
        """A free account buys a pack, then starts a subscription whose first payment never comes (3-D Secure
        abandoned): `incomplete`, `incomplete_expired` 23 hours later. Nothing was canceled; the pack was lost."""
        gate = await start(forfeiting)
        await deliver(gate, se.event("checkout.session.completed",
                                     pack_checkout("f2", "cs_f2", [("price_tokens_1m", 1)], customer="cus_f2"),
                                     NOW - 3 * 86400))
        sub = subscription("f2", "account", "price_starter_monthly", sub_id="sub_f2", customer="cus_f2",
                           status="incomplete")
        await deliver(gate, se.event("customer.subscription.created", sub, NOW - 2 * 86400))
        await deliver(gate, se.event("customer.subscription.updated", {**sub, "status": "incomplete_expired"},
                                     NOW - 86400 + 3600))
        assert (await view(gate, "f2"))["status"] == "free"
        await consume(gate, "f2", "tokens", 50000)           # the free allowance used up
        more = await consume(gate, "f2", "tokens", 1000)
        assert (more["allowed"], more["credits_used"]) == (True, 1000), more

    async def test_forfeited_tier_credits_do_not_come_back_as_a_new_subscriptions_rollover(self, start, forfeiting):
        """Starter grants 200000 a period, up to 100000 carried into the next. The subscription ends with the
        period's grant unspent (forfeited); a month later the account subscribes again: its first period holds
        the period's 200000 and nothing carried (the carry was made of the forfeited grant and of the windows with
        no subscription)."""
        t0 = NOW - 45 * 86400
        gate = await start(forfeiting, PLANGATE_MAX_AMOUNT=str(10**9))
        gate.app[GATE].clock = lambda: t0 + 60
        sub = {**subscription("f3", "account", "price_starter_monthly", sub_id="sub_f3", customer="cus_f3"),
               "created": int(t0)}
        sub["items"]["data"][0].update(current_period_start=int(t0), current_period_end=int(t0 + 30 * 86400))
        await deliver(gate, se.event("customer.subscription.created", sub, t0 + 10))
        assert (await consume(gate, "f3", "tokens", 1, key="old"))["allowed"] is True
        gate.app[GATE].clock = lambda: t0 + 10 * 86400 + 60
        ended = {**sub, "status": "canceled", "ended_at": int(t0 + 10 * 86400)}
        await deliver(gate, se.event("customer.subscription.deleted", ended, t0 + 10 * 86400))
        assert (await view(gate, "f3"))["credits"][0]["balance"] == 0
        gate.app[GATE].clock = lambda: NOW
        again = {**subscription("f3", "account", "price_starter_monthly", sub_id="sub_f3_new", customer="cus_f3"),
                 "created": int(NOW - 86400)}
        await deliver(gate, se.event("customer.subscription.created", again, NOW - 86400))
        assert (await view(gate, "f3"))["status"] == "subscribed"
        assert (await consume(gate, "f3", "tokens", 1, key="new"))["allowed"] is True
        assert (await view(gate, "f3"))["credits"][0]["balance"] == 200_000


def starter(subject: str, start: float, end: float, *, sub_id: str = "sub_r1", status: str = "active",
            created: float | None = None) -> dict:
    """A Starter subscription (200000 tokens a billing period, up to 100000 carried over) in the given period."""
    sub = subscription(subject, "account", "price_starter_monthly", sub_id=sub_id, customer=f"cus_{subject}",
                       status=status)
    sub["created"] = int(start if created is None else created)
    sub["items"]["data"][0].update(current_period_start=int(start), current_period_end=int(end))
    return sub


class TestTierCreditsAcrossRenewals:
    """A tier's credits of a billing period end with that period as Stripe's renewal says it. Between a period's
    end and Stripe's renewal event the gate guesses the next window from the last period's length; a grant made
    then ended where the guess said."""

    @staticmethod
    async def renewed_after_a_guess(start, subject: str, t1: float, days: int, renewed: int):
        """A period of `days` ending at t1, a consume a minute after its end (the grant made for a window guessed
        from that length), then Stripe's renewal of `renewed` days: (the gate, its core, whose clock tests move)."""
        t0 = t1 - days * 86400
        gate = await start(AI, PLANGATE_MAX_AMOUNT=str(10**9))
        core = gate.app[GATE]
        core.clock = lambda: t0 + 60
        await deliver(gate, se.event("customer.subscription.created", starter(subject, t0, t1), t0 + 10))
        core.clock = lambda: t1 + 60
        assert (await consume(gate, subject, "tokens", 1, key="gap"))["allowed"] is True
        await deliver(gate, se.event("customer.subscription.updated", starter(subject, t1, t1 + renewed * 86400),
                                     t1 + 120))
        return gate, core

    async def test_a_renewal_shorter_than_guessed_ends_the_old_grant(self, start):
        """A 31-day period, a consume an hour after its end (the renewal not reported yet: the grant made for a
        guessed 31-day window), a renewal of 28 days. In the next period: its 200000 and 100000 carried over. The
        guessed grant outlived its window beside its own carry-over: 500000."""
        t1 = NOW - 3600
        gate, core = await self.renewed_after_a_guess(start, "r1", t1, 31, 28)
        core.clock = lambda: t1 + 28 * 86400 + 60
        await deliver(gate, se.event("customer.subscription.updated",
                                     starter("r1", t1 + 28 * 86400, t1 + 59 * 86400), t1 + 28 * 86400 + 30))
        assert (await view(gate, "r1"))["credits"][0]["balance"] == 300_000
        await consume(gate, "r1", "tokens", 2_000_000, key="allowance")     # the period's allowance
        past = await consume(gate, "r1", "tokens", 300_001, key="past")
        assert (past["allowed"], past["credits"]) == (False, 300_000), past

    async def test_a_renewal_longer_than_guessed_keeps_the_grant_to_its_end(self, start):
        """A 28-day period (February), a consume after its end before the renewal (guessed: 28 days more), a
        renewal of 31 days (March). On its 30th day the period's grant still holds; it had ended on the 28th,
        and no new one was made for the rest of the period."""
        t1 = NOW - 29 * 86400
        gate, core = await self.renewed_after_a_guess(start, "r4", t1, 28, 31)
        core.clock = lambda: t1 + 29 * 86400 + 60
        await consume(gate, "r4", "tokens", 2_000_000, key="allowance")
        beyond = await consume(gate, "r4", "tokens", 1000, key="beyond")
        assert (beyond["allowed"], beyond["credits_used"]) == (True, 1000), beyond

    async def test_a_new_subscription_mid_window_does_not_count_the_old_grant_twice(self, start):
        """The subscription ends ten days into its period; a new one starts two days later, with its own period.
        The old period's grant lived on to its own end beside the new period's grant and a carry-over made of it:
        500000."""
        t0 = NOW - 12 * 86400 - 3600
        gate = await start(AI, PLANGATE_MAX_AMOUNT=str(10**9))
        core = gate.app[GATE]
        core.clock = lambda: t0 + 60
        await deliver(gate, se.event("customer.subscription.created", starter("r2", t0, t0 + 30 * 86400), t0 + 10))
        assert (await consume(gate, "r2", "tokens", 1, key="old"))["allowed"] is True
        core.clock = lambda: t0 + 10 * 86400 + 60
        ended = {**starter("r2", t0, t0 + 30 * 86400, status="canceled"), "ended_at": int(t0 + 10 * 86400)}
        await deliver(gate, se.event("customer.subscription.deleted", ended, t0 + 10 * 86400))
        core.clock = lambda: t0 + 12 * 86400 + 60
        again = starter("r2", t0 + 12 * 86400, t0 + 42 * 86400, sub_id="sub_r2_new")
        await deliver(gate, se.event("customer.subscription.created", again, t0 + 12 * 86400 + 10))
        assert (await consume(gate, "r2", "tokens", 1, key="new"))["allowed"] is True
        assert (await view(gate, "r2"))["credits"][0]["balance"] == 200_000
