"""Quota windows: calendar days, ISO weeks and months in the plan's zone, billing periods, lifetime."""
from __future__ import annotations

import math
from zoneinfo import ZoneInfo

import pytest

from .helpers import at
from plangate.engine import Span, billing_span
from plangate.engine._windows import LIFETIME, MONTH_SECONDS, AnniversaryClock, CalendarClock, anniversary_span
from plangate.policy import Window

HOUR, DAY = 3600, 86400


def span_of(kind: Window, tz: str, local: str) -> Span:
    return CalendarClock(kind, ZoneInfo(tz)).span(at(local, tz))


class TestDay:
    @pytest.mark.parametrize("tz, day, hours", [
        ("Europe/Berlin", "2026-03-29", 23),      # clocks go forward at 02:00
        ("Europe/Berlin", "2026-10-25", 25),      # and back at 03:00
        ("Europe/Berlin", "2026-07-01", 24),
        ("America/New_York", "2026-03-08", 23),
        ("America/New_York", "2026-11-01", 25),
        ("UTC", "2026-03-29", 24),
    ])
    def test_a_day_runs_from_local_midnight_to_local_midnight(self, tz, day, hours):
        span = span_of(Window.DAY, tz, f"{day} 12:00")
        assert span.start == at(f"{day} 00:00", tz)
        assert span.end - span.start == hours * HOUR

    @pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
    def test_the_hour_the_clocks_skip_or_repeat_stays_in_its_day(self, tz):
        for local in ("2026-03-29 02:30", "2026-10-25 02:30", "2026-03-08 02:30", "2026-11-01 01:30"):
            now = at(local, tz)
            span = CalendarClock(Window.DAY, ZoneInfo(tz)).span(now)
            assert span.start <= now < span.end
            assert span.start == at(local[:10] + " 00:00", tz)

    def test_midnight_belongs_to_the_new_day(self):
        clock = CalendarClock(Window.DAY, ZoneInfo("UTC"))
        midnight = at("2026-01-06 00:00")
        assert clock.span(midnight).start == midnight
        assert clock.span(midnight - 0.001).end == midnight

    def test_a_midnight_that_does_not_exist_still_tiles(self):
        # Havana moves its clocks from 00:00 to 01:00: that day starts at the first instant it has.
        tz = ZoneInfo("America/Havana")
        clock = CalendarClock(Window.DAY, tz)
        before = clock.span(at("2026-03-07 12:00", "America/Havana"))
        after = clock.span(before.end)
        assert after.start == before.end
        assert after.end - after.start == 23 * HOUR


class TestWeek:
    def test_weeks_start_on_monday(self):
        span = span_of(Window.WEEK, "UTC", "2026-01-08 15:00")   # a Thursday
        assert span == Span(int(at("2026-01-05 00:00")), int(at("2026-01-12 00:00")))

    def test_sunday_night_is_still_the_old_week(self):
        span = span_of(Window.WEEK, "Europe/Berlin", "2026-01-11 23:59")
        assert span.start == at("2026-01-05 00:00", "Europe/Berlin")

    @pytest.mark.parametrize("tz, monday, hours", [
        ("Europe/Berlin", "2026-03-23", 167), ("Europe/Berlin", "2026-10-19", 169),
        ("America/New_York", "2026-03-02", 167), ("America/New_York", "2026-10-26", 169),
    ])
    def test_a_week_with_a_clock_change_is_an_hour_shorter_or_longer(self, tz, monday, hours):
        span = span_of(Window.WEEK, tz, f"{monday} 10:00")
        assert span.start == at(f"{monday} 00:00", tz)
        assert span.end - span.start == hours * HOUR

    def test_a_week_across_new_year(self):
        span = span_of(Window.WEEK, "UTC", "2027-01-01 08:00")   # a Friday
        assert (span.start, span.end) == (at("2026-12-28 00:00"), at("2027-01-04 00:00"))


