"""Credits: balances in a meter's unit, made of grants, spent once a window's limit is used up.

A grant comes from a one-time Checkout payment of a price the plan lists (its credits per unit times the line's
quantity), from an admin, or from the subject's tier for each window (`tiers.<name>.credits`), the unspent part
of a window's grants carried into the next up to the rollover cap. Grants are spent in order: priority (a
lower number first), then the one that expires first, then the oldest. What a grant holds is the store's (it
changes with every spend, atomically with the count); the rules here are pure.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from plangate.policy import ADMIN_PRIORITY, PERIOD_PRIORITY, OnCancel, Plan

from ._decision import MOST
from ._links import stripe_refs
from ._state import SubjectState
from ._subscriptions import NEVER_SERVED, Subscription

# The Checkout events that complete a payment: at once (a card), or later (a bank debit).
PURCHASE_EVENTS = frozenset({"checkout.session.completed", "checkout.session.async_payment_succeeded"})
# The most credits one grant may hold, as a plan's packs and an admin's grant (10^15): the stores count in
# 64-bit integers, and balances are summed.
MAX_GRANT = 10**15
_MAX_WINDOWS = 400          # windows stepped through to carry a rollover (it settles after two)


class AbsurdPurchase(ValueError):
    """A paid Checkout whose credit packs come to more than one grant may hold (MAX_GRANT): no real payment does;
    the event is refused whole rather than stored in part."""


class GrantSource(enum.Enum):
    PURCHASE = "purchase"      # a one-time Checkout payment of a credit pack
    ADMIN = "admin"            # an admin's grant (audited: actor and reason)
    PERIOD = "period"          # the tier's grant for a window
    ROLLOVER = "rollover"      # what the previous window's grants left, carried over (capped)


_TIER_SOURCES = (GrantSource.PERIOD, GrantSource.ROLLOVER)


@dataclass(frozen=True, slots=True)
class Spendable:
    """Which of a subject's grants it may spend now, besides those spent or expired: not those made before its
    last cancellation (`not_before`, when the plan forfeits them), and the tier's grants only while its status
    takes the tier's quota of the meter."""

    not_before: float | None = None
    tier_grants: bool = True


ANY_GRANT = Spendable()


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant of credits. `remaining` is what is left of `amount`; times are Unix seconds."""

    id: str
    meter: str
    amount: int
    remaining: int
    priority: int
    created: float
    expires_at: float | None
    source: GrantSource
    note: str = ""              # the price bought, or an admin's actor and reason
    payment_intent: str | None = None   # a purchase's: refunds and disputes of that payment find it by it
    paid: int | None = None     # a purchase's: what its Checkout charged in all (smallest currency unit)
    # A period or rollover grant's: when the subject entered the tier that made it (its tier_since then; None:
    # not known, or made before this was kept). The same as the subject's now: made in its present stay in the tier.
    tier_since: float | None = None

    def spendable(self, now: float, which: Spendable | None = None) -> bool:
        """Whether the grant may be spent at `now`: it holds some, it has not expired, and a tier's grant has begun (a
        request of a window's last moments does not spend the next window's grant, stored by a request of the next
        window meanwhile; other grants are made as they are bought or given, and a clock a moment behind another
        node's or Stripe's must not hold them back); `which` narrows it further."""
        if self.remaining <= 0 or (self.expires_at is not None and now >= self.expires_at) or \
                (now < self.created and self.source in _TIER_SOURCES):
            return False
        if which is None:
            return True
        if not which.tier_grants and self.source in _TIER_SOURCES:
            return False
        return which.not_before is None or self.created >= which.not_before

    def to_dict(self) -> dict:
        return {"id": self.id, "meter": self.meter, "amount": self.amount, "remaining": self.remaining,
                "priority": self.priority, "created": self.created, "expires_at": self.expires_at,
                "source": self.source.value, "note": self.note}


def spending_order(grant: Grant) -> tuple:
    return (grant.priority, grant.expires_at is None, grant.expires_at or 0.0, grant.created, grant.id)


def spendable_grants(grants: Iterable[Grant], meter: str, now: float, which: Spendable = ANY_GRANT) -> list[Grant]:
    """The meter's grants that may be spent at `now` (Grant.spendable). Not a tier's grants once a later window's are
    made: what they held then was carried into that window, and a request of a window's last moments, decided after
    a request of the next window made its grants, spent it a second time."""
    mine = [g for g in grants if g.meter == meter]
    closed = any(g.source in _TIER_SOURCES and g.created > now for g in mine)
    return [g for g in mine if g.spendable(now, which) and not (closed and g.source in _TIER_SOURCES)]


def balance(grants: Iterable[Grant], meter: str, now: float, which: Spendable = ANY_GRANT) -> int:
    """What the grants that may be spent now hold, up to MOST (what a balance says at the most)."""
    return min(sum(g.remaining for g in spendable_grants(grants, meter, now, which)), MOST)


def spend(grants: list[Grant], meter: str, amount: int, now: float,
          which: Spendable = ANY_GRANT) -> tuple[list[Grant], int]:
    """The grants after spending up to `amount` of the meter's credits, in spending order; and what was spent."""
    left = amount
    by_id = {g.id: g for g in grants}
    for g in sorted(spendable_grants(grants, meter, now, which), key=spending_order):
        if left == 0:
            break
        take = min(left, g.remaining)
        by_id[g.id] = replace(g, remaining=g.remaining - take)
        left -= take
    return list(by_id.values()), amount - left


