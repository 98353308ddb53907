"""A tier's credits each window through a running gate, on both stores: a change of tier carries nothing of the
old tier's windows over (driven by customer.subscription.updated as Stripe sends it), a plan reload leaves kept
subscribers the credits of the version they are kept on, and GET /v1/subjects lists the grants as they stand
now."""
from __future__ import annotations

import pytest

from plangate.server.http.api import GATE, iso

from . import stripe_events as se
from .stripe_meters import KEY
from .test_entitlements import AI, NOW, consume, database, deliver, start, subscription, view  # noqa: F401

DAY = 86400
LOTS = {"PLANGATE_MAX_AMOUNT": str(10**9)}
SCALE_REQUESTS = "      requests: {limit: 600, per: minute}\n"
STARTER_CREDITS = "      tokens: {amount: 200000, per: billing_period, rollover: 100000}\n"


@pytest.fixture
def two_tiers(tmp_path):
    """The ai-api example with credits of Scale's too: 1000000 a billing period, up to 500000 carried over
    (Starter's: 200000, up to 100000)."""
    text = AI.read_text(encoding="utf-8")
    assert text.count(SCALE_REQUESTS) == 1
    path = tmp_path / "two-tiers.yaml"
    path.write_text(text.replace(SCALE_REQUESTS, SCALE_REQUESTS + "    credits:\n      tokens: "
                                 "{amount: 1000000, per: billing_period, rollover: 500000}\n"), encoding="utf-8")
    return path


def priced(subject: str, price: str, start: float, end: float, created: float) -> dict:
    """The subject's subscription to a price in the period [start, end), as Stripe's objects show it."""
    sub = subscription(subject, "account", price, sub_id=f"sub_{subject}", customer=f"cus_{subject}")
    sub["created"] = int(created)
    sub["items"]["data"][0].update(current_period_start=int(start), current_period_end=int(end),
                                   subscription=sub["id"], created=int(created))
    sub["items"]["data"][0]["price"].update(product="prod_api", type="recurring", active=True, currency="usd",
                                            recurring={"interval": "month", "interval_count": 1})
    return sub


def updated(sub: dict, before: dict, created: float) -> dict:
    """customer.subscription.updated with what changed in previous_attributes (its items as they were)."""
    evt = se.event("customer.subscription.updated", sub, created)
    evt["data"]["previous_attributes"] = {"items": before["items"]}
    return evt


async def told(gate, subject: str, price: str, start: float, at: float, created: float,
               before: dict | None = None) -> tuple[dict, dict]:
    """The subject's subscription on `price` for the 30 days from `start`, as Stripe tells it at `at` (created, or
    updated from `before`), the gate's clock a minute after: (the subscription, the gate's answer)."""
    gate.app[GATE].clock = lambda: at + 60
    sub = priced(subject, price, start, start + 30 * DAY, created)
    evt = se.event("customer.subscription.created", sub, at) if before is None else updated(sub, before, at)
    return sub, await deliver(gate, evt)


class TestAChangeOfTier:
    async def test_a_downgrade_mid_period_carries_nothing_of_the_old_tier_into_the_next(self, start, two_tiers):
        """Scale, its period's 1000000 granted (unspent); ten days in, the customer moves to Starter (same period,
        prorated). The period's grant stands to its end; the next period holds Starter's 200000 and nothing
        carried (it carried 100000 of Scale's)."""
        t0 = int(NOW - 40 * DAY)
        gate = await start(two_tiers, **LOTS)
        scale, _ = await told(gate, "d1", "price_scale_yearly", t0, t0 + 10, t0)
        assert (await consume(gate, "d1", "tokens", 1, key="scale"))["allowed"] is True
        middle = t0 + 10 * DAY
        down, answer = await told(gate, "d1", "price_starter_monthly", t0, middle, t0, scale)
        assert answer["outcome"] in ("applied", "noop"), answer
        seen = await view(gate, "d1")
        assert (seen["tier"], seen["tier_since"]) == ("starter", iso(middle))
        assert seen["credits"][0]["balance"] == 1_000_000

        renewal = t0 + 30 * DAY
        await told(gate, "d1", "price_starter_monthly", renewal, renewal + 5, t0, down)
        seen = await view(gate, "d1")
        assert seen["tier_since"] == iso(middle)           # a renewal is no change of tier
        (credits,) = seen["credits"]
        assert credits["balance"] == 200_000
        grants = [(g["id"], g["amount"], g["remaining"], g["expires_at"]) for g in credits["grants"]]
        assert grants == [(f"period:tokens:{int(renewal)}", 200_000, 200_000, iso(renewal + 30 * DAY)),
                          (f"period:tokens:{int(t0)}", 1_000_000, 1_000_000, iso(renewal))]
        await consume(gate, "d1", "tokens", 2_000_000, key="allowance")
        past = await consume(gate, "d1", "tokens", 200_001, key="past")
        assert (past["allowed"], past["credits"]) == (False, 200_000), past
        assert (await consume(gate, "d1", "tokens", 200_000, key="credits"))["credits_used"] == 200_000


    async def test_an_upgrade_before_the_first_use_carries_the_new_tiers_own_grant(self, start, two_tiers):
        """Starter from t0, no token used; ten days in, Scale (same period). The window's grant is made at the first
        use, by Scale: Scale carries 500000 of it into its next window, as it carries its own."""
        t0 = int(NOW - 40 * DAY)
        gate = await start(two_tiers, **LOTS)
        starter, _ = await told(gate, "u1", "price_starter_monthly", t0, t0 + 10, t0)
        up, answer = await told(gate, "u1", "price_scale_yearly", t0, t0 + 10 * DAY, t0, starter)
        assert answer["outcome"] in ("applied", "noop"), answer
        assert (await consume(gate, "u1", "tokens", 1, key="first"))["allowed"] is True     # the grant stored
        renewal = t0 + 30 * DAY
        await told(gate, "u1", "price_scale_yearly", renewal, renewal + 5, t0, up)
        (credits,) = (await view(gate, "u1"))["credits"]
        assert credits["balance"] == 1_500_000, credits
        assert (await consume(gate, "u1", "tokens", 1, key="renewed"))["allowed"] is True   # stored as viewed
        grants = {g["id"]: g["remaining"] for g in (await view(gate, "u1"))["credits"][0]["grants"]}
        assert grants[f"rollover:tokens:{int(renewal)}"] == 500_000


