"""What money back takes of a pack's credits (engine._reversals): the share, rounded against the customer and
never past the grant; one refund told by two events counted once; spent credits never below zero."""
from __future__ import annotations

import pytest

from plangate.engine import UsageBook, compile_file
from plangate.engine._credits import Grant, GrantSource
from plangate.engine._reversals import MoneyBack, ReversalKind, money_back, owed, returned, settle

from .conftest import REPO


def fact(ident: str, kind: ReversalKind, amount: int, created: float = 1.0, paid: int | None = None) -> MoneyBack:
    return MoneyBack(ident, kind, "pi_1", "ch_1", amount, created, f"evt_{ident}", paid)


class TestShare:
    @pytest.mark.parametrize("granted, back, paid, units", [
        (2_000_000, 1, 3000, 667), (2_000_000, 3000, 3000, 2_000_000), (2_000_000, 0, 3000, 0),
        (7, 1, 1000, 1), (1_000_000, 500, 1000, 500_000), (10, 5, None, 10), (10**15, 999, 1000, 999 * 10**12)])
    def test_owed_is_the_share_rounded_up_at_most_the_grant(self, granted, back, paid, units):
        assert owed(granted, back, paid) == units

    def test_a_charge_and_its_refunds_tell_the_same_money_and_disputes_add(self):
        facts = [fact("re_1", ReversalKind.REFUND, 300), fact("evt_c", ReversalKind.CHARGE_REFUNDED, 300),
                 fact("re_2", ReversalKind.REFUND, 200)]
        assert returned(facts, 1000) == 500
        assert returned([*facts, fact("evt_d", ReversalKind.CHARGE_REFUNDED, 700)], 1000) == 700
        assert returned([*facts, fact("dp_1", ReversalKind.DISPUTE_LOST, 900)], 1000) == 1000


class TestSettle:
    def test_what_is_spent_stays_spent_and_later_facts_take_what_the_share_grew_by(self):
        first = settle("g", 1000, 100, 1000, [fact("re_1", ReversalKind.REFUND, 300)], {})
        assert [(t.units, t.taken) for t in first] == [(300, 100)]
        facts = [fact("re_1", ReversalKind.REFUND, 300), fact("re_2", ReversalKind.REFUND, 200, 2.0)]
        second = settle("g", 1000, 0, 1000, facts, {"re_1": 300})
        assert [(t.fact.id, t.units, t.taken) for t in second] == [("re_2", 200, 0)]

    def test_facts_recorded_already_take_nothing_again(self):
        facts = [fact("re_1", ReversalKind.REFUND, 300)]
        assert settle("g", 1000, 700, 1000, facts, {"re_1": 300}) == []

    def test_an_older_fact_arriving_late_adds_only_what_it_tells_beyond(self):
        charge = fact("evt_c", ReversalKind.CHARGE_REFUNDED, 500, 2.0)
        late = fact("re_1", ReversalKind.REFUND, 300, 1.0)
        assert [t.units for t in settle("g", 1000, 500, 1000, [charge, late], {"evt_c": 500})] == [0]


class TestEvents:
    def test_what_each_event_says_came_back(self):
        refund = {"id": "re_1", "object": "refund", "amount": 250, "charge": "ch_1", "payment_intent": "pi_1",
                  "status": "succeeded"}
        assert money_back("refund.created", "evt_1", refund, 5.0) == \
            MoneyBack("re_1", ReversalKind.REFUND, "pi_1", "ch_1", 250, 5.0, "evt_1")
        assert money_back("refund.updated", "evt_2", {**refund, "status": "failed"}, 5.0) is None
        assert money_back("refund.created", "evt_3", {**refund, "payment_intent": None}, 5.0) is None
        charge = {"id": "ch_1", "object": "charge", "amount": 1000, "amount_refunded": 400, "payment_intent": "pi_1"}
        assert money_back("charge.refunded", "evt_4", charge, 6.0) == \
            MoneyBack("evt_4", ReversalKind.CHARGE_REFUNDED, "pi_1", "ch_1", 400, 6.0, "evt_4", 1000)
        dispute = {"id": "dp_1", "object": "dispute", "amount": 1000, "charge": "ch_1", "payment_intent": "pi_1"}
        assert money_back("charge.dispute.closed", "evt_5", {**dispute, "status": "won"}, 7.0) is None
        assert money_back("charge.dispute.closed", "evt_6", {**dispute, "status": "lost"}, 7.0).amount == 1000
        assert money_back("charge.dispute.created", "evt_7", {**dispute, "status": "lost"}, 7.0) is None


class TestStories:
    """The usage book of `plangate test` settles money back as the store does (its stories took nothing back)."""

    def test_money_back_before_the_purchase_takes_from_the_grant_as_it_is_made_and_once(self):
        book = UsageBook(compile_file(REPO / "examples" / "ai-api" / "plans.yaml"))
        refund = fact("re_1", ReversalKind.REFUND, 250)
        assert book.take_back("s", refund) == 0                     # no grant of that payment yet
        pack = Grant("cs_1:0", "tokens", 1_000_000, 1_000_000, 10, 2.0, None, GrantSource.PURCHASE, "1 x pack",
                     "pi_1", 1000)
        book.add_grants("s", [pack])
        assert book.take_back("s", None, (pack,)) == 250_000
        assert book.take_back("s", refund) == 0                     # the same refund told again
        assert book.take_back("s", fact("dp_1", ReversalKind.DISPUTE_LOST, 750)) == 750_000
        assert book.grants["s"][0].remaining == 0
