"""Decisions: every reason the engine gives, the numbers it carries, and the rule it names."""
from __future__ import annotations

import math

import pytest

from plangate.engine import Decision, Reason, UnknownMeter, UnknownStatus, override
from plangate.policy import FailMode

from .helpers import at

NOW = at("2026-01-05 09:00")
MIDNIGHT = at("2026-01-06 00:00")


def line_of(path, text: str, after: str = "") -> int:
    """The 1-based line of the first line holding `text` (after the first line holding `after`)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines[start:], start) if text in line) + 1


@pytest.fixture
def free(shipped):
    return shipped.initial_state("alice", NOW)


class TestAllowed:
    def test_within_the_quota(self, shipped, free):
        d = shipped.can_process(free, "requests", 1, 3, NOW)
        assert (d.allowed, d.reason) == (True, Reason.OK)
        assert (d.status, d.tier, d.meter) == ("limited_free_trial", None, "requests")
        assert (d.limit, d.used, d.remaining) == (20, 3, 17)
        assert (d.window_start, d.resets_at, d.retry_after) == (at("2026-01-05 00:00"), MIDNIGHT, None)

    def test_the_last_unit_fits(self, shipped, free):
        d = shipped.can_process(free, "requests", 2, 18, NOW)
        assert d.allowed and d.remaining == 2

    def test_unlimited(self, windows_plan):
        table = windows_plan()
        paid = table.initial_state("s", NOW).with_(status="paid", tier="big")
        d = table.can_process(paid, "periodic", 10 ** 9, 10 ** 12, NOW)
        assert (d.allowed, d.reason, d.limit, d.remaining, d.retry_after) == (True, Reason.OK, None, None, None)


class TestQuotaExhausted:
    def test_more_than_is_left(self, shipped, free):
        d = shipped.can_process(free, "requests", 5, 17, NOW)
        assert (d.allowed, d.reason, d.used, d.remaining) == (False, Reason.QUOTA_EXHAUSTED, 17, 3)

    def test_retry_after_is_the_seconds_until_the_window_resets(self, shipped, free):
        now = NOW + 0.25
        d = shipped.can_process(free, "requests", 1, 20, now)
        assert d.retry_after == math.ceil(MIDNIGHT - now) == 15 * 3600
        assert d.resets_at == MIDNIGHT

    def test_no_retry_after_when_waiting_cannot_help(self, shipped, free):
        assert shipped.can_process(free, "requests", 21, 0, NOW).retry_after is None

    def test_no_retry_after_for_a_lifetime_quota(self, windows_plan):
        table = windows_plan()
        d = table.can_process(table.initial_state("s", NOW), "forever", 1, 3, NOW)
        assert (d.reason, d.retry_after, d.resets_at) == (Reason.QUOTA_EXHAUSTED, None, None)

    def test_usage_already_past_the_limit_leaves_nothing(self, shipped, free):
        d = shipped.can_process(free, "requests", 1, 25, NOW)
        assert (d.allowed, d.used, d.remaining) == (False, 25, 0)


class TestDenied:
    @pytest.mark.parametrize("status", ["canceled", "closed"])
    def test_a_denying_status(self, shipped, free, status):
        d = shipped.can_process(free.with_(status=status), "requests", 1, 0, NOW)
        assert (d.allowed, d.reason, d.limit, d.remaining, d.retry_after) == (
            False, Reason.STATUS_DENIES, 0, 0, None)

    def test_a_status_without_a_quota_for_the_meter(self, windows_plan):
        table = windows_plan()
        d = table.can_process(table.initial_state("s", NOW), "periodic", 1, 0, NOW)
        assert (d.allowed, d.reason) == (False, Reason.NO_QUOTA)
        assert "(no quota for periodic)" in d.rule


class TestOverrides:
    @pytest.mark.parametrize("reason, allowed", [
        (Reason.DISABLED, True), (Reason.KILL_SWITCH, False), (Reason.FAIL_OPEN, True), (Reason.FAIL_CLOSED, False),
    ])
    def test_decisions_not_made_by_a_quota(self, reason, allowed):
        d = override(reason, allowed, "paid", "pro", "requests", "kill switch (PLANGATE_KILL_SWITCH)")
        assert (d.allowed, d.reason, d.status, d.meter) == (allowed, reason, "paid", "requests")
        assert (d.limit, d.used, d.remaining, d.resets_at, d.retry_after) == (None,) * 5
        assert d.to_dict()["reason"] == reason.value


class TestRuleNamesTheLine:
    def test_a_status_quota(self, shipped, free, repo):
        d = shipped.can_process(free, "requests", 1, 0, NOW)
        line = line_of(repo / "plans.yaml", "requests: {limit: 20")
        assert d.rule == f"{shipped.plan.file}:{line} statuses.limited_free_trial.quotas.requests"

    def test_a_tier_quota_names_the_tier_and_the_status(self, shipped, free, repo):
        d = shipped.can_process(free.with_(status="grace_period", tier="pro"), "requests", 1, 0, NOW)
        line = line_of(repo / "plans.yaml", "requests: {limit: 5000")
        assert d.rule == (f"{shipped.plan.file}:{line} tiers.pro.quotas.requests "
                          "(via statuses.grace_period.quotas.requests)")

    def test_a_denying_status_names_its_access_line(self, shipped, free, repo):
        d = shipped.can_process(free.with_(status="canceled"), "requests", 1, 0, NOW)
        line = line_of(repo / "plans.yaml", "access: deny", after="  canceled:")
        assert d.rule == f"{shipped.plan.file}:{line} statuses.canceled.access"

    def test_a_subject_without_a_tier_gets_the_default_tiers_quota(self, shipped, free):
        d = shipped.can_process(free.with_(status="paid", tier=None), "requests", 1, 0, NOW)
        assert d.limit == 5000 and "tiers.pro" in d.rule

    def test_a_tier_the_plan_no_longer_has_gets_the_default(self, shipped, free):
        d = shipped.can_process(free.with_(status="paid", tier="platinum"), "requests", 1, 0, NOW)
        assert d.limit == 5000 and d.tier == "platinum"


class TestExplains:
    def test_to_dict_carries_every_field(self, shipped, free):
        d = shipped.can_process(free, "requests", 1, 3, NOW)
        assert set(d.to_dict()) == {"allowed", "reason", "status", "tier", "meter", "limit", "used", "remaining",
                                    "window_start", "resets_at", "retry_after", "rule", "feature", "credits",
                                    "credits_used", "overage"}
        assert d.to_dict()["reason"] == "ok"

    def test_repr_says_the_verdict_and_the_rule(self, shipped, free):
        text = repr(shipped.can_process(free, "requests", 1, 20, NOW))
        assert "denied" in text and "quota_exhausted" in text and "statuses.limited_free_trial" in text

    def test_equal_inputs_equal_decisions(self, shipped, free):
        a = shipped.can_process(free, "requests", 1, 3, NOW)
        b = shipped.can_process(free, "requests", 1, 3, NOW)
        assert a == b and a is not b
        assert a != shipped.can_process(free, "requests", 1, 4, NOW)
        assert isinstance(a, Decision)


class TestBadQuestions:
    @pytest.mark.parametrize("amount", [0, -1, 1.5, True, "1"])
    def test_an_amount_is_a_whole_number_of_at_least_one(self, shipped, free, amount):
        with pytest.raises((ValueError, TypeError)):
            shipped.can_process(free, "requests", amount, 0, NOW)

    def test_unknown_meter(self, shipped, free):
        with pytest.raises(UnknownMeter, match="tokens"):
            shipped.can_process(free, "tokens", 1, 0, NOW)

    def test_unknown_status(self, shipped, free):
        with pytest.raises(UnknownStatus, match="vip"):
            shipped.can_process(free.with_(status="vip"), "requests", 1, 0, NOW)


class TestFailMode:
    @pytest.mark.parametrize("status, mode", [
        ("paid", FailMode.OPEN), ("billing_problem", FailMode.CLOSED), ("limited_free_trial", FailMode.OPEN),
    ])
    def test_a_status_may_override_the_meters_fail_mode(self, shipped, free, status, mode):
        assert shipped.fail_mode(free.with_(status=status), "requests") is mode

    def test_without_a_known_status_the_meter_decides(self, shipped, free):
        assert shipped.fail_mode(None, "requests") is FailMode.OPEN
        assert shipped.fail_mode(free.with_(status="gone_from_the_plan"), "requests") is FailMode.OPEN
        assert shipped.fail_mode(None, "tokens") is FailMode.CLOSED