class TestTheWindowsEdge:
    async def test_a_request_of_a_windows_last_moments_spends_nothing_the_next_window_holds(self, start):
        """A consume decided a moment before the period's end, after one of the next period had made that period's
        grants: the old window's request spent the new grant (created at the new period's start), or the old grant's
        remainder that had been carried into the new period, so the subject spent more than its windows held (found
        by a review, with 50 consumes across the boundary)."""
        t0 = int(NOW - 40 * DAY)
        gate = await start(AI, **LOTS)
        await told(gate, "e1", "price_starter_monthly", t0, t0 + 10, t0)       # the period [t0, t0 + 30 days)
        end = t0 + 30 * DAY
        gate.app[GATE].clock = lambda: end - 60
        spent = await consume(gate, "e1", "tokens", 2_000_000 + 199_000, key="most")   # 1000 of the grant left
        assert (spent["allowed"], spent["credits_used"]) == (True, 199_000), spent
        gate.app[GATE].clock = lambda: end + 10
        assert (await consume(gate, "e1", "tokens", 1, key="next"))["allowed"]    # the next period's grants stored
        gate.app[GATE].clock = lambda: end - 1       # a request of the old period, decided now
        late = await consume(gate, "e1", "tokens", 5000, key="late")
        assert (late["allowed"], late["counted"], late["credits_used"]) == (False, False, 0), late
        # Nor the old window's last 1000: carried into the new one when its grants were made.
        again = await consume(gate, "e1", "tokens", 1000, key="again")
        assert (again["allowed"], again["counted"], again["credits_used"]) == (False, False, 0), again
        (credits,) = (await view(gate, "e1"))["credits"]       # as that request saw them: no grant it may spend
        assert credits["balance"] == 0 and not any(g["spendable"] for g in credits["grants"]), credits
        gate.app[GATE].clock = lambda: end + 20
        (credits,) = (await view(gate, "e1"))["credits"]
        grants = {(g["source"], g["created"]): (g["amount"], g["remaining"]) for g in credits["grants"]}
        assert grants[("period", iso(end))] == (200_000, 200_000)      # the new period's grant, whole
        assert grants[("rollover", iso(end))] == (1000, 1000)           # what the old one left, carried once
        assert grants[("period", iso(t0))] == (200_000, 1000)
        assert credits["balance"] == 201_000


class TestAReloadOfTheTiersCredits:
    @pytest.mark.parametrize("policy, kept, renewed", [
        ("now", 500_000, 600_000), ("at_renewal", 200_000, 600_000), ("never", 200_000, 300_000)])
    async def test_a_raised_amount_reaches_kept_subscribers_as_the_tier_says(self, start, tmp_path, policy, kept,
                                                                           renewed):
        """Starter's credits raised from 200000 to 500000 a period by a reload, the tier's existing subscribers
        `now`, `at_renewal` or `never`: a subscriber of before gets the kept version's 200000 for its period (and
        its renewal's, `never`), a new subscriber 500000; each carries up to 100000 into the next."""
        plans = tmp_path / "plans.yaml"
        plans.write_text(AI.read_text(encoding="utf-8"), encoding="utf-8")
        gate = await start(plans, STRIPE_SECRET_KEY=KEY, **LOTS)
        core = gate.app[GATE]
        t0 = int(NOW - 10 * DAY)
        await deliver(gate, se.event("customer.subscription.created",
                                     priced("k1", "price_starter_monthly", t0, t0 + 30 * DAY, t0), t0 + 10))
        text = AI.read_text(encoding="utf-8")
        assert text.count(STARTER_CREDITS) == 1
        plans.write_text(text.replace(STARTER_CREDITS, STARTER_CREDITS.replace("200000", "500000")
                                      + f"    existing_subscribers: {policy}\n"), encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert (status, answer["outcome"]) == (200, "applied"), answer

        seen = await view(gate, "k1")
        assert seen["plan_kept"] == (None if policy == "now" else policy)
        assert (seen["credits"][0]["balance"], seen["credits"][0]["grants"][0]["amount"]) == (kept, kept)
        assert (await consume(gate, "k1", "tokens", 1, key="k1-first"))["allowed"] is True     # the grant stored
        assert (await view(gate, "k1"))["credits"][0]["balance"] == kept
        await deliver(gate, se.event("customer.subscription.created",
                                     priced("k2", "price_starter_monthly", t0, t0 + 30 * DAY, t0), NOW))
        assert (await view(gate, "k2"))["credits"][0]["balance"] == 500_000      # a new subscriber

        renewal = t0 + 30 * DAY
        core.clock = lambda: renewal + 60
        before = priced("k1", "price_starter_monthly", t0, renewal, t0)
        await deliver(gate, updated(priced("k1", "price_starter_monthly", renewal, renewal + 30 * DAY, t0), before,
                                    renewal + 5))
        assert (await view(gate, "k1"))["credits"][0]["balance"] == renewed
