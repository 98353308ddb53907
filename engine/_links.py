"""Whose a Stripe event is: the pure rules the gate links events to subjects by, shared by the server's webhook
and `plangate test` (so that a story fails where the live gate would leave an event pending).

An event is linked to a subject when its object names the subject (client_reference_id, or the plan's metadata
key), else by the Stripe ids it carries (customer, subscription) once an earlier event linked them. Which fields
link which object types is the table policy/data/stripe_objects.json ("links") ships; the gate reads the
customer, subscription, charge and payment intent kinds (stripe_refs).

Charges, payment intents, refunds and disputes name a charge or a payment intent, and (but for disputes)
mostly the customer; a dispute names only its charge and payment intent. The gate remembers the charge and
payment intent ids of every event it links, so that a later event naming only one of them finds its subject;
where it has not seen them, Stripe's API says whose the charge is (server/stripe/api.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from plangate.policy import Plan, SubjectLink

from ._subjects import subject_problem
from ._subscriptions import subscription_of

# Events about money coming back: the subject's record keeps them even when no transition uses them.
MONEY_BACK_EVENTS = frozenset({
    "charge.refunded", "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
    "charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated",
})
# Events that carry facts the gate keeps (links, billing periods, subscriptions, payments) even when no transition
# uses them. charge.succeeded links a charge and its payment intent to the customer (since API 2025-03-31 an
# invoice names neither): a later dispute, which names only the charge, finds its subject by them.
FACT_EVENTS = frozenset({
    "checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "customer.subscription.paused", "customer.subscription.resumed",
    "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed", "invoice.payment_action_required",
    "charge.succeeded",
}) | MONEY_BACK_EVENTS


def relevant_events(plan: Plan) -> frozenset[str]:
    """The event types the gate reads at all; any other is answered `ignored` without being linked."""
    # A plan selling credit packs reads refunds too: one takes back what its payment bought (engine._reversals).
    credits = {"checkout.session.async_payment_succeeded", "refund.created", "refund.updated", "refund.failed"} \
        if any(c.packs for c in plan.credits) else set()
    return FACT_EVENTS | credits | {t.trigger.name for t in plan.transitions if t.trigger.kind.value == "stripe"}


def _id(value) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def stripe_ids(obj: Mapping) -> tuple[str | None, str | None]:
    """(customer id, subscription id) an event's object names, in either API shape."""
    refs = stripe_refs(obj)
    return refs.customer, refs.subscription


def named_subject(obj: Mapping, link: SubjectLink) -> str | None:
    """The subject an object names itself: client_reference_id (Checkout) or the plan's metadata key on the
    object, or on the subscription details an invoice carries; the first that is a subject id by the rule the
    API applies too (subject_problem)."""
    for value in _names(obj, link):
        if isinstance(value, str) and subject_problem(value) is None:
            return value
    return None


def refused_names(obj: Mapping, link: SubjectLink) -> list[tuple[str, str]]:
    """What an object names where a subject id belongs but is none, each with why (for the gate's log): no subject
    has such an id, so its event waits for a link by its Stripe ids."""
    return [(value, problem) for value in _names(obj, link)
            if isinstance(value, str) and value and (problem := subject_problem(value)) is not None]


def _names(obj: Mapping, link: SubjectLink) -> list:
    """The values in the places an object may name its subject, in order of precedence."""
    candidates = []
    if link.client_reference_id and obj.get("object") == "checkout.session":
        candidates.append(obj.get("client_reference_id"))
    if link.metadata_key:
        parent = obj.get("parent")
        for holder in (obj, obj.get("subscription_details"),
                       parent.get("subscription_details") if isinstance(parent, Mapping) else None):
            metadata = holder.get("metadata") if isinstance(holder, Mapping) else None
            if isinstance(metadata, Mapping):
                candidates.append(metadata.get(link.metadata_key))
    return candidates


@dataclass(frozen=True, slots=True)
class Refs:
    """The Stripe ids one event's object names (None where it names none)."""

    customer: str | None = None
    subscription: str | None = None
    charge: str | None = None
    payment_intent: str | None = None

    @property
    def payments(self) -> tuple[str, ...]:
        """The charge and payment intent ids: links remembered once the event is linked."""
        return tuple(i for i in (self.charge, self.payment_intent) if i)

    @property
    def any(self) -> bool:
        return bool(self.customer or self.subscription or self.charge or self.payment_intent)

    @property
    def only_payments(self) -> bool:
        """Names a charge or payment intent but no customer or subscription (a dispute): only the payment's
        own record says whose it is."""
        return not (self.customer or self.subscription) and bool(self.charge or self.payment_intent)


def stripe_refs(obj: Mapping) -> Refs:
    """What an event's object names, in either API shape. Since 2025-03-31 an invoice no longer carries its
    charge and payment intent (they are on `payments`, when expanded); older shapes still do."""
    kind = obj.get("object")
    customer = _id(obj.get("id")) if kind == "customer" else _id(obj.get("customer"))
    charge = payment_intent = None
    if kind == "charge":
        charge, payment_intent = _id(obj.get("id")), _id(obj.get("payment_intent"))
    elif kind == "payment_intent":
        charge, payment_intent = _id(obj.get("latest_charge")), _id(obj.get("id"))
    elif kind in ("dispute", "refund", "checkout.session"):
        charge, payment_intent = _id(obj.get("charge")), _id(obj.get("payment_intent"))
        invoice = obj.get("invoice")
        if kind == "checkout.session" and payment_intent is None and isinstance(invoice, Mapping):
            # A subscription's Checkout names no payment intent; its first invoice's payment is the one (the gate
            # keeps it on a session that sold credit packs, expanded as Stripe expands `invoice.payments`).
            charge, payment_intent = _invoice_payment(invoice.get("payments"))
    elif kind == "invoice":
        charge, payment_intent = _id(obj.get("charge")), _id(obj.get("payment_intent"))
        if charge is None and payment_intent is None:
            charge, payment_intent = _invoice_payment(obj.get("payments"))
    elif kind == "invoice_payment":
        charge, payment_intent = _payment(obj.get("payment"))
    return Refs(customer, subscription_of(obj), charge, payment_intent)


def _invoice_payment(payments) -> tuple[str | None, str | None]:
    """The charge and payment intent of an invoice's `payments` list (the current shape, when expanded): the
    paid one, else the first."""
    data = payments.get("data") if isinstance(payments, Mapping) else None
    rows = [p for p in data if isinstance(p, Mapping)] if isinstance(data, list) else []
    paid = [p for p in rows if p.get("status") == "paid"] or rows
    return _payment(paid[0].get("payment")) if paid else (None, None)


def _payment(payment) -> tuple[str | None, str | None]:
    if not isinstance(payment, Mapping):
        return None, None
    return _id(payment.get("charge")), _id(payment.get("payment_intent"))
