"""Credits taken back: a refund or a lost dispute of the payment that bought a credit pack takes back a share of
the pack's credits, as much of them as is left. Pure: the store applies it in the transaction of the event's
commit, with what it holds of the payment's grants and of the money that came back before.

What came back of a payment is read from every fact the gate holds about it together, so that two events about
one refund (Stripe sends `refund.created` and `charge.refunded` for it) take back once: a charge's
`amount_refunded` counts every refund of the charge so far, each refund counts its own `amount`, and the larger
of the two is what was refunded; a lost dispute adds its `amount`. Never more than was paid.

A grant of G credits bought with a payment of P, of which B came back, owes ceil(G * B / P) credits (rounded
against the customer, never more than G); each reversal takes what that figure grew by, from what is left of the
grant. Credits spent stay spent: a grant goes down to zero, never below.

A refund that fails or is canceled after it was pending (`refund.failed`, `refund.updated`) did not bring the
money back after all: it stops counting (and a charge's `amount_refunded` said before the failure stops counting
it too), and what the grant owes falls; what was taken beyond that is given back to the grant.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The events that say money of a payment came back to the customer.
REVERSAL_EVENTS = frozenset({"charge.refunded", "refund.created", "refund.updated", "refund.failed",
                             "charge.dispute.closed"})
_REFUND_EVENTS = frozenset({"refund.created", "refund.updated", "refund.failed"})
# A refund takes credits back once Stripe accepted it (pending: on its way); a failed or canceled one never did,
# and one that fails or is canceled after it was pending gives back what it took.
_REFUNDING = frozenset({"succeeded", "pending"})
_UNDONE = frozenset({"failed", "canceled"})
_UNDONE_SUFFIX = "/undone"      # an undone refund's fact: the refund's id and this


class ReversalKind(enum.Enum):
    CHARGE_REFUNDED = "charge_refunded"     # charge.refunded: amount_refunded, all refunds of the charge so far
    REFUND = "refund"                       # refund.created / refund.updated: one refund
    DISPUTE_LOST = "dispute_lost"           # charge.dispute.closed with status lost: the disputed amount
    REFUND_UNDONE = "refund_undone"         # refund.failed / refund.updated, failed or canceled: a refund undone


@dataclass(frozen=True, slots=True)
class MoneyBack:
    """Money of one payment that came back, as one event says it. `id`: the refund's or the dispute's id, or (for
    charge.refunded, which names no refund) the event's: the same fact delivered again is the same row.
    `amount` in the payment's smallest currency unit; `paid`: what the charge was of, when the event says."""

    id: str
    kind: ReversalKind
    payment_intent: str
    charge: str | None
    amount: int
    created: float
    event_id: str
    paid: int | None = None


def money_back(event_type: str, event_id: str, obj: Mapping, created: float) -> MoneyBack | None:
    """What an event says came back of a payment (None: nothing, or no payment intent to find a grant by)."""
    if event_type not in REVERSAL_EVENTS:
        return None
    kind = obj.get("object")
    payment_intent, charge = _id(obj.get("payment_intent")), _id(obj.get("charge"))
    if event_type == "charge.refunded" and kind == "charge":
        amount, charge, ident = obj.get("amount_refunded"), _id(obj.get("id")), event_id
        paid = obj.get("amount")
        return _fact(ident, ReversalKind.CHARGE_REFUNDED, payment_intent, charge, amount, created, event_id,
                     paid if _count(paid) else None)
    if event_type in _REFUND_EVENTS and kind == "refund":
        status, refund = obj.get("status"), _id(obj.get("id"))
        status = status if isinstance(status, str) else None    # a list or an object: no status (was a TypeError)
        if status in _REFUNDING:
            return _fact(refund, ReversalKind.REFUND, payment_intent, charge, obj.get("amount"), created, event_id)
        if status in _UNDONE and refund is not None:
            return _fact(refund + _UNDONE_SUFFIX, ReversalKind.REFUND_UNDONE, payment_intent, charge,
                         obj.get("amount"), created, event_id)
        return None
    if event_type == "charge.dispute.closed" and kind == "dispute" and obj.get("status") == "lost":
        return _fact(_id(obj.get("id")), ReversalKind.DISPUTE_LOST, payment_intent, charge, obj.get("amount"),
                     created, event_id)
    return None


def _fact(ident, kind, payment_intent, charge, amount, created, event_id, paid=None) -> MoneyBack | None:
    if ident is None or payment_intent is None or not _count(amount) or amount <= 0:
        return None
    return MoneyBack(ident, kind, payment_intent, charge, amount, float(created), event_id, paid)


def returned(facts: Iterable[MoneyBack], paid: int | None) -> int:
    """What came back of a payment, by all that is known of it (see the module's docstring); at most `paid`."""
    facts = list(facts)
    refunds = {f.id: f for f in facts if f.kind is ReversalKind.REFUND}
    # An undone refund counts only against a refund recorded as on its way (one that failed at once never did).
    undone = {f.id.removesuffix(_UNDONE_SUFFIX): f.created for f in facts if f.kind is ReversalKind.REFUND_UNDONE
              and f.id.removesuffix(_UNDONE_SUFFIX) in refunds}
    # A charge's amount_refunded said while a refund of it was on its way (made by then, undone since or in the
    # same second: Stripe sends charge.refunded when a refund is made, not when one fails) counted that refund.
    by_charge = max((f.amount - sum(refunds[r].amount for r, at in undone.items()
                                    if refunds[r].created <= f.created <= at)
                     for f in facts if f.kind is ReversalKind.CHARGE_REFUNDED), default=0)
    refunded = max(by_charge, sum(f.amount for r, f in refunds.items() if r not in undone), 0)
    back = refunded + sum(f.amount for f in facts if f.kind is ReversalKind.DISPUTE_LOST)
    return back if paid is None else min(back, paid)


def owed(granted: int, back: int, paid: int | None) -> int:
    """The credits of a grant of `granted` that `back` of a payment of `paid` takes: the same share, rounded up,
    at most the grant. With no known amount paid, any money back takes the grant whole."""
    if back <= 0:
        return 0
    if paid is None or paid <= 0:
        return granted
    return min(granted, -(-granted * back // paid))


@dataclass(frozen=True, slots=True)
class Taken:
    """What one fact took of one grant: `units` it accounts for, `taken` of them what was left to take (both
    negative for an undone refund: what it gives back)."""

    fact: MoneyBack
    grant_id: str
    units: int
    taken: int


def settle(grant_id: str, granted: int, remaining: int, paid: int | None, facts: list[MoneyBack],
           recorded: Mapping[str, tuple[int, int]]) -> list[Taken]:
    """What the facts of a grant's payment not yet recorded against the grant take of it. `recorded`: fact id ->
    (units, taken), of those already settled against it. Each new fact, in created order, takes what the grant owes
    with it beyond what was accounted for already; one after which the grant owes less (an undone refund) gives
    back what was taken beyond what it owes now."""
    paid = paid if paid is not None else max((f.paid for f in facts if f.paid is not None), default=None)
    known = [f for f in facts if f.id in recorded]
    counted = sum(units for units, _ in recorded.values())
    took = sum(taken for _, taken in recorded.values())
    out = []
    for fact in sorted((f for f in facts if f.id not in recorded), key=lambda f: (f.created, f.id)):
        known.append(fact)
        owes = owed(granted, returned(known, paid), paid)
        units = owes - counted
        taken = min(remaining, units) if units >= 0 else -max(0, took - owes)
        counted += units
        took += taken
        remaining -= taken
        out.append(Taken(fact, grant_id, units, taken))
    return out


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None
