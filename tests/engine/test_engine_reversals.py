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
        second = settle("g", 1000, 0, 1000, facts, {"re_1": (300, 100)})
        assert [(t.fact.id, t.units, t.taken) for t in second] == [("re_2", 200, 0)]

    def test_facts_recorded_already_take_nothing_again(self):
        facts = [fact("re_1", ReversalKind.REFUND, 300)]
        assert settle("g", 1000, 700, 1000, facts, {"re_1": (300, 300)}) == []

    def test_an_older_fact_arriving_late_adds_only_what_it_tells_beyond(self):
        charge = fact("evt_c", ReversalKind.CHARGE_REFUNDED, 500, 2.0)
        late = fact("re_1", ReversalKind.REFUND, 300, 1.0)
        assert [t.units for t in settle("g", 1000, 500, 1000, [charge, late], {"evt_c": (500, 500)})] == [0]

    def test_an_undone_refund_gives_back_what_was_taken_beyond_what_is_owed_now(self):
        """1000 credits for 1000: refunds of 300 (pending, later failed) and 200 (succeeded); 700 spent before
        them, so the 500 owed took the 300 that were left."""
        pending, kept = fact("re_1", ReversalKind.REFUND, 300, 1.0), fact("re_2", ReversalKind.REFUND, 200, 2.0)
        took = settle("g", 1000, 300, 1000, [pending, kept], {})
        assert [(t.units, t.taken) for t in took] == [(300, 300), (200, 0)]
        undone = fact("re_1/undone", ReversalKind.REFUND_UNDONE, 300, 3.0)
        recorded = {t.fact.id: (t.units, t.taken) for t in took}
        back = settle("g", 1000, 0, 1000, [pending, kept, undone], recorded)
        assert [(t.fact.id, t.units, t.taken) for t in back] == [("re_1/undone", -300, -100)]    # 200 still owed
        nothing_spent = settle("g", 1000, 500, 1000, [pending, kept, undone], {"re_1": (300, 300), "re_2": (200, 200)})
        assert [(t.units, t.taken) for t in nothing_spent] == [(-300, -300)]


class TestUndone:
    def test_an_undone_refund_stops_counting_and_so_does_what_a_charge_said_of_it_before(self):
        pending = fact("re_1", ReversalKind.REFUND, 300, 1.0)
        before = fact("evt_c1", ReversalKind.CHARGE_REFUNDED, 300, 2.0)
        undone = fact("re_1/undone", ReversalKind.REFUND_UNDONE, 300, 3.0)
        assert returned([pending, before], 1000) == 300
        assert returned([pending, before, undone], 1000) == 0
        later = fact("re_2", ReversalKind.REFUND, 100, 4.0)
        after = fact("evt_c2", ReversalKind.CHARGE_REFUNDED, 100, 4.0)     # the charge no longer counts re_1
        assert returned([pending, before, undone, later, after], 1000) == 100
        same_second = fact("evt_c3", ReversalKind.CHARGE_REFUNDED, 300, 3.0)     # told with the failure's second
        assert returned([pending, same_second, undone], 1000) == 0
        assert returned([pending, same_second, undone, later], 1000) == 100       # the refund's own event counts

    def test_a_charge_said_before_a_refund_was_made_is_not_lowered_by_that_refunds_failure(self):
        """R1 (30) succeeded, the charge said 30; then R2 (50) went pending and failed: the charge's 30 never
        counted R2, so it stands (it read -20 before), also when R1's own event was never recorded."""
        charge = fact("evt_c", ReversalKind.CHARGE_REFUNDED, 30, 1.0)
        later = fact("re_2", ReversalKind.REFUND, 50, 2.0)
        failed = fact("re_2/undone", ReversalKind.REFUND_UNDONE, 50, 3.0)
        assert returned([charge, later, failed], 1000) == 30

    def test_a_refund_that_failed_at_once_undoes_nothing(self):
        """Never on its way, it was never counted: its failure must not take another refund's money off."""
        kept = fact("re_1", ReversalKind.REFUND, 300, 1.0)
        charge = fact("evt_c", ReversalKind.CHARGE_REFUNDED, 300, 1.0)
        failed = fact("re_2/undone", ReversalKind.REFUND_UNDONE, 200, 2.0)
        assert returned([kept, charge, failed], 1000) == 300


class TestEvents:
    def test_what_each_event_says_came_back(self):
        refund = {"id": "re_1", "object": "refund", "amount": 250, "charge": "ch_1", "payment_intent": "pi_1",
                  "status": "succeeded"}
        assert money_back("refund.created", "evt_1", refund, 5.0) == \
            MoneyBack("re_1", ReversalKind.REFUND, "pi_1", "ch_1", 250, 5.0, "evt_1")
        assert money_back("refund.updated", "evt_2", {**refund, "status": "failed"}, 5.0) == \
            MoneyBack("re_1/undone", ReversalKind.REFUND_UNDONE, "pi_1", "ch_1", 250, 5.0, "evt_2")
        assert money_back("refund.failed", "evt_2", {**refund, "status": "failed"}, 5.0).id == "re_1/undone"
        assert money_back("refund.updated", "evt_2", {**refund, "status": "requires_action"}, 5.0) is None
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

    def test_an_undone_refund_gives_back_in_a_story_too(self):
        book = UsageBook(compile_file(REPO / "examples" / "ai-api" / "plans.yaml"))
        pack = Grant("cs_1:0", "tokens", 1_000_000, 1_000_000, 10, 2.0, None, GrantSource.PURCHASE, "1 x pack",
                     "pi_1", 1000)
        book.add_grants("s", [pack])
        assert book.take_back("s", fact("re_1", ReversalKind.REFUND, 250)) == 250_000
        assert book.take_back("s", fact("re_1/undone", ReversalKind.REFUND_UNDONE, 250, 2.0)) == -250_000
        assert book.take_back("s", fact("re_1/undone", ReversalKind.REFUND_UNDONE, 250, 2.0)) == 0     # told again
        assert book.grants["s"][0].remaining == 1_000_000
