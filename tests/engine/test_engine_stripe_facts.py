"""What a subscription object tells the engine (tier, billing period), in Stripe's old and new shapes."""
from __future__ import annotations

import pytest

from plangate import engine
from plangate.engine import billing_period, invoice_subscription, price_ids

from .helpers import at

NOW = at("2026-01-05 09:00")
START, END = 1_767_603_600, 1_770_282_000


def old_shape(**extra) -> dict:
    """Before API 2025-03-31: the period on the subscription, items naming a price (or a legacy plan)."""
    return {"object": "subscription", "status": "active", "current_period_start": START,
            "current_period_end": END, "items": {"data": [{"price": {"id": "price_pro_monthly"}}]}, **extra}


def new_shape(price="price_pro_yearly") -> dict:
    """Since API 2025-03-31: the period on each item."""
    return {"object": "subscription", "status": "active",
            "items": {"object": "list", "data": [{"price": {"id": price}, "current_period_start": START,
                                                  "current_period_end": END}]}}


@pytest.fixture
def free(shipped):
    return shipped.initial_state("alice", NOW)


class TestSubscriptionFacts:
    @pytest.mark.parametrize("sub", [old_shape(), new_shape()], ids=["old shape", "new shape"])
    def test_tier_and_period_in_either_shape(self, shipped, free, sub):
        facts = shipped.subscription_facts(free, sub)
        assert (facts.tier, facts.period_start, facts.period_end) == ("pro", START, END)
        assert facts.status == free.status

    def test_a_legacy_plan_names_the_price(self, shipped, free):
        sub = {"object": "subscription", "plan": {"id": "price_pro_monthly"}}
        assert shipped.subscription_facts(free, sub).tier == "pro"
        sub = {"object": "subscription", "items": {"data": [{"plan": {"id": "price_pro_yearly"}}]}}
        assert shipped.subscription_facts(free, sub).tier == "pro"

    def test_an_unknown_price_gets_the_default_tier(self, shipped, free):
        assert shipped.subscription_facts(free, new_shape("price_from_2019")).tier == "pro"
        assert shipped.tier_for_price("price_from_2019") == "pro"

    def test_the_price_selects_among_several_tiers(self, windows_plan):
        table = windows_plan()
        state = table.initial_state("s", NOW)
        assert table.subscription_facts(state, new_shape("price_big")).tier == "big"
        assert table.subscription_facts(state, new_shape("price_basic")).tier == "basic"
        assert table.subscription_facts(state, new_shape("price_other")).tier == "basic"

    def test_without_prices_the_tier_stays(self, shipped, free):
        sub = {"object": "subscription", "status": "active"}
        assert shipped.subscription_facts(free.with_(tier="pro"), sub).tier == "pro"

    @pytest.mark.parametrize("start, end", [(END, START), (START, START), ("1", END), (True, END), (None, END)])
    def test_an_unusable_period_keeps_the_known_one(self, shipped, free, start, end):
        known = free.with_(period_start=1.0, period_end=2.0)
        sub = {"object": "subscription", "current_period_start": start, "current_period_end": end}
        facts = shipped.subscription_facts(known, sub)
        assert (facts.period_start, facts.period_end) == (1.0, 2.0)

    def test_nothing_new_returns_the_same_state(self, shipped, free):
        known = shipped.subscription_facts(free, old_shape())
        assert shipped.subscription_facts(known, old_shape()) is known


class TestReaders:
    def test_price_ids_accepts_ids_and_expanded_prices(self):
        sub = {"items": {"data": [{"price": "price_a"}, {"price": {"id": "price_b"}}, {"plan": {"id": "plan_c"}},
                                  "junk", {"price": 3}]}}
        assert price_ids(sub) == ["price_a", "price_b", "plan_c"]

    @pytest.mark.parametrize("items", [None, "x", {"data": "x"}, {"data": None}, {}])
    def test_price_ids_of_malformed_items(self, items):
        assert price_ids({"items": items}) == []

    def test_billing_period_prefers_the_subscriptions_own(self):
        sub = {**new_shape(), "current_period_start": 10, "current_period_end": 20}
        assert billing_period(sub) == (10.0, 20.0)
        assert billing_period(new_shape()) == (float(START), float(END))
        assert billing_period({"status": "active"}) is None

    @pytest.mark.parametrize("invoice, sub", [
        ({"subscription": "sub_1"}, "sub_1"),
        ({"subscription": {"id": "sub_2", "object": "subscription"}}, "sub_2"),
        ({"parent": {"subscription_details": {"subscription": "sub_3"}}}, "sub_3"),
        ({"parent": {"subscription_details": None}}, None),
        ({}, None),
    ])
    def test_invoice_subscription_in_either_shape(self, invoice, sub):
        assert invoice_subscription(invoice) == sub

    def test_stripe_subscription_events_update_facts_through_apply(self, shipped, free):
        out = shipped.apply(free, engine.StripeEvent("customer.subscription.created", new_shape()), NOW)
        assert out.moved and (out.state.status, out.state.tier, out.state.period_end) == ("paid", "pro", END)
