"""Quota windows: which window an instant falls in, and when it resets.

Calendar windows start at local midnight in the plan's time zone (weeks on
Monday), so they follow daylight-saving changes and month ends. A window's
bounds are computed once and reused until `now` leaves them: the hot path
does no calendar arithmetic.
"""
from __future__ import annotations

import calendar
import math
import random
from datetime import date, datetime, timedelta, UTC
from zoneinfo import ZoneInfo

from plangate.policy import Window

LIFETIME_START = 0
MONTH_SECONDS = 30 * 86400  # the stand-in billing period of a subject with no period from Stripe
# The last instant a time given to plangate may be (9000-01-01T00:00:00Z): a window or a timer from one past it
# may pass the year 9999, which no date holds.
LAST_INSTANT = 221_845_392_000


class Span:
    """One window: start (inclusive, whole Unix seconds, the usage key) to end (exclusive, or None: never)."""

    __slots__ = ("start", "end")

    def __init__(self, start: int, end: int | None):
        self.start = start
        self.end = end

    def __contains__(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)

    def __eq__(self, other) -> bool:
        return isinstance(other, Span) and (self.start, self.end) == (other.start, other.end)

    def __repr__(self) -> str:
        return f"Span({self.start}, {self.end})"


LIFETIME = Span(LIFETIME_START, None)


# Every clock answers span_for(state, now), the window a subject's usage counts in now, from a cache of the
# window last asked about: the table asks a rule's clock on every decision, one call whatever the window.


class LifetimeClock:
    """The window of unlimited quotas: one, forever."""

    __slots__ = ()

    def span_for(self, state, now: float) -> Span:
        return LIFETIME


class CalendarClock:
    """Bounds of the current day, week or month in one time zone, cached until `now` passes them."""

    __slots__ = ("kind", "tz", "_cached")

    def __init__(self, kind: Window, tz: ZoneInfo):
        if kind not in (Window.DAY, Window.WEEK, Window.MONTH):
            raise ValueError(f"{kind} is not a calendar window")
        self.kind = kind
        self.tz = tz
        self._cached = Span(0, 0)

    def span(self, now: float) -> Span:
        return self.span_for(None, now)

    def span_for(self, state, now: float) -> Span:
        cached = self._cached
        if cached.start <= now < cached.end:  # type: ignore[operator]  # a calendar window always ends
            return cached
        span = self._compute(now)
        self._cached = span
        return span

    def _compute(self, now: float) -> Span:
        today = datetime.fromtimestamp(now, self.tz).date()
        span = self._around(today)
        # Where a zone skips or repeats local midnight, guard the edge: windows still tile the line.
        if now < span.start:
            span = self._around(today - timedelta(days=1))
        elif now >= span.end:  # type: ignore[operator]  # a calendar window always ends
            span = self._around(today + timedelta(days=1))
        return span

    def _around(self, day: date) -> Span:
        if self.kind is Window.DAY:
            first, after = day, day + timedelta(days=1)
        elif self.kind is Window.WEEK:
            first = day - timedelta(days=day.weekday())
            after = first + timedelta(days=7)
        else:
            first = day.replace(day=1)
            after = (first + timedelta(days=32)).replace(day=1)
        return Span(self._midnight(first), self._midnight(after))

    def _midnight(self, day: date) -> int:
        return math.floor(datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp())


class BillingClock:
    """The billing window of the period last asked about, cached until `now` leaves it or another
    period is asked about (one per quota; subjects with other periods recompute, cheaply)."""

    __slots__ = ("_cached",)

    def __init__(self):
        self._cached: tuple = (None, None, Span(0, 0))

    def span_for(self, state, now: float) -> Span:
        """The billing window of the subject's period (state.period_start, state.period_end) at now."""
        start, end, span = self._cached    # one tuple: a reader never sees half an update
        if start == state.period_start and end == state.period_end and span.start <= now < span.end:
            return span
        span = billing_span(now, state.period_start, state.period_end)
        self._cached = (state.period_start, state.period_end, span)
        return span


def billing_span(now: float, period_start: float | None, period_end: float | None) -> Span:
    """The billing period containing now. Past the known period's end (renewal not yet reported),
    periods of the same length follow; before it, likewise backwards. No period known: 30-day
    periods from the Unix epoch, so that the window is still well defined."""
    if period_start is None or period_end is None or period_end <= period_start:
        start, length = 0, MONTH_SECONDS
    else:
        start, length = int(period_start), int(period_end) - int(period_start)
    first = start + math.floor((now - start) / length) * length
    # The division rounds: an instant a hair before a boundary can land one period late (or early).
    if now < first:
        first -= length
    elif now >= first + length:
        first += length
    return Span(first, first + length)


