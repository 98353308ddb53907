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
"""
from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The events that say money of a payment came back to the customer.
REVERSAL_EVENTS = frozenset({"charge.refunded", "refund.created", "refund.updated", "charge.dispute.closed"})
# A refund takes credits back once Stripe accepted it (pending: on its way); a failed or canceled one never did.
_REFUNDING = frozenset({"succeeded", "pending"})


class ReversalKind(enum.Enum):
    CHARGE_REFUNDED = "charge_refunded"     # charge.refunded: amount_refunded, all refunds of the charge so far
    REFUND = "refund"                       # refund.created / refund.updated: one refund
    DISPUTE_LOST = "dispute_lost"           # charge.dispute.closed with status lost: the disputed amount


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
    if event_type in ("refund.created", "refund.updated") and kind == "refund" and obj.get("status") in _REFUNDING:
        return _fact(_id(obj.get("id")), ReversalKind.REFUND, payment_intent, charge, obj.get("amount"), created,
                     event_id)
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
    refunded = max(max((f.amount for f in facts if f.kind is ReversalKind.CHARGE_REFUNDED), default=0),
                   sum(f.amount for f in facts if f.kind is ReversalKind.REFUND))
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
    """What one fact took of one grant: `units` it accounts for, `taken` of them what was left to take."""

    fact: MoneyBack
    grant_id: str
    units: int
    taken: int


def settle(grant_id: str, granted: int, remaining: int, paid: int | None, facts: list[MoneyBack],
           recorded: Mapping[str, int]) -> list[Taken]:
    """What the facts of a grant's payment not yet recorded against the grant take of it. `recorded`: fact id ->
    units, of those already taken from it. Each new fact, in created order, takes what the grant owes with it
    beyond what was accounted for already."""
    paid = paid if paid is not None else max((f.paid for f in facts if f.paid is not None), default=None)
    known = [f for f in facts if f.id in recorded]
    counted = sum(recorded.values())
    out = []
    for fact in sorted((f for f in facts if f.id not in recorded), key=lambda f: (f.created, f.id)):
        known.append(fact)
        units = max(0, owed(granted, returned(known, paid), paid) - counted)
        taken = min(remaining, units)
        counted += units
        remaining -= taken
        out.append(Taken(fact, grant_id, units, taken))
    return out


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _id(value) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None