class TestMonth:
    @pytest.mark.parametrize("local, first, after", [
        ("2026-01-31 23:59", "2026-01-01", "2026-02-01"),
        ("2026-02-15 12:00", "2026-02-01", "2026-03-01"),
        ("2028-02-29 12:00", "2028-02-01", "2028-03-01"),     # leap year
        ("2026-12-31 23:59", "2026-12-01", "2027-01-01"),
        ("2026-04-30 10:00", "2026-04-01", "2026-05-01"),
    ])
    def test_month_ends(self, local, first, after):
        span = span_of(Window.MONTH, "UTC", local)
        assert (span.start, span.end) == (at(f"{first} 00:00"), at(f"{after} 00:00"))

    @pytest.mark.parametrize("year, days", [(2026, 28), (2028, 29), (2100, 28), (2000, 29)])
    def test_february_has_its_leap_day_only_in_leap_years(self, year, days):
        span = span_of(Window.MONTH, "UTC", f"{year}-02-10 00:00")
        assert span.end - span.start == days * DAY

    def test_march_in_berlin_is_an_hour_short(self):
        span = span_of(Window.MONTH, "Europe/Berlin", "2026-03-15 12:00")
        assert span.start == at("2026-03-01 00:00", "Europe/Berlin")
        assert span.end == at("2026-04-01 00:00", "Europe/Berlin")
        assert span.end - span.start == 31 * DAY - HOUR

    def test_november_in_new_york_is_an_hour_long(self):
        span = span_of(Window.MONTH, "America/New_York", "2026-11-20 12:00")
        assert span.end - span.start == 30 * DAY + HOUR


class TestCachedBounds:
    def test_the_cached_window_is_reused_until_now_passes_its_end(self):
        clock = CalendarClock(Window.DAY, ZoneInfo("UTC"))
        first = clock.span(at("2026-01-05 09:00"))
        assert clock.span(at("2026-01-05 23:59")) is first
        later = clock.span(at("2026-01-06 00:00"))
        assert later is not first and later.start == first.end

    def test_going_back_in_time_recomputes(self):
        clock = CalendarClock(Window.MONTH, ZoneInfo("UTC"))
        clock.span(at("2026-05-05 00:00"))
        assert clock.span(at("2026-01-05 00:00")).start == at("2026-01-01 00:00")

    def test_anniversary_windows_of_many_periods_are_each_kept_and_each_right(self, monkeypatch):
        """Every subscriber has a period of their own: one cached window per quota was recomputed (calendar
        arithmetic, ~8 µs) on nearly every decision when subjects interleaved."""
        monkeypatch.setattr(AnniversaryClock, "SPANS_KEPT", 50)
        clock = AnniversaryClock(Window.MONTH, CalendarClock(Window.MONTH, ZoneInfo("UTC")))
        now = at("2027-03-10 12:00")
        periods = [(at("2027-01-31 10:00") + n * 3600, at("2028-01-31 10:00") + n * 3600) for n in range(80)]
        for _ in range(2):
            for start, end in periods:
                assert clock.span(now, start, end) == anniversary_span(Window.MONTH, now, start, end)
        first = clock.span(now, *periods[-1])
        assert clock.span(now + 60, *periods[-1]) is first            # kept, while now is in it
        assert clock.span(first.end, *periods[-1]).start == first.end         # then the next month's
        assert len(clock._spans) <= 50

    def test_one_more_period_than_are_kept_still_finds_most_windows_kept(self, monkeypatch):
        """Full, the cache was emptied whole: with one period more than it keeps, taken in turn, each was gone
        before its turn came round again, and every decision worked its window out anew."""
        monkeypatch.setattr(AnniversaryClock, "SPANS_KEPT", 50)
        clock = AnniversaryClock(Window.MONTH, CalendarClock(Window.MONTH, ZoneInfo("UTC")))
        now = at("2027-03-10 12:00")
        periods = [(at("2027-01-31 10:00") + n * 3600, at("2028-01-31 10:00") + n * 3600) for n in range(51)]
        first = [clock.span(now, start, end) for start, end in periods]
        again = [clock.span(now, start, end) for start, end in periods]
        hits = sum(a is b for a, b in zip(first, again))      # the very window kept, not worked out anew
        assert hits >= 15 and len(clock._spans) <= 50

    def test_only_calendar_kinds_have_a_clock(self):
        with pytest.raises(ValueError):
            CalendarClock(Window.BILLING_PERIOD, ZoneInfo("UTC"))


