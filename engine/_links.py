"""Whose a Stripe event is: the pure rules the gate links events to subjects by, shared by the server's webhook
and `plangate test` (so that a story fails where the live gate would leave an event pending).

An event is linked to a subject when its object names the subject (client_reference_id, or the plan's metadata
key), else by the Stripe ids it carries (customer, subscription) once an earlier event linked them. Which fields
link which object types is the table policy/data/stripe_objects.json ("links") ships; the gate reads the
customer and subscription kinds today.
"""
from __future__ import annotations

from collections.abc import Mapping

from plangate.policy import Plan, SubjectLink

from ._stripe import invoice_subscription

# Events that carry facts the gate keeps (links, billing periods, payments) even when no transition uses them.
FACT_EVENTS = frozenset({
    "checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
    "invoice.payment_action_required",
})
MAX_SUBJECT = 200


def relevant_events(plan: Plan) -> frozenset[str]:
    """The event types the gate reads at all; any other is answered `ignored` without being linked."""
    return FACT_EVENTS | {t.trigger.name for t in plan.transitions if t.trigger.kind.value == "stripe"}


def _id(value) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def stripe_ids(obj: Mapping) -> tuple[str | None, str | None]:
    """(customer id, subscription id) an event's object names, in either API shape."""
    kind = obj.get("object")
    customer = _id(obj.get("customer"))
    subscription = None
    if kind == "subscription":
        subscription = _id(obj.get("id"))
    elif kind == "checkout.session":
        subscription = _id(obj.get("subscription"))
    elif kind == "invoice":
        subscription = invoice_subscription(obj)
    elif kind == "customer":
        customer = _id(obj.get("id"))
    return customer, subscription


def named_subject(obj: Mapping, link: SubjectLink) -> str | None:
    """The subject an object names itself: client_reference_id (Checkout) or the plan's metadata key on the
    object, or on the subscription details an invoice carries."""
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
    for value in candidates:
        if isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT and value.isprintable():
            return value
    return None
