"""Plan changes against stored subjects, on both stores (a SQLite file and a real PostgreSQL): renamed and
removed statuses and tiers with and without a mapping, lowered quotas with each existing_subscribers choice,
reloads refused and accepted, and a sweep that one broken subject cannot stop."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from plangate.engine import compile_file
from plangate.policy import check_text, version_of
from plangate.server.http.app import create_app
from plangate.server.plan_versions import PlanRefused
from plangate.server.store import open_store
from tests import postgres
from tests.plan_change import (RETIRE_BILLING_PROBLEM, RETIRE_TEAM, V1, WITHOUT_BILLING_PROBLEM, WITHOUT_TEAM, edited,
                               lowered_pro, renamed)

from . import stripe_events as se
from .conftest import ServedGate, config_for, token_for
from .store_locks import writes_held
from .test_openapi import documented

DAY = 86400.0


@pytest.fixture
def store_url(each_database) -> str:
    """The store of the test's gates: each kind."""
    return each_database


class Rig:
    """One gate at a time on one store, started on a plan file this test writes (stopped before the next, as a
    deploy restarts a node)."""

    def __init__(self, folder: Path, database: str):
        self.plan = folder / "plans.yaml"
        self.database = database
        self.server: TestServer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.gate: ServedGate | None = None

    def write(self, text: str) -> None:
        self.plan.write_text(text, encoding="utf-8")

    async def start(self, text: str | None = None) -> ServedGate:
        await self.stop()
        if text is not None:
            self.write(text)
        config = config_for(self.database, PLANGATE_PLANS=str(self.plan), STRIPE_WEBHOOK_SECRET=se.SECRET,
                            PLANGATE_SWEEP_SCHEDULE="0 0 1 1 *")
        app = create_app(config, compile_file(config.plans), open_store(config.database, **config.store_options()))
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self.gate = ServedGate(str(self.server.make_url("")).rstrip("/"), self.session, app, self.database)
        return self.gate

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.server is not None:
            server, self.server = self.server, None
            await server.close()

    async def call(self, method: str, path: str, template: str, body=None):
        """A request whose answer must be what schema/openapi.json documents."""
        headers = {"Authorization": f"Bearer {token_for(path)}"}
        async with self.session.request(method, self.gate.url + path, json=body, headers=headers) as resp:
            payload = await resp.json()
            documented(method, template, resp.status, resp.content_type, payload, resp.headers)
            return resp.status, payload

    async def webhook(self, type_: str, obj: dict, created: float | None = None) -> dict:
        body = se.encode(se.event(type_, obj, created or time.time()))
        async with self.session.post(self.gate.url + "/webhook/stripe", data=body,
                                     headers={"Stripe-Signature": se.sign(body)}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def subscribe(self, subject: str, price: str = "price_pro", *, start: float | None = None,
                        days: float = 30) -> None:
        """An active subscription (its period began 10 days ago unless `start` says)."""
        start = time.time() - 10 * DAY if start is None else start
        n = abs(hash(subject)) % 10**8
        sub = se.subscription("active", subject, sub_id=f"sub_{n}", customer=f"cus_{n}", start=start,
                              end=start + days * DAY, price=price)
        answer = await self.webhook("customer.subscription.created", sub)
        assert answer["status"] == "paid", answer

    async def renew(self, subject: str) -> float:
        """Stripe reports the renewal of `subject`'s subscribe()d one: the next period starts in 2 s (Stripe's times
        are whole seconds, after any deploy just made); when it starts."""
        n = abs(hash(subject)) % 10**8
        renewal = time.time() + 2
        await self.webhook("customer.subscription.updated", se.subscription(
            "active", subject, sub_id=f"sub_{n}", customer=f"cus_{n}", start=renewal, end=renewal + 30 * DAY,
            price="price_pro"))
        return renewal

    async def move(self, subject: str, to: str) -> None:
        status, body = await self.call("POST", f"/v1/subjects/{subject}/transition",
                                       "/v1/subjects/{subject}/transition", {"to": to, "reason": "test"})
        assert status == 200 and body["to"] == to, body

    async def subject(self, subject: str) -> dict:
        status, body = await self.call("GET", f"/v1/subjects/{subject}", "/v1/subjects/{subject}")
        assert status == 200, body
        return body

    async def check(self, subject: str, amount: int = 1) -> dict:
        status, body = await self.call("POST", "/v1/check", "/v1/check",
                                       {"subject": subject, "meter": "requests", "amount": amount})
        assert status == 200, body
        return body

    async def plan_view(self) -> dict:
        status, body = await self.call("GET", "/v1/plan", "/v1/plan")
        assert status == 200, body
        return body


@pytest.fixture
async def rig(tmp_path, store_url):
    r = Rig(tmp_path, store_url)
    yield r
    await r.stop()


def plan_changes(view: dict) -> list[dict]:
    return [t for t in view["transitions"] if t["trigger"] == "plan"]


class TestRenamedAndRemoved:
    async def test_a_renamed_status_moves_its_subjects_once_audited(self, rig):
        await rig.start(V1)
        for name in ("ann", "bob"):
            await rig.webhook("checkout.session.completed", se.checkout(name, f"cus_{name}", f"sub_{name}"))
        before = await rig.subject("ann")
        assert before["status"] == "trial"

        await rig.start(renamed("trial", "paid_trial"))
        after = await rig.subject("ann")
        assert (after["status"], after["timer_due"]) == ("paid_trial", before["timer_due"])
        (change,) = plan_changes(after)
        assert (change["from"], change["to"], change["actor"]) == ("trial", "paid_trial", "plan")
        assert change["reason"] == "plan change: status 'trial' is now 'paid_trial' (renamed_from)"
        assert (await rig.check("bob"))["limit"] == 500
        (deploy, first) = (await rig.plan_view())["history"][:2]
        assert (deploy["moved"], deploy["previous"], first["previous"]) == (2, first["version"], None)
        assert "1 change(s): 1 status" == deploy["summary"]

        await rig.start()           # again, on the same plan: nothing moves twice
        assert len(plan_changes(await rig.subject("ann"))) == 1
        assert len((await rig.plan_view())["history"]) == 2

    async def test_a_removed_status_without_mapping_refuses_to_start(self, rig):
        await rig.start(V1)
        for name in ("ann", "bob"):
            await rig.move(name, "billing_problem")
        await rig.stop()
        rig.write(edited(*WITHOUT_BILLING_PROBLEM))
        with pytest.raises(PlanRefused) as refused:
            await rig.start()
        message = str(refused.value)
        assert "status 'billing_problem': 2 stored subject(s)" in message
        assert "retired: {statuses: {billing_problem: <new status>}}" in message
        assert [s.to_dict()["count"] for s in refused.value.stranded] == [2]
        await rig.start(V1)         # nothing was deployed or moved
        assert (await rig.subject("ann"))["status"] == "billing_problem"
        assert len((await rig.plan_view())["history"]) == 1

    async def test_a_removed_status_with_a_mapping_moves_its_subjects(self, rig):
        await rig.start(V1)
        await rig.move("ann", "billing_problem")
        await rig.start(edited(*WITHOUT_BILLING_PROBLEM) + RETIRE_BILLING_PROBLEM)
        view = await rig.subject("ann")
        assert view["status"] == "canceled"
        (change,) = plan_changes(view)
        assert "status 'billing_problem' was removed; its subjects go to 'canceled' (retired)" in change["reason"]
        decision = await rig.check("ann")
        assert (decision["allowed"], decision["reason"]) == (False, "status_denies")

    async def test_a_removed_tier_refuses_without_mapping_and_moves_with_one(self, rig):
        await rig.start(V1)
        await rig.subscribe("ann", "price_team")
        assert (await rig.check("ann"))["limit"] == 20000
        await rig.stop()
        rig.write(edited(*WITHOUT_TEAM))
        with pytest.raises(PlanRefused, match="tier 'team': 1 stored subject"):
            await rig.start()
        await rig.start(edited(*WITHOUT_TEAM) + RETIRE_TEAM)
        view = await rig.subject("ann")
        assert (view["status"], view["tier"]) == ("paid", "pro")
        assert "tier 'team' was removed; its subjects go to 'pro' (retired)" in plan_changes(view)[0]["reason"]
        assert (await rig.check("ann"))["limit"] == 5000

    async def test_a_renamed_tier_keeps_its_quota(self, rig):
        await rig.start(V1)
        await rig.subscribe("ann", "price_team")
        await rig.start(renamed("team", "business"))
        view = await rig.subject("ann")
        assert view["tier"] == "business" and (await rig.check("ann"))["limit"] == 20000


class TestRenameChains:
    async def test_a_status_renamed_twice_leaves_no_subjects_events_unfoldable(self, rig):
        """trial becomes trial2, then trial2 becomes trial3 (each plan maps one step back, as a rename is
        written). Ann's status moved with each deploy, but the state her Stripe events alone gave (kept through
        plan changes for the next fold) still said `trial`, which the third plan neither has nor maps: her next
        Stripe event was a 500, delivered again and again, while her trial timer ran on."""
        now = time.time()
        await rig.start(V1)
        await rig.webhook("checkout.session.completed", se.checkout("ann", "cus_ann", "sub_ann"), now - 60)
        v2 = renamed("trial", "trial2")
        await rig.start(v2)
        assert (await rig.subject("ann"))["status"] == "trial2"
        v3 = renamed("trial2", "trial3", base=v2).replace("    renamed_from: [trial]\n", "")
        assert "renamed_from: [trial2]" in v3 and "renamed_from: [trial]" not in v3
        await rig.start(v3)
        assert (await rig.subject("ann"))["status"] == "trial3"
        answer = await rig.webhook("invoice.paid", se.invoice("paid", sub_id="sub_ann", customer="cus_ann"), now - 30)
        assert answer["status"] == "paid", answer
        assert (await rig.subject("ann"))["status"] == "paid"

    async def test_a_late_event_under_a_name_renamed_twice_is_not_applied_after_newer_ones(self, rig):
        """The same fold state, and an event older than events folded since (a failed payment from the trial, after
        the subscription had been paid for): it cannot be put among them, and applied after them it moved a paid
        subscriber to grace. It is recorded stale."""
        now = time.time()
        await rig.start(V1)
        await rig.webhook("checkout.session.completed", se.checkout("ann", "cus_ann", "sub_ann"), now - 60)
        sub = se.subscription("active", "ann", sub_id="sub_ann", customer="cus_ann", start=now - 30,
                              end=now + 30 * DAY, price="price_pro")
        await rig.webhook("customer.subscription.created", sub, now - 30)
        assert (await rig.subject("ann"))["status"] == "paid"
        v2 = renamed("trial", "trial2")
        await rig.start(v2)
        await rig.start(renamed("trial2", "trial3", base=v2).replace("    renamed_from: [trial]\n", ""))
        answer = await rig.webhook("invoice.payment_failed", se.invoice("open", sub_id="sub_ann", customer="cus_ann"),
                                   now - 45)
        assert (answer["outcome"], answer["status"]) == ("stale", "paid"), answer


    @staticmethod
    def _team_renamed_twice() -> tuple[str, str]:
        v2 = renamed("team", "team2")
        return v2, renamed("team2", "team3", base=v2).replace("    renamed_from: [team]\n", "")

    async def _subscription(self, rig, sub_id: str, created: float, price: str = "price_team") -> dict:
        sub = se.subscription("active", "ann", sub_id=sub_id, customer="cus_ann", start=created,
                              end=created + 30 * DAY, price=price)
        sub["created"] = int(created)
        await rig.webhook("customer.subscription.created", sub, created)
        return sub

    async def test_an_event_after_a_tier_renamed_twice_keeps_the_subjects_tier(self, rig):
        """team becomes team2, then team3. Ann's tier moved with each deploy, but the state her Stripe events alone
        gave still said `team`: her next invoice.paid wrote `team` back. v3 neither has nor maps it: she was
        decided by the default tier (5000, not 20000), and the gate refused to start again (a stranded tier)."""
        now = time.time()
        await rig.start(V1)
        await self._subscription(rig, "sub_a", now - 10 * DAY)
        v2, v3 = self._team_renamed_twice()
        await rig.start(v2)
        await rig.start(v3)
        answer = await rig.webhook("invoice.paid", se.invoice("paid", sub_id="sub_a", customer="cus_ann"), now - 60)
        assert answer["status"] == "paid", answer
        view = await rig.subject("ann")
        assert (view["tier"], [s["tier"] for s in view["subscriptions"]]) == ("team3", ["team3"]), view
        assert (await rig.check("ann"))["limit"] == 20000
        await rig.start()           # the same plan again: nothing is stranded

    async def test_the_subscription_followed_next_has_the_renamed_tier(self, rig):
        """Ann follows her newer pro subscription; an older team one lives on beside it. team becomes team2, then
        team3; then the pro one is canceled and she follows the team one. Its stored tier still said `team`, which
        the subject took: the default tier's quota, and a gate that would not start again."""
        now = time.time()
        await rig.start(V1)
        await self._subscription(rig, "sub_team", now - 20 * DAY)
        pro = await self._subscription(rig, "sub_pro", now - 10 * DAY, "price_pro")
        assert (await rig.subject("ann"))["tier"] == "pro"
        v2, v3 = self._team_renamed_twice()
        await rig.start(v2)
        await rig.start(v3)
        assert [s["tier"] for s in (await rig.subject("ann"))["subscriptions"]] == ["team3", "pro"]
        ended = {**pro, "status": "canceled", "ended_at": int(now - 30), "canceled_at": int(now - 30)}
        answer = await rig.webhook("customer.subscription.deleted", ended, now - 30)
        assert (answer["outcome"], answer["status"]) == ("other_subscription", "paid"), answer
        view = await rig.subject("ann")
        assert view["tier"] == "team3", view
        assert (await rig.check("ann"))["limit"] == 20000
        await rig.start()


class TestTimersAcrossDeploys:
    async def test_a_late_event_keeps_a_running_timer_whose_duration_changed(self, rig):
        """Ann entered a 7-day trial five days ago; a deploy shortened trials to 3 days (a running timer keeps its
        due time). A late delivery of an event older than her checkout folded her events again under the new
        plan: the trial was entered again with 3 days, two days past, and she went to billing_problem at once."""
        now = time.time()
        await rig.start(V1)
        await rig.webhook("checkout.session.completed", se.checkout("ann", "cus_ann", "sub_ann"), now - 5 * DAY)
        before = await rig.subject("ann")
        assert before["status"] == "trial"
        await rig.start(edited(("    expires_after: 7d\n", "    expires_after: 3d\n")))
        assert ((await rig.subject("ann"))["status"], (await rig.subject("ann"))["timer_due"]) == \
            ("trial", before["timer_due"])
        late = se.subscription("incomplete", "ann", sub_id="sub_ann", customer="cus_ann", start=now - 5 * DAY,
                               end=now + 25 * DAY, price="price_pro")
        await rig.webhook("customer.subscription.updated", late, now - 5 * DAY - 60)
        view = await rig.subject("ann")
        assert (view["status"], view["timer_due"]) == ("trial", before["timer_due"]), view["transitions"]

    async def test_a_late_payment_still_moves_grace_to_the_date_paid_through(self, rig):
        """Kept across a deploy, a grace timer still never ends before the date paid through, which a late
        invoice.paid (the period's renewal, paid 15 days ago) tells."""
        now = time.time()
        await rig.start(V1)
        sub = se.subscription("active", "gil", sub_id="sub_g", customer="cus_g", start=now - 20 * DAY,
                              end=now + 10 * DAY, price="price_pro")
        await rig.webhook("customer.subscription.created", sub, now - 20 * DAY)
        await rig.webhook("invoice.payment_failed", se.invoice("open", sub_id="sub_g", customer="cus_g",
                                                               inv_id="in_up"), now - DAY)
        held = await rig.subject("gil")
        assert held["status"] == "grace", held
        await rig.start(edited(("requests: {limit: 20000, per: billing_period}",
                                "requests: {limit: 25000, per: billing_period}")))
        paid = se.invoice("paid", sub_id="sub_g", customer="cus_g", inv_id="in_renew", period_end=now + 10 * DAY)
        await rig.webhook("invoice.paid", paid, now - 15 * DAY)
        view = await rig.subject("gil")
        assert view["status"] == "grace" and view["timer_due"] > held["timer_due"], (held, view)


class TestGrandfathering:
    @pytest.mark.parametrize("policy, limit_now, limit_after_renewal", [
        ("now", 3000, 3000), ("at_renewal", 5000, 3000), ("never", 5000, 5000)])
    async def test_a_lowered_quota(self, rig, policy, limit_now, limit_after_renewal):
        gate = await rig.start(V1)
        await rig.subscribe("ann")
        for _ in range(4):
            await gate.consume("ann", 1000)
        v1 = (await rig.plan_view())["version"]

        await rig.start(lowered_pro(policy))
        decision = await rig.check("ann")
        assert (decision["limit"], decision["used"], decision["allowed"]) == (limit_now, 4000, limit_now == 5000)
        view = await rig.subject("ann")
        assert view["plan_version"] == (v1 if policy != "now" else (await rig.plan_view())["version"])
        assert view["plan_kept"] == (None if policy == "now" else policy)
        assert (await rig.check("newcomer"))["status"] == "free"
        await rig.subscribe("newcomer")
        assert (await rig.check("newcomer"))["limit"] == 3000        # a new subscriber: the quota as it is

        await rig.renew("ann")
        assert (await rig.check("ann"))["limit"] == limit_after_renewal

    async def test_a_later_deploy_leaves_those_renewed_since_on_the_new_quota(self, rig):
        """v2 lowers pro at_renewal; Ann renews after it and gets 3000. A third deploy changing something else
        leaves her there: her version stopped being the active one when v2 came (she got v1's 5000 again)."""
        await rig.start(V1)
        await rig.subscribe("ann")
        v2 = lowered_pro("at_renewal")
        await rig.start(v2)
        assert (await rig.check("ann"))["limit"] == 5000
        renewal = await rig.renew("ann")
        assert (await rig.check("ann"))["limit"] == 3000
        await asyncio.sleep(renewal - time.time() + 0.1)      # the third deploy after the renewal's period began
        await rig.start(edited(("expires_after: 7d", "expires_after: 14d"), base=v2))
        assert (await rig.check("ann"))["limit"] == 3000

    @pytest.mark.parametrize("policy", ["never", "at_renewal"])
    async def test_a_third_deploy_finds_the_renewed_on_v2(self, rig, store_url, policy):
        """v2 lowers pro at_renewal; Ann renews under it (3000). v3 lowers pro again (2000) with `policy`. Her
        stored version still said v1: v3 gave her v1's 5000 for good (never), or its 2000 at once (at_renewal)."""
        await rig.start(V1)
        await rig.subscribe("ann")
        v2 = lowered_pro("at_renewal")
        await rig.start(v2)
        v2_version = (await rig.plan_view())["version"]
        renewal = await rig.renew("ann")
        assert (await rig.check("ann"))["limit"] == 3000
        await asyncio.sleep(renewal - time.time() + 0.1)      # the third deploy after the renewal's period began
        await rig.start(lowered_pro(policy, 2000))
        decision = await rig.check("ann")
        assert decision["limit"] == 3000, decision
        view = await rig.subject("ann")
        assert (view["plan_version"], view["plan_kept"]) == (v2_version, policy)
        assert await _rows(store_url, "SELECT plan_version FROM subscriptions WHERE subject = 'ann'") == \
            [(v2_version,)]

    async def test_a_tier_renamed_twice_keeps_its_subscribers_quota(self, rig):
        """pro becomes pro2 (v2, lowered at_renewal), then pro3 (v3, a rename only: each plan maps one step back).
        Ann, not renewed since v2, kept v1's 5000 under v2 and lost it under v3; and after a restart on v3, which
        read v2's document no more (no subject is on it), too."""
        await rig.start(V1)
        await rig.subscribe("ann", days=365)
        v2 = renamed("pro", "pro2", base=lowered_pro("at_renewal"))
        await rig.start(v2)
        assert (await rig.check("ann"))["limit"] == 5000
        v3 = renamed("pro2", "pro3", base=v2).replace("    renamed_from: [pro]\n", "")
        await rig.start(v3)
        for _ in range(2):      # deployed, then started again on the same plan
            view = await rig.subject("ann")
            assert (view["tier"], view["plan_kept"]) == ("pro3", "at_renewal"), view
            assert (await rig.check("ann"))["limit"] == 5000
            await rig.start()
        assert (await rig.check("newcomer"))["status"] == "free"
        await rig.subscribe("newcomer")
        assert (await rig.check("newcomer"))["limit"] == 3000

    async def test_versions_between_are_read_for_names_and_kept_for_nobody(self, rig):
        """A deploy reads every version since the oldest one a subject is on, for the names its tiers had. Those no
        subject is on were pinned as well: listed in kept_versions (/readyz, /v1/plan, every local client's set
        of versions it leaves to the gate) and compiled for nobody."""
        await rig.start(V1)
        v1 = (await rig.plan_view())["version"]
        await rig.subscribe("ann", days=365)
        v2 = renamed("pro", "pro2", base=lowered_pro("at_renewal"))
        v3 = renamed("pro2", "pro3", base=v2).replace("    renamed_from: [pro]\n", "")
        v4 = v3.replace("requests: {limit: 3000, per: billing_period}", "requests: {limit: 2500, per: billing_period}")
        assert v4 != v3
        for text in (v2, v3, v4):
            await rig.start(text)
        v3_version = version_of(check_text(v3).plan)
        assert sorted((await rig.plan_view())["kept_versions"]) == sorted([v1, v3_version])   # v3 ran until now
        await rig.start()       # started again on v4: only what a subject is on
        assert (await rig.plan_view())["kept_versions"] == [v1]
        view = await rig.subject("ann")
        assert (view["tier"], view["plan_kept"], (await rig.check("ann"))["limit"]) == ("pro3", "at_renewal", 5000)

    async def test_upgrade_moves_kept_subscribers_audited(self, rig):
        await rig.start(V1)
        await rig.subscribe("ann")
        await rig.subscribe("bob")
        await rig.subscribe("cat", "price_team")
        await rig.start(lowered_pro("never"))
        assert (await rig.check("ann"))["limit"] == 5000
        status, body = await rig.call("POST", "/v1/plan/upgrade", "/v1/plan/upgrade",
                                      {"subjects": ["ann"], "reason": "new prices for ann"})
        assert (status, body["moved"]) == (200, 1)
        assert (await rig.check("ann"))["limit"] == 3000 and (await rig.check("bob"))["limit"] == 5000
        (change,) = plan_changes(await rig.subject("ann"))
        assert change["reason"].startswith("plan change: upgraded from plan version ")
        status, body = await rig.call("POST", "/v1/plan/upgrade", "/v1/plan/upgrade",
                                      {"tier": "pro", "reason": "everyone on the new prices"})
        assert (status, body["moved"]) == (200, 1)          # bob; cat's tier kept nothing
        assert (await rig.check("bob"))["limit"] == 3000
        status, body = await rig.call("POST", "/v1/plan/upgrade", "/v1/plan/upgrade",
                                      {"tier": "gold", "reason": "r"})
        assert (status, body["error"]) == (422, "unknown_tier")
        status, body = await rig.call("POST", "/v1/plan/upgrade", "/v1/plan/upgrade",
                                      {"tier": "pro", "subjects": ["cat"], "reason": "r"})
        assert (status, body["error"]) == (400, "invalid_field") and "not both" in body["message"]

    async def test_a_late_event_does_not_undo_an_upgrade(self, rig):
        """A delivery Stripe retried, created between two stored events, is folded again from before it: the
        subject came back on the older version (limit 5000, plan_kept) that the admin had upgraded it from."""
        now = time.time()
        await rig.start(V1)
        sub = dict(sub_id="sub_late", customer="cus_late", start=now - 10 * DAY, end=now + 20 * DAY, price="price_pro")
        await rig.webhook("customer.subscription.created", se.subscription("active", "ann", **sub), now - 100)
        await rig.webhook("invoice.paid", se.invoice("paid", sub_id=sub["sub_id"], customer=sub["customer"]), now - 50)
        await rig.start(lowered_pro("never"))
        assert (await rig.check("ann"))["limit"] == 5000
        status, body = await rig.call("POST", "/v1/plan/upgrade", "/v1/plan/upgrade",
                                      {"subjects": ["ann"], "reason": "new prices for ann"})
        assert (status, body["moved"]) == (200, 1)
        await rig.webhook("customer.subscription.updated", se.subscription("active", "ann", **sub), now - 75)
        assert (await rig.check("ann"))["limit"] == 3000
        assert (await rig.subject("ann"))["plan_kept"] is None

    async def test_a_kept_subscriber_keeps_the_quota_through_grace(self, rig):
        await rig.start(V1)
        await rig.subscribe("ann")
        await rig.start(lowered_pro("never"))
        await rig.webhook("invoice.payment_failed", se.invoice("open", sub_id=f"sub_{abs(hash('ann')) % 10**8}",
                                                              customer=f"cus_{abs(hash('ann')) % 10**8}"))
        decision = await rig.check("ann")
        assert (decision["status"], decision["limit"]) == ("grace", 5000)


class TestReload:
    async def test_refused_then_accepted(self, rig):
        await rig.start(V1)
        await rig.move("ann", "billing_problem")
        v1 = (await rig.plan_view())["version"]

        rig.write(edited(*WITHOUT_BILLING_PROBLEM))
        status, body = await rig.call("POST", "/v1/plan/reload", "/v1/plan/reload")
        assert (status, body["error"]) == (409, "plan_strands_subjects")
        assert body["stranded"] == [{"kind": "status", "name": "billing_problem", "count": 1,
                                     "fix": body["stranded"][0]["fix"]}]
        assert (await rig.plan_view())["version"] == v1
        async with rig.session.get(rig.gate.url + "/readyz") as resp:
            ready = await resp.json()
        assert ready["checks"]["plan"]["last_reload"] == {"outcome": "refused", "reason": "plan_strands_subjects"}
        assert ready["checks"]["plan"]["version"] == v1 and resp.status == 200

        rig.write("version: 1\nmeters: {}\n")
        status, body = await rig.call("POST", "/v1/plan/reload", "/v1/plan/reload", {"actor": "ops"})
        assert (status, body["error"]) == (422, "plan_invalid") and body["findings"]

        rig.write(edited(*WITHOUT_BILLING_PROBLEM) + RETIRE_BILLING_PROBLEM)
        status, body = await rig.call("POST", "/v1/plan/reload", "/v1/plan/reload", {"actor": "ops"})
        assert (status, body["outcome"], body["previous"], body["moved"]) == (200, "applied", v1, 1)
        assert any(c["effect"] == "retired" for c in body["changes"])
        view = await rig.plan_view()
        assert view["version"] == body["version"] != v1
        assert (view["history"][0]["actor"], view["history"][0]["moved"]) == ("reload:ops", 1)
        assert "billing_problem: canceled" in view["document"]
        assert (await rig.subject("ann"))["status"] == "canceled"
        async with rig.session.get(rig.gate.url + "/metrics") as resp:
            metrics = await resp.text()
        assert f'plangate_plan_info{{version="{body["version"]}"}} 1.0' in metrics
        assert 'plangate_plan_reloads_total{result="refused"} 2.0' in metrics

        status, body = await rig.call("POST", "/v1/plan/reload", "/v1/plan/reload")
        assert (status, body["outcome"]) == (200, "unchanged")


class TestReloadRace:
    """A transition into billing_problem while a reload removes that status (with a mapping to canceled, or
    without). The interleaving is made with the database's own locks: another connection holds what the first of
    the two must write, while the second starts. Decided under the old plan and committed after the reload had
    checked the store, the transition left the subject in a status the new plan does not know (every answer about
    it a 503), or under an old name the reload had moved everyone else from. Now the transition either ends before
    the reload checks the store (which then refuses, or moves it), or is decided under the new plan (422)."""

    @pytest.mark.parametrize("retired", [False, True], ids=["removed", "retired"])
    @pytest.mark.parametrize("first", ["transition", "reload"])
    async def test_a_transition_into_a_status_a_reload_removes(self, rig, store_url, first, retired):
        await rig.start(V1)
        await rig.webhook("checkout.session.completed", se.checkout("ann", "cus_ann", "sub_ann"))
        v1 = (await rig.plan_view())["version"]
        rig.write(edited(*WITHOUT_BILLING_PROBLEM) + (RETIRE_BILLING_PROBLEM if retired else ""))

        def transition():
            return rig.call("POST", "/v1/subjects/ann/transition", "/v1/subjects/{subject}/transition",
                            {"to": "billing_problem", "reason": "test"})

        def reload():
            return rig.call("POST", "/v1/plan/reload", "/v1/plan/reload")

        held = _ANN_ROW if first == "transition" else _DEPLOYS
        async with writes_held(store_url, held) as queued:
            one = asyncio.ensure_future(transition() if first == "transition" else reload())
            await queued()          # the first has decided and waits to write
            two = asyncio.ensure_future(reload() if first == "transition" else transition())
            await asyncio.sleep(0.3)
        (moved, moved_body), (reloaded, reload_body) = \
            (await one, await two) if first == "transition" else (await two, await one)

        if first == "transition":       # it ends first; the reload checks the store after it
            assert (moved, moved_body["to"]) == (200, "billing_problem"), moved_body
            if retired:
                assert (reloaded, reload_body["outcome"], reload_body["moved"]) == (200, "applied", 1), reload_body
            else:
                assert (reloaded, reload_body["error"]) == (409, "plan_strands_subjects"), reload_body
        else:                           # it is decided under the new plan, which has no billing_problem
            assert (reloaded, reload_body["outcome"]) == (200, "applied"), reload_body
            assert (moved, moved_body["error"]) == (422, "unknown_status"), moved_body
        expected = {("transition", False): "billing_problem", ("transition", True): "canceled"}.get((first, retired),
                                                                                                   "trial")
        assert await _rows(store_url, "SELECT status FROM subscriptions WHERE subject = 'ann'") == [(expected,)]
        assert (await rig.subject("ann"))["status"] == expected
        assert (await rig.check("ann"))["reason"] not in ("fail_open", "fail_closed")
        assert ((await rig.plan_view())["version"] == v1) is (first == "transition" and not retired)


    async def test_a_stripe_event_into_a_status_a_reload_removes(self, rig, store_url):
        """The same race with a Stripe event: its fold decided grace under the old plan, the reload removes grace."""
        await rig.start(V1)
        await rig.subscribe("ann")
        n = abs(hash("ann")) % 10**8
        rig.write(edited(*WITHOUT_GRACE))
        failed = se.invoice("open", sub_id=f"sub_{n}", customer=f"cus_{n}", inv_id="in_ann_failed")
        async with writes_held(store_url, _ANN_ROW) as queued:
            folding = asyncio.ensure_future(rig.webhook("invoice.payment_failed", failed))
            await queued()
            reloading = asyncio.ensure_future(rig.call("POST", "/v1/plan/reload", "/v1/plan/reload"))
            await asyncio.sleep(0.3)
        assert ((await folding)["outcome"], (await folding)["status"]) == ("applied", "grace")
        reloaded, body = await reloading
        assert (reloaded, body["error"]) == (409, "plan_strands_subjects"), body
        assert (await rig.subject("ann"))["status"] == "grace"




async def test_answers_during_a_reload_name_the_plans_status(tmp_path, pg_dsn):
    """Between the swap and the moving of stored subjects (held here by a lock on the subject's row), a check was
    decided by the renamed status's rule and answered the stored name beside it, one the running plan has not."""
    rig = Rig(tmp_path, pg_dsn)
    try:
        await rig.start(V1)
        await rig.webhook("checkout.session.completed", se.checkout("ann", "cus_ann", "sub_ann"))
        v1 = (await rig.plan_view())["version"]
        rig.write(renamed("trial", "paid_trial"))
        async with writes_held(pg_dsn, _ANN_ROW):
            reloading = asyncio.ensure_future(rig.call("POST", "/v1/plan/reload", "/v1/plan/reload"))
            for _ in range(500):
                if (await rig.plan_view())["version"] != v1:
                    break
                await asyncio.sleep(0.01)
            assert await _rows(pg_dsn, "SELECT status FROM subscriptions WHERE subject = 'ann'") == [("trial",)]
            checked = await rig.check("ann")
            assert (checked["status"], checked["limit"]) == ("paid_trial", 500)
        assert (await reloading)[1]["moved"] == 1
        assert (await rig.check("ann"))["status"] == "paid_trial"
    finally:
        await rig.stop()


async def test_a_subject_a_node_wrote_under_a_renamed_status_before_it_followed_is_moved(tmp_path, pg_dsn):
    """Two nodes: a deploys a plan renaming trial, while b is deciding a move of bob into trial under the plan it
    still runs (its write held here by a lock on bob's row). a moved every stored subject it found; b switched
    when it heard of the deploy, without waiting for its own decisions, and bob was committed under the old name
    after everyone else had moved (left there until written again; the next deploy dropping the old name refused
    as stranding him). b now switches once its decisions under the old plan have committed, and moves what they
    left under old names."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Rig(tmp_path / "a", pg_dsn), Rig(tmp_path / "b", pg_dsn)
    try:
        await a.start(V1)
        await b.start(V1)
        await a.move("bob", "paid")
        v1 = (await b.plan_view())["version"]
        a.write(renamed("trial", "paid_trial"))
        async with writes_held(pg_dsn, _BOB_ROW) as queued:
            moving = asyncio.ensure_future(b.move("bob", "trial"))
            await queued()                          # decided under V1 on b, waiting to write
            status, deployed = await a.call("POST", "/v1/plan/reload", "/v1/plan/reload")
            assert (status, deployed["outcome"], deployed["moved"]) == (200, "applied", 0), deployed
            await asyncio.sleep(0.5)                # b hears of the deploy meanwhile
        await moving

        async def b_switched():
            return (await b.plan_view())["version"] == deployed["version"] != v1
        assert await postgres.await_until(b_switched)

        async def moved():
            return await _rows(pg_dsn, "SELECT status FROM subscriptions WHERE subject = 'bob'") == [("paid_trial",)]
        assert await postgres.await_until(moved, timeout=5), \
            await _rows(pg_dsn, "SELECT status FROM subscriptions WHERE subject = 'bob'")
        assert [t["to"] for t in plan_changes(await a.subject("bob"))] == ["paid_trial"]
    finally:
        await a.stop()
        await b.stop()


_BOB_ROW = "SELECT 1 FROM subscriptions WHERE subject = 'bob' FOR UPDATE"


# grace removed: a failed payment leads to billing_problem at once
WITHOUT_GRACE = (
    ("  grace:\n    grace: true\n    expires_after: 3d\n    quotas:\n      requests: tier\n", ""),
    ("    on: stripe:invoice.payment_failed\n    to: grace", "    on: stripe:invoice.payment_failed\n    to: billing_problem"),
    ("  - from: grace\n    on: timer\n    to: billing_problem\n", ""),
    ("[grace, billing_problem]", "[billing_problem]"),
    ("[trial, paid, grace, billing_problem]", "[trial, paid, billing_problem]"),
)
_ANN_ROW = "SELECT 1 FROM subscriptions WHERE subject = 'ann' FOR UPDATE"
_DEPLOYS = "LOCK TABLE plan_deploys IN SHARE ROW EXCLUSIVE MODE"




async def _rows(store_url: str, sql: str) -> list[tuple]:
    if store_url.startswith("postgresql://"):
        conn = await asyncpg.connect(store_url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()
    with sqlite3.connect(store_url) as db:
        return db.execute(sql).fetchall()


class TestSweepIsolation:
    async def test_one_subject_the_plan_cannot_decide_stops_no_other(self, rig, store_url):
        gate = await rig.start(V1)
        for name in ("ann", "bob", "cat"):
            await rig.webhook("checkout.session.completed", se.checkout(name, f"cus_{name}", f"sub_{name}"),
                              time.time() - 8 * DAY)
        # Another node's plan wrote a status this one has never heard of (a deploy in progress).
        await _sql(store_url, "UPDATE subscriptions SET status = 'limbo' WHERE subject = 'bob'")
        status, body = await gate.post("/v1/jobs/sweep", {})
        assert (status, body["result"]) == (200, 2)
        assert (await rig.subject("ann"))["status"] == "billing_problem"
        assert (await rig.subject("cat"))["status"] == "billing_problem"
        # never a 500 for it: the fail mode answers, its view is a 503
        decision = await rig.check("bob")
        assert decision["reason"] in ("fail_open", "fail_closed")
        status, _ = await gate.get("/v1/subjects/bob")
        assert status == 503
        async with rig.session.get(rig.gate.url + "/metrics") as resp:
            metrics = await resp.text()
        assert 'plangate_sweep_subject_failures_total{stage="decide"} 1.0' in metrics
        assert "plangate_unknown_state_total" in metrics
        await _sql(store_url, "UPDATE subscriptions SET status = 'trial' WHERE subject = 'bob'")
        status, body = await gate.post("/v1/jobs/sweep", {})
        assert body["result"] == 1                                        # retried at the next sweep
        assert (await rig.subject("bob"))["status"] == "billing_problem"


async def _sql(store_url: str, sql: str) -> None:
    if store_url.startswith("postgresql://"):
        import asyncpg
        conn = await asyncpg.connect(store_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        return
    import sqlite3
    with sqlite3.connect(store_url) as db:
        db.execute(sql)