class TestBillingPeriod:
    START, END = int(at("2026-01-05 09:00")), int(at("2026-02-05 09:00"))

    def test_inside_the_period_the_window_is_the_period(self):
        assert billing_span(at("2026-01-20 00:00"), self.START, self.END) == Span(self.START, self.END)

    def test_past_the_end_periods_of_the_same_length_follow(self):
        length = self.END - self.START
        span = billing_span(self.END + 1, self.START, self.END)
        assert span == Span(self.END, self.END + length)
        span = billing_span(self.END + 5 * length + 7, self.START, self.END)
        assert span == Span(self.END + 5 * length, self.END + 6 * length)

    def test_before_the_start_periods_run_backwards(self):
        length = self.END - self.START
        assert billing_span(self.START - 1, self.START, self.END) == Span(self.START - length, self.START)

    def test_the_end_belongs_to_the_next_period(self):
        assert billing_span(self.END, self.START, self.END).start == self.END
        assert billing_span(math.nextafter(float(self.END), 0), self.START, self.END).end == self.END

    @pytest.mark.parametrize("start, end", [(None, None), (100, None), (200, 100), (100, 100)])
    def test_no_usable_period_means_thirty_day_periods_from_the_epoch(self, start, end):
        span = billing_span(at("2026-01-20 00:00"), start, end)
        assert span.start % MONTH_SECONDS == 0 and span.end - span.start == MONTH_SECONDS

    def test_an_instant_a_hair_before_a_boundary_is_in_the_earlier_period(self):
        # Float division used to put such instants one period late, outside their window.
        start, length = 1820608300, 365 * DAY
        boundary = start - 48 * length
        now = math.nextafter(float(boundary), 0)
        span = billing_span(now, start, start + length)
        assert span.start <= now < span.end and span.end == boundary


class TestLifetime:
    def test_lifetime_never_resets(self, windows_plan):
        table = windows_plan()
        state = table.initial_state("s", at("2026-01-05 09:00"))
        assert table.window(state, "forever", at("2090-01-01 00:00")) == LIFETIME
        assert LIFETIME.end is None and at("2026-01-01 00:00") in LIFETIME


class TestWindowsInTheTable:
    def test_each_meter_counts_in_its_window(self, windows_plan):
        table = windows_plan("Europe/Berlin")
        now = at("2026-03-29 12:00", "Europe/Berlin")
        state = table.initial_state("s", now)
        assert table.window(state, "daily", now).start == at("2026-03-29 00:00", "Europe/Berlin")
        assert table.window(state, "weekly", now).start == at("2026-03-23 00:00", "Europe/Berlin")
        assert table.window(state, "monthly", now).start == at("2026-03-01 00:00", "Europe/Berlin")

    def test_the_billing_window_follows_the_subjects_period(self, windows_plan):
        table = windows_plan()
        start, end = int(at("2026-01-05 09:00")), int(at("2026-02-05 09:00"))
        state = table.initial_state("s", start).with_(status="paid", tier="basic", period_start=start, period_end=end)
        assert table.window(state, "periodic", at("2026-01-10 00:00")) == Span(start, end)
        other = state.with_(period_start=start + 3600, period_end=end + 3600)
        assert table.window(other, "periodic", at("2026-01-10 00:00")) == Span(start + 3600, end + 3600)
