"""Which of a subject's Stripe subscriptions its status follows, and what the gate knows of each.

A customer can hold several subscriptions over time, and at once: a new one started while the old one is
still `past_due` (Stripe cancels the old one by dunning days later), or an add-on beside the main one. The
subject's status follows one of them:

1. Among its subscriptions but add-ons (a subscription whose prices are known and select no tier of the
   plan: each is an add-on's or, when the plan has no default_tier, one it does not know), or, when all are
   add-ons, among those that buy none of the plan's add-ons (prices the plan does not know: a plan without
   tiers follows those). One that buys the plan's add-ons and no tier is never followed: add-ons never move
   the subject's status nor give it a tier, so a subject with only such subscriptions follows none;
2. the most recently created one that serves: neither ended (`canceled`, `incomplete_expired`) nor
   `incomplete` (begun, its first payment never made: an abandoned payment form must not mute the subscription
   the customer pays for). A Checkout Session creates its subscription: one known only from its checkout was
   created then. One known only from an invoice counts as older than every one whose creation the gate saw;
3. when none serves, the one that ended last (so that its end is the subject's), or an `incomplete` one begun
   after that end (a returning customer's, paying now).

So when the followed subscription ends while another is live, the subject follows the live one; an event
about a subscription that is not the followed one moves the subject only on a transition of the plan that
says so (`subscription: other` or `any`).

Pure: the knowledge is part of the subject's state, so it is rebuilt by the fold of its events, in any
order of delivery.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, UTC
from typing import Any, NamedTuple
from dataclasses import dataclass, replace

from ._stripe import billing_period, invoice_subscription, paid_periods, unix_seconds

ENDED = frozenset({"canceled", "incomplete_expired"})
INCOMPLETE = "incomplete"      # begun, its first payment not made (or awaiting 3-D Secure): serves nothing yet
NEVER_SERVED = frozenset({INCOMPLETE, "incomplete_expired"})     # incomplete_expired: its first payment never came
# Statuses in which a subscription's add-ons count: Stripe serves it (past_due: while it retries the payment).
LIVE = frozenset({"active", "trialing", "past_due"})


@dataclass(frozen=True, slots=True)
class Subscription:
    """What the gate knows of one Stripe subscription. Times are Unix seconds; None when not known."""

    id: str
    status: str | None = None        # Stripe's status; None while known only from an invoice or checkout
    created: float | None = None     # when Stripe created it (None: its creation was not seen)
    tier: str | None = None          # the tier its prices select (a price the plan does not know: default_tier)
    period_start: float | None = None
    period_end: float | None = None
    trial_end: float | None = None
    cancel_at: float | None = None
    ended_at: float | None = None
    quantity: int | None = None      # of the item whose price selects its tier (seats); None: not known
    addons: tuple[tuple[str, int], ...] = ()    # (add-on of the plan, quantity) its items buy
    paid_through: float | None = None   # the end of the last period its paid invoices covered

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def addon(self) -> bool:
        """Its prices are known (from the subscription itself) and none selects a tier of the plan."""
        return self.status is not None and self.tier is None

    @property
    def addons_only(self) -> bool:
        """It buys some of the plan's add-ons and selects no tier: never the subscription the status follows."""
        return self.addon and bool(self.addons)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data: Mapping) -> Subscription:
        values: dict[str, Any] = {name: data.get(name) for name in cls.__slots__ if name in data}
        if "addons" in values:      # JSON has lists: the state compares tuples
            values["addons"] = tuple((str(name), int(q)) for name, q in values["addons"] or ())
        return cls(**values)


class Aside(NamedTuple):
    """An event the subject's status does not follow: about `about` (a subscription, or a one-off invoice) while
    the subject follows `follows` (None: none); `ended` when `about` is a subscription the gate knows had ended
    before the event (an invoice paid after the end), whether the subject follows it or not."""

    about: str
    follows: str | None
    ended: Subscription | None = None

    def words(self) -> str:
        """What it is about, in the reason of an event that moved nothing."""
        if self.ended is not None:
            return f"subscription {self.about}, which ended{_on(self.ended.ended_at)}"
        return f"subscription {self.about}, but the subject's status {_follows(self.follows)}"

    def note(self) -> str:
        """What it is about, beside the transition it took."""
        if self.ended is not None:
            return f"about {self.about}, which ended{_on(self.ended.ended_at)}"
        return f"about {self.about}; the subject {_follows(self.follows)}"