class CreditRules:
    """The plan's credits, compiled once: which prices are credit packs, and the meters that forfeit credits when
    the subscription ends."""

    def __init__(self, plan: Plan):
        self.packs = {price: c for c in plan.credits for price, _ in c.packs}
        self.forfeit = frozenset(c.meter for c in plan.credits if c.on_cancel is OnCancel.FORFEIT)
        self.admin_priority = ADMIN_PRIORITY

    def needs_line_items(self, event_type: str, obj: Mapping) -> bool:
        """A paid one-time Checkout whose line items the event does not carry (Stripe sends them only when asked):
        the gate asks Stripe for them before it folds the event in, when the plan sells credit packs."""
        return bool(self.packs) and _paid_payment(event_type, obj) and not isinstance(obj.get("line_items"), Mapping)

    def purchased(self, event_type: str, obj: Mapping, created: float) -> tuple[Grant, ...]:
        """The grants a paid Checkout of credit packs makes (a one-time payment, or a pack's one-time price sold
        beside a subscription): per line whose price is a pack, its credits per unit times the line's quantity.
        Each grant's id is the session's and the line's: the same payment never grants twice, however often its
        event comes. Each keeps the payment intent that paid it and what the Checkout charged in all, for a
        refund or a lost dispute of that payment (engine._reversals)."""
        if not self.packs or not _paid_payment(event_type, obj):
            return ()
        session = obj.get("id")
        items = obj.get("line_items")
        lines = items.get("data") if isinstance(items, Mapping) else None
        if not isinstance(session, str) or not isinstance(lines, list):
            return ()
        total = obj.get("amount_total")
        paid = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
        out = []
        for i, line in enumerate(lines):
            if not isinstance(line, Mapping):
                continue
            price = line.get("price")
            price = price.get("id") if isinstance(price, Mapping) else price
            rule = self.packs.get(price) if isinstance(price, str) else None
            per_unit = rule.pack(price) if rule is not None and isinstance(price, str) else None
            quantity = line.get("quantity", 1)
            if rule is None or per_unit is None or not isinstance(quantity, int) or isinstance(quantity, bool) \
                    or quantity < 1:
                continue
            amount = per_unit * quantity
            if amount > MAX_GRANT:
                raise AbsurdPurchase(f"{quantity} x {price} come to {amount} credits, more than a grant holds "
                                     f"({MAX_GRANT})")
            expires = created + rule.expires_after if rule.expires_after else None
            out.append(Grant(f"{session}:{i}", rule.meter, amount, amount, rule.priority, float(created), expires,
                             GrantSource.PURCHASE, f"{quantity} x {price}", session_payment(obj), paid))
        return tuple(out)

    def not_before(self, state: SubjectState, meter: str) -> float | None:
        """For a meter whose credits are forfeited when the subscription ends: grants made before the subject's
        last cancellation (a subscription of a tier ending while no other was live) cannot be spent."""
        if meter not in self.forfeit:
            return None
        return cancelled_at(state.subscriptions)


def _paid_payment(event_type: str, obj: Mapping) -> bool:
    """A paid Checkout that may sell packs: a one-time payment, or a subscription's Checkout whose line items
    hold a pack's one-time price beside the recurring one (`mode: setup` pays nothing). A one-time Checkout a
    discount made free (`no_payment_required`: nothing to pay, no payment intent) sold its packs all the same; a
    subscription's so may only have put its payment off (a trial): it grants none."""
    if event_type not in PURCHASE_EVENTS or obj.get("object") != "checkout.session":
        return False
    status, mode = obj.get("payment_status"), obj.get("mode")
    return (status == "paid" and mode in ("payment", "subscription")) or \
        (status == "no_payment_required" and mode == "payment")


def session_payment(obj: Mapping) -> str | None:
    """The payment intent that paid a Checkout: the session's own (`mode: payment`); in `mode: subscription` the
    session names none, and it is its invoice's (the gate asks Stripe for the invoice's payments and keeps them
    on the stored session, expanded as Stripe expands `invoice.payments`)."""
    return stripe_refs(obj).payment_intent


