"""Counting: check-and-count (`consume`), counting work that already ran (`increment_usage`), and the
in-memory usage book keyed by window start."""
from __future__ import annotations

import pytest

from plangate.engine import Reason, UsageBook

from .helpers import at

NOW = at("2026-01-05 09:00")


@pytest.fixture
def free(shipped):
    return shipped.initial_state("alice", NOW)


class TestConsume:
    def test_counts_when_allowed(self, shipped, free):
        decision, after = shipped.consume(free, "requests", 5, 10, NOW)
        assert after == 15
        assert (decision.allowed, decision.used, decision.remaining) == (True, 15, 5)

    def test_refuses_rather_than_overshoots(self, shipped, free):
        decision, after = shipped.consume(free, "requests", 6, 15, NOW)
        assert after == 15
        assert (decision.allowed, decision.reason, decision.used, decision.remaining) == (
            False, Reason.QUOTA_EXHAUSTED, 15, 5)

    def test_the_last_units_fit_exactly(self, shipped, free):
        decision, after = shipped.consume(free, "requests", 5, 15, NOW)
        assert after == 20 and decision.remaining == 0

    def test_a_denying_status_counts_nothing(self, shipped, free):
        decision, after = shipped.consume(free.with_(status="canceled"), "requests", 1, 0, NOW)
        assert (decision.allowed, after) == (False, 0)

    def test_unlimited_counts_and_keeps_no_remaining(self, windows_plan):
        table = windows_plan()
        paid = table.initial_state("s", NOW).with_(status="paid", tier="big")
        decision, after = table.consume(paid, "periodic", 7, 100, NOW)
        assert (decision.allowed, after, decision.used, decision.remaining) == (True, 107, 107, None)

    @pytest.mark.parametrize("amount", [0, -3, 2.5, False])
    def test_rejects_amounts_that_are_not_whole_positive_numbers(self, shipped, free, amount):
        with pytest.raises(ValueError):
            shipped.consume(free, "requests", amount, 0, NOW)


class TestIncrementUsage:
    def test_counts_work_that_already_ran_even_past_the_limit(self, shipped, free):
        span, after = shipped.increment_usage(free, "requests", 5, 19, NOW)
        assert after == 24
        assert span.start == at("2026-01-05 00:00") and span.end == at("2026-01-06 00:00")

    def test_the_window_returned_is_the_usage_key(self, shipped, free):
        span, _ = shipped.increment_usage(free, "requests", 1, 0, NOW)
        assert span == shipped.window(free, "requests", NOW)

    @pytest.mark.parametrize("amount", [0, -1, 1.5, True])
    def test_rejects_bad_amounts(self, shipped, free, amount):
        with pytest.raises(ValueError):
            shipped.increment_usage(free, "requests", amount, 0, NOW)


class TestUsageBook:
    def test_a_new_window_is_a_new_key(self, shipped, free):
        book = UsageBook(shipped)
        assert book.consume(free, "requests", 20, NOW).allowed
        assert not book.check(free, "requests", 1, NOW).allowed
        tomorrow = at("2026-01-06 00:00")
        assert book.used(free, "requests", tomorrow) == 0
        assert book.check(free, "requests", 1, tomorrow).remaining == 20

    def test_a_refused_consume_leaves_usage_alone(self, shipped, free):
        book = UsageBook(shipped)
        book.consume(free, "requests", 15, NOW)
        assert not book.consume(free, "requests", 6, NOW).allowed
        assert book.used(free, "requests", NOW) == 15

    def test_record_counts_past_the_limit(self, shipped, free):
        book = UsageBook(shipped)
        assert book.record(free, "requests", 25, NOW) == 25
        decision = book.check(free, "requests", 1, NOW)
        assert (decision.allowed, decision.used, decision.remaining) == (False, 25, 0)

    def test_subjects_are_counted_apart(self, shipped, free):
        book = UsageBook(shipped)
        book.consume(free, "requests", 20, NOW)
        bob = shipped.initial_state("bob", NOW)
        assert book.check(bob, "requests", 1, NOW).allowed
