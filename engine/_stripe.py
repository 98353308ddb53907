"""Reading Stripe objects the plan cares about, in both API shapes (see shared Stripe notes)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MISSING = object()


def field(obj: Mapping, path: tuple[str, ...]):
    """The value at a dotted path in an event object, or a sentinel when any step is missing."""
    here = obj
    for part in path:
        if isinstance(here, Mapping) and part in here:
            here = here[part]
        else:
            return _MISSING
    return here


def is_missing(value) -> bool:
    return value is _MISSING


def _items(sub: Mapping) -> list:
    items = sub.get("items")
    data = items.get("data") if isinstance(items, Mapping) else None
    return [i for i in data if isinstance(i, Mapping)] if isinstance(data, list) else []


def price_ids(sub: Mapping) -> list[str]:
    """Price (or legacy plan) ids of a subscription's items."""
    out = []
    for item in _items(sub):
        for key in ("price", "plan"):
            ref = item.get(key)
            ident = ref.get("id") if isinstance(ref, Mapping) else ref
            if isinstance(ident, str):
                out.append(ident)
                break
    plan = sub.get("plan")
    if not out and isinstance(plan, Mapping) and isinstance(plan.get("id"), str):
        out.append(plan["id"])
    return out


def price_items(sub: Mapping) -> list[tuple[str, int]]:
    """(price or legacy plan id, quantity) of each of a subscription's items; a quantity Stripe leaves out (a
    metered price) counts as 1."""
    out = []
    for item in _items(sub):
        for key in ("price", "plan"):
            ref = item.get(key)
            ident = ref.get("id") if isinstance(ref, Mapping) else ref
            if isinstance(ident, str):
                quantity = item.get("quantity")
                ok = isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0
                out.append((ident, quantity if ok else 1))
                break
    return out


def billing_period(sub: Mapping) -> tuple[float, float] | None:
    """(start, end) of a subscription's current period: on the subscription (old shape) or on its
    items (since API 2025-03-31)."""
    start: Any = sub.get("current_period_start")
    end: Any = sub.get("current_period_end")
    if not _numbers(start, end):
        for item in _items(sub):
            start, end = item.get("current_period_start"), item.get("current_period_end")
            if _numbers(start, end):
                break
    return (float(start), float(end)) if _numbers(start, end) and end > start else None


# Unix seconds a Stripe timestamp may have: 1970 to 2286. Outside (NaN, infinity, 1e20, before 1970) it is no
# date Stripe sends, and a state holding it could not be shown as a date.
MAX_SECONDS = 9_999_999_999


def unix_seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS


def _numbers(*values) -> bool:
    return all(unix_seconds(v) for v in values)


def subscription_dates(sub: Mapping, trial_end: float | None,
                       cancel_at: float | None) -> tuple[float | None, float | None]:
    """(trial_end, cancel_at) as a subscription object states them: a field the object carries replaces what
    was known (null clears it: a cancellation withdrawn); a field it does not carry leaves it as it was."""
    def read(key: str, known: float | None) -> float | None:
        if key not in sub:
            return known
        value = sub[key]
        return float(value) if unix_seconds(value) else None
    return read("trial_end", trial_end), read("cancel_at", cancel_at)


def invoice_subscription(invoice: Mapping) -> str | None:
    """The subscription an invoice belongs to, in either shape."""
    sub = invoice.get("subscription")
    if isinstance(sub, Mapping):
        sub = sub.get("id")
    if isinstance(sub, str):
        return sub
    nested = field(invoice, ("parent", "subscription_details", "subscription"))
    return nested if isinstance(nested, str) else None


def paid_periods(invoice: Mapping) -> list[tuple[float, float]] | None:
    """The periods a paid invoice's lines cover, (start, end) each; None when the invoice is not paid."""
    if invoice.get("status") != "paid" and invoice.get("paid") is not True:
        return None
    lines = invoice.get("lines")
    data = lines.get("data") if isinstance(lines, Mapping) else None
    periods = (line.get("period") for line in data if isinstance(line, Mapping)) if isinstance(data, list) else ()
    return [(float(p["start"]), float(p["end"])) for p in periods
            if isinstance(p, Mapping) and all(unix_seconds(p.get(k)) for k in ("start", "end"))
            and p["end"] > p["start"]]