def cancelled_at(subscriptions: tuple[Subscription, ...]) -> float | None:
    """When the subject last stopped having a live subscription of a tier (None: never). A re-subscription that
    started before the old one ended (during dunning) is no cancellation. A subscription whose first payment was
    never made (`incomplete`, then `incomplete_expired`) never served: its end is none, and it covers none."""
    tiers = [s for s in subscriptions if not s.addon and s.status not in NEVER_SERVED]
    last = None
    for s in tiers:
        if not s.ended or s.ended_at is None:
            continue
        covered = any(o is not s and (o.created or 0.0) <= s.ended_at and
                      (not o.ended or (o.ended_at or 0.0) > s.ended_at) for o in tiers)
        if not covered and (last is None or s.ended_at > last):
            last = s.ended_at
    return last


def period_grants(amount: int, rollover: int, meter: str, span_at, now: float,
                  last: tuple[float, float, int, float | None] | None, since: float | None = None,
                  tier_since: float | None = None) -> tuple[Grant, ...]:
    """The grants the tier makes for the window containing `now`, if not made yet: its amount and, with a
    rollover cap, what the previous windows left. `span_at(t)` is the window containing t (a Span). `last`:
    (start, end, what was left at its end, the tier_since its grant was made in) of the latest window the subject
    has grants of (period and rollover ones), or None. A window the subject never touched still carried its
    grant: it left amount + its own carry.
    `since`: the subject's last cancellation (cancelled_at); nothing is carried from a window that began before
    it (its credits were forfeited, or end where the new subscription's period begins; the windows since were no
    subscription's). `tier_since`: when the subject entered its tier (SubjectState.tier_since); nothing is
    carried from a window that began before it (another tier's grants, or this tier's before the subject left it
    and came back), but from the window it began in when that window's grant was made since (nothing of it had
    been needed before the change: the grant is this tier's)."""
    span = span_at(now)
    period_id = f"period:{meter}:{span.start}"
    if last is not None and last[0] >= span.start:
        return ()
    carry = 0
    if rollover and last is not None and (since is None or since < last[0]) and \
            (tier_since is None or tier_since <= last[0] or last[3] == tier_since):
        left, end = last[2], last[1]
        for _ in range(_MAX_WINDOWS):
            if end >= span.start:
                break
            left = amount + min(rollover, left)      # a window nobody touched: its grant and carry, all left
            end = span_at(end).end
        carry = min(rollover, left)
    grants = [Grant(period_id, meter, amount, amount, PERIOD_PRIORITY, float(span.start), span.end,
                    GrantSource.PERIOD, f"the tier's grant for the window from {span.start}", tier_since=tier_since)]
    if carry:
        grants.append(Grant(f"rollover:{meter}:{span.start}", meter, carry, carry, PERIOD_PRIORITY,
                            float(span.start), span.end, GrantSource.ROLLOVER, "carried over from the window before",
                            tier_since=tier_since))
    return tuple(grants)


class TierGrants(NamedTuple):
    """A subject's grants of a meter as they stand now (StateTable.tier_grants)."""

    held: list[Grant]                           # its grants, the tier's ending with their windows as known now
    redates: tuple[tuple[str, float], ...]      # (grant id, expiry) of those whose stored expiry that moves
    new: tuple[Grant, ...]                      # the tier's grants of this window (and rollover), not made yet


def windowed(grants: Iterable[Grant], meter: str, span) -> tuple[list[Grant], tuple[tuple[str, float], ...]]:
    """The grants with the meter's tier grants ending with their window as the subject's billing period now says
    it (`span`: the window containing now), and the (id, expiry) of those whose stored expiry that changes. A
    tier grant's expiry is its window's end as known when it was made: past a period's end, before Stripe's
    renewal, the window is guessed from the last period's length. Renewed shorter, the old window's grant
    outlived it beside the new window's grants and its own carry-over; renewed longer, it ended days early."""
    out, redates = [], []
    for g in grants:
        if g.meter == meter and g.source in _TIER_SOURCES:
            want = float(span.end) if g.created >= span.start else min(g.expires_at or float("inf"), span.start)
            if want != g.expires_at:
                g = replace(g, expires_at=want)
                redates.append((g.id, want))
        out.append(g)
    return out, tuple(redates)


def last_window(grants: Iterable[Grant], meter: str) -> tuple[float, float, int, float | None] | None:
    """(start, end, left, made_since) of the latest window the subject has a tier grant of; `left`: what its
    period and rollover grants held at its end; `made_since`: the tier_since its period grant was made in (None:
    not known)."""
    windows: dict[float, list[tuple[float, Grant]]] = {}
    for g in grants:
        if g.meter == meter and g.source in (GrantSource.PERIOD, GrantSource.ROLLOVER) and g.expires_at is not None:
            windows.setdefault(g.created, []).append((g.expires_at, g))
    if not windows:
        return None
    start = max(windows)
    held = windows[start]
    made_since = next((g.tier_since for _, g in held if g.source is GrantSource.PERIOD), None)
    return start, max(end for end, _ in held), sum(g.remaining for _, g in held), made_since