def _follows(subscription: str | None) -> str:
    """What the subject's status follows, in a reason."""
    return f"follows {subscription}" if subscription else "follows no subscription (add-ons alone are never followed)"


def _on(when: float | None) -> str:
    """When a subscription ended, in a reason ('' when the gate does not know)."""
    if when is None:
        return ""
    return " on " + datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


def live_addons(subscriptions: tuple[Subscription, ...]) -> tuple[tuple[str, int], ...]:
    """The add-ons the subject's live subscriptions buy, each with its whole quantity, by name."""
    total: dict[str, int] = {}
    for s in subscriptions:
        if s.addons and s.status in LIVE:
            for name, quantity in s.addons:
                total[name] = total.get(name, 0) + quantity
    return tuple(sorted(total.items()))


def subscription_of(obj: Mapping) -> str | None:
    """The subscription an event's object is about: a subscription, an invoice (either shape) or a Checkout
    Session that names one; None for objects about no subscription (charges, customers, ...)."""
    kind = obj.get("object")
    if kind == "subscription":
        ident = obj.get("id")
    elif kind == "invoice":
        ident = invoice_subscription(obj)
    elif kind == "checkout.session":
        ident = obj.get("subscription")
        ident = ident.get("id") if isinstance(ident, Mapping) else ident
    else:
        return None
    return ident if isinstance(ident, str) and ident else None


def followed(subscriptions: tuple[Subscription, ...]) -> Subscription | None:
    """The subscription the subject's status follows (see the module's rule); None when it has none but add-ons'."""
    pool = [s for s in subscriptions if not s.addon] or [s for s in subscriptions if not s.addons_only]
    if not pool:
        return None
    serving = [s for s in pool if not s.ended and s.status != INCOMPLETE]
    if serving:
        return max(serving, key=_newest)
    return max(pool, key=_latest)


def _newest(s: Subscription) -> tuple:
    return (s.created is not None, s.created or 0.0, s.id)


def _latest(s: Subscription) -> tuple:
    """When it last changed what it serves: its end, or (incomplete) its beginning."""
    return ((s.ended_at if s.ended else s.created) or 0.0, *_newest(s))


def take_in(subscriptions: tuple[Subscription, ...], ident: str, obj: Mapping, created: float,
            items_of) -> tuple[Subscription, ...]:
    """The subscriptions with what the event's object says of `ident`: a subscription object tells its status
    and dates; an invoice that it exists and, paid, what it is paid through (its lines' periods' end, else the
    subscription's known period's); a checkout that it exists since `created`.
    items_of(subscription) -> (the tier its prices name or None, that item's quantity, its add-ons)."""
    known = next((s for s in subscriptions if s.id == ident), None)
    if obj.get("object") != "subscription":
        if known is None:
            created_then = float(created) if obj.get("object") == "checkout.session" else None
            known = Subscription(ident, created=created_then)
            subscriptions += (known,)
        periods = paid_periods(obj) if obj.get("object") == "invoice" else None
        end = None if periods is None else max(e for _, e in periods) if periods else known.period_end
        if end is None or (known.paid_through is not None and end <= known.paid_through):
            return subscriptions
        return tuple(replace(s, paid_through=end) if s.id == ident else s for s in subscriptions)
    status = obj.get("status") if isinstance(obj.get("status"), str) else (known.status if known else None)
    period = billing_period(obj)
    was = known or Subscription(ident)
    ended_at = was.ended_at
    if status in ENDED:
        ended_at = ended_at or _date(obj, "ended_at") or _date(obj, "canceled_at") or float(created)
    else:
        ended_at = None
    tier, quantity, addons = items_of(obj) if _has_prices(obj) else (was.tier, was.quantity, was.addons)
    new = Subscription(
        ident, status,
        _date(obj, "created") or was.created,
        tier,
        period[0] if period else was.period_start,
        period[1] if period else was.period_end,
        _date(obj, "trial_end") if "trial_end" in obj else was.trial_end,
        _date(obj, "cancel_at") if "cancel_at" in obj else was.cancel_at,
        ended_at, quantity, addons, was.paid_through)
    if new == known:
        return subscriptions
    return tuple(new if s.id == ident else s for s in subscriptions) if known else subscriptions + (new,)


def _has_prices(obj: Mapping) -> bool:
    items = obj.get("items")
    return (isinstance(items, Mapping) and isinstance(items.get("data"), list)) or isinstance(obj.get("plan"), Mapping)


def _date(obj: Mapping, key: str) -> float | None:
    value: Any = obj.get(key)
    return float(value) if unix_seconds(value) else None
