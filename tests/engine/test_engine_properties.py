"""Properties that hold for every input: limits are never passed, windows tile time, answers repeat."""
from __future__ import annotations

import math
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plangate.engine import Reason, billing_span, compile_file
from plangate.engine._windows import CalendarClock
from plangate.policy import Window

from .helpers import WINDOWS_PLAN

SETTINGS = settings(max_examples=150, deadline=None)
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "America/Havana", "Australia/Lord_Howe",
         "Asia/Kathmandu", "Pacific/Chatham", "America/Sao_Paulo"]
CALENDAR = [Window.DAY, Window.WEEK, Window.MONTH]

instants = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False)  # 1970..2100
amounts = st.integers(min_value=1, max_value=60)
usages = st.integers(min_value=0, max_value=80)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The windows plan compiled in a few zones, plus the shipped plan."""
    folder = tmp_path_factory.mktemp("plans")
    out = {}
    for zone in ("UTC", "Europe/Berlin", "America/New_York"):
        path = folder / f"{zone.replace('/', '-')}.yaml"
        path.write_text(WINDOWS_PLAN.format(timezone=zone), encoding="utf-8")
        out[zone] = compile_file(path)
    return out


def subject_states(table):
    """Any status, any tier (known or not), any billing period."""
    tiers = st.sampled_from([None, *[t.name for t in table.plan.tiers], "gone_tier"])
    periods = st.one_of(st.none(), st.tuples(st.integers(0, 4_000_000_000), st.integers(1, 400 * 86400)))
    return st.builds(
        lambda status, tier, period: table.initial_state("s", 0).with_(
            status=status, tier=tier,
            period_start=period[0] if period else None, period_end=period[0] + period[1] if period else None),
        st.sampled_from(table.statuses), tiers, periods)


class TestCalendarWindows:
    @SETTINGS
    @given(now=instants, zone=st.sampled_from(ZONES), kind=st.sampled_from(CALENDAR))
    def test_every_instant_lies_in_exactly_one_window(self, now, zone, kind):
        clock = CalendarClock(kind, ZoneInfo(zone))
        span = clock.span(now)
        assert span.start <= now < span.end
        # Consecutive windows tile the line: the next starts where this ends, the previous ends where it starts.
        assert clock.span(span.end).start == span.end
        assert clock.span(math.nextafter(float(span.start), -math.inf)).end == span.start
        assert span.end - span.start <= 32 * 86400

    @SETTINGS
    @given(times=st.lists(instants, min_size=2, max_size=12), zone=st.sampled_from(ZONES),
           kind=st.sampled_from(CALENDAR))
    def test_a_warm_clock_answers_like_a_fresh_one(self, times, zone, kind):
        warm = CalendarClock(kind, ZoneInfo(zone))
        for now in times:
            assert warm.span(now) == CalendarClock(kind, ZoneInfo(zone)).span(now)


class TestBillingWindows:
    @SETTINGS
    @given(now=instants, start=st.integers(0, 4_000_000_000), length=st.integers(1, 400 * 86400))
    def test_every_instant_lies_in_exactly_one_period(self, now, start, length):
        span = billing_span(now, start, start + length)
        assert span.start <= now < span.end and span.end - span.start == length
        assert (span.start - start) % length == 0
        assert billing_span(span.end, start, start + length).start == span.end

    @SETTINGS
    @given(start=st.integers(0, 4_000_000_000), length=st.integers(1, 400 * 86400), k=st.integers(-100, 100),
           below=st.booleans())
    def test_instants_at_and_just_before_a_boundary(self, start, length, k, below):
        boundary = start + k * length
        now = math.nextafter(float(boundary), -math.inf) if below else float(boundary)
        span = billing_span(now, start, start + length)
        assert span.start <= now < span.end
        assert (span.end if below else span.start) == boundary


class TestDecisions:
    @SETTINGS
    @given(data=st.data(), zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]),
           now=instants, amount=amounts, used=usages)
    def test_every_decision_has_a_reason_and_never_passes_a_limit(self, tables, data, zone, now, amount, used):
        table = tables[zone]
        state = data.draw(subject_states(table))
        meter = data.draw(st.sampled_from(table.meters))
        d = table.can_process(state, meter, amount, used, now)
        assert isinstance(d.reason, Reason) and d.rule
        assert d.allowed == (d.reason is Reason.OK)
        if d.allowed and d.limit is not None:
            assert used + amount <= d.limit and d.remaining == d.limit - used
        if d.reason is Reason.QUOTA_EXHAUSTED:
            assert used + amount > d.limit
        if d.allowed and d.resets_at is not None:
            assert d.window_start <= now < d.resets_at
        if d.retry_after is not None:
            assert d.retry_after > 0 and now + d.retry_after >= d.resets_at

    @SETTINGS
    @given(data=st.data(), now=instants, amount=amounts, used=usages)
    def test_the_same_inputs_give_the_same_outputs(self, tables, data, now, amount, used):
        table = tables["Europe/Berlin"]
        state = data.draw(subject_states(table))
        meter = data.draw(st.sampled_from(table.meters))
        first = table.can_process(state, meter, amount, used, now)
        table.can_process(state, meter, amount, used, now + 86400 * 40)   # moves the cached bounds away
        again = table.can_process(state, meter, amount, used, now)
        assert first == again
        assert table.consume(state, meter, amount, used, now) == table.consume(state, meter, amount, used, now)


class TestConsume:
    @SETTINGS
    @given(amounts=st.lists(st.integers(1, 30), max_size=40), limit_meter=st.sampled_from(["daily", "weekly"]))
    def test_consume_never_overshoots(self, tables, amounts, limit_meter):
        table = tables["UTC"]
        now = 1_767_603_600.0
        state = table.initial_state("s", now)
        used = 0
        for amount in amounts:
            decision, after = table.consume(state, limit_meter, amount, used, now)
            assert after <= decision.limit
            if decision.allowed:
                assert after == used + amount and decision.used == after
                assert decision.remaining == decision.limit - after
            else:
                assert after == used and used + amount > decision.limit
            used = after
        assert used <= table.rule(state, limit_meter).limit

    @SETTINGS
    @given(now=instants, used=st.integers(0, 30))
    def test_resets_at_is_after_now_for_every_window(self, tables, now, used):
        table = tables["America/New_York"]
        state = table.initial_state("s", 0).with_(status="free")
        for meter in ("daily", "weekly", "monthly"):
            d = table.can_process(state, meter, 1, used, now)
            assert d.window_start <= now < d.resets_at
        assert table.can_process(state, "forever", 1, used, now).resets_at is None