class FixedClock:
    """Minute and hour windows: fixed lengths from the Unix epoch (time zones shift no minute or hour that
    matters to a rate limit), cached until `now` leaves them. `retry_after` is the seconds to the window's end."""

    __slots__ = ("length", "_cached")

    def __init__(self, length: int):
        self.length = length
        self._cached = Span(0, 0)

    def span(self, now: float) -> Span:
        return self.span_for(None, now)

    def span_for(self, state, now: float) -> Span:
        cached = self._cached
        if cached.start <= now < cached.end:       # type: ignore[operator]  # a fixed window always ends
            return cached
        start = int(now // self.length) * self.length
        span = self._cached = Span(start, start + self.length)
        return span

    def _compute(self, now: float) -> Span:
        return self.span_for(None, now)


class AnniversaryClock:
    """Day, week or month windows that start on the subscription's billing anniversary (its period's start, in
    UTC as Stripe bills): a monthly allowance on a yearly price resets each month on the day it was bought; a
    month that has no such day ends on its last (bought on the 31st: the 30th, the 28th, ...), as Stripe's
    billing does. Without a known period the calendar window of the same kind applies. Each period's window is
    cached (up to SPANS_KEPT periods a quota): every subscriber has a period of their own, and working one out is
    calendar arithmetic, ~8 µs against a dict lookup."""

    __slots__ = ("kind", "calendar", "_spans")
    SPANS_KEPT = 8192

    def __init__(self, kind: Window, calendar: CalendarClock):
        self.kind = kind
        self.calendar = calendar
        self._spans: dict[tuple, Span] = {}     # (period start, end) -> its current window

    def span_for(self, state, now: float) -> Span:
        return self.span(now, state.period_start, state.period_end)

    def span(self, now: float, period_start: float | None, period_end: float | None = None) -> Span:
        if period_start is None:
            return self.calendar.span(now)
        key = (period_start, period_end)
        span = self._spans.get(key)
        if span is not None and span.start <= now < span.end:     # type: ignore[operator]  # an anniversary ends
            return span
        span = anniversary_span(self.kind, now, period_start, period_end)
        if len(self._spans) >= self.SPANS_KEPT:
            self._make_room(now)
        self._spans[key] = span
        return span

    def _make_room(self, now: float) -> None:
        """Windows that have ended go, then (still full) a random half: with more periods than are kept, taken
        in turn, emptying it all, or the oldest first, would keep none until its period came round again."""
        spans = self._spans
        snapshot = list(spans.items())      # one C call: a copy no other thread's update can break
        for key, span in snapshot:
            if span.end is not None and span.end <= now:
                spans.pop(key, None)
        if len(spans) >= self.SPANS_KEPT:
            for key in random.sample(list(spans), len(spans) // 2):
                spans.pop(key, None)


def anniversary_span(kind: Window, now: float, anchor: float, until: float | None = None) -> Span:
    """The day, week or month (from the anniversary `anchor`, Unix seconds: a period's start, ending at `until`
    if known) that contains now."""
    if kind is not Window.MONTH:
        length = 86400 if kind is Window.DAY else 7 * 86400
        start = int(anchor) + math.floor((now - int(anchor)) / length) * length
        return Span(start, start + length)
    first = datetime.fromtimestamp(int(anchor), UTC)
    day = first.day
    if until is not None and day == calendar.monthrange(first.year, first.month)[1]:
        # A period that starts on a month's last day may be one whose billing anchor's day that month lacks
        # (anchored on the 31st: Feb 28 to Mar 31): its end, which Stripe does not clamp, says the anchor's day.
        day = max(day, datetime.fromtimestamp(int(until), UTC).day)
    at = datetime.fromtimestamp(now, UTC)
    n = (at.year - first.year) * 12 + (at.month - first.month)
    while _month_after(first, n, day) > now:
        n -= 1
    while _month_after(first, n + 1, day) <= now:
        n += 1
    return Span(_month_after(first, n, day), _month_after(first, n + 1, day))


def _month_after(first: datetime, n: int, day: int) -> int:
    """Unix seconds of the anniversary n months after `first`, on `day` (clamped to the month's last)."""
    year, month = divmod(first.month - 1 + n, 12)
    year += first.year
    month += 1
    day = min(day, calendar.monthrange(year, month)[1])
    return int(first.replace(year=year, month=month, day=day).timestamp())
