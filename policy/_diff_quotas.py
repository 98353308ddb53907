"""Whether a quota's change gives some subscriber less (plangate diff's `lowered`): a lower limit, a longer window,
a lower ceiling of overage, a limit no longer per seat or the tier's.

Windows compare by what they allow per unit of time. A month is its average length; a billing period is the
price's interval, a month to a year, so a change to or from it is compared at the length that gives less; a
lifetime never renews: a limit moved to it is lowered, one moved from it is lowered only if it is lower.
"""
from __future__ import annotations

from collections.abc import Iterable

from ._model import Quota, QuotaKind, Window

_DAY = 86400
_MONTH = 2_629_746          # seconds in an average Gregorian month (365.2425 days / 12)
_YEAR = 12 * _MONTH
# The shortest and the longest a window may be, in seconds.
_SPAN = {Window.MINUTE: (60, 60), Window.HOUR: (3600, 3600), Window.DAY: (_DAY, _DAY),
         Window.WEEK: (7 * _DAY, 7 * _DAY), Window.MONTH: (_MONTH, _MONTH),
         Window.BILLING_PERIOD: (_MONTH, _YEAR)}


def fewer(was: int | None, was_window: Window, now: int | None, now_window: Window) -> bool:
    """Does `now` a `now_window` allow less than `was` a `was_window`, for some subscriber? None: no bound."""
    if now is None:
        return False
    if was is None:
        return True
    if was_window is now_window:
        return now < was
    if now_window is Window.LIFETIME:
        return True
    if was_window is Window.LIFETIME:
        return now < was
    # now / longest(now) < was / shortest(was), in whole numbers
    return now * _SPAN[was_window][0] < was * _SPAN[now_window][1]


def limit_lowered(was: Quota, now: Quota) -> bool:
    """Is the limit itself (what is included, before overage) lower for some subscriber?"""
    if now.kind is not QuotaKind.LIMIT:
        return False
    if was.kind is not QuotaKind.LIMIT:
        return True     # unlimited, or the tier's (with its add-ons): a status's own limit may be less
    if was.per_unit is not None and now.per_unit != was.per_unit:
        return True     # no longer per seat (or per another unit): less for some subjects whatever the figures
    assert was.window is not None and now.window is not None
    return fewer(was.limit, was.window, now.limit, now.window)


def ceiling_lowered(was: Quota, now: Quota) -> bool:
    """Is the most a window lets through (the limit and its overage) lower?"""
    if was.kind is not QuotaKind.LIMIT or now.kind is not QuotaKind.LIMIT:
        return False
    assert was.window is not None and now.window is not None
    return fewer(_ceiling(was), was.window, _ceiling(now), now.window)


def to_tiers_lowered(was: Quota, tiers: Iterable[Quota | None]) -> bool:
    """A status's own quota (or unlimited) replaced by the tier's: lowered if some tier gives less, or none."""
    return any(q is None or limit_lowered(was, q) or ceiling_lowered(was, q) for q in tiers)


def _ceiling(quota: Quota) -> int | None:
    if quota.overage is None:
        return quota.limit
    return None if quota.overage.up_to is None else (quota.limit or 0) + quota.overage.up_to
