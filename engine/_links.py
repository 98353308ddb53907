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
from ._subjects import subject_problem

# Events that carry facts the gate keeps (links, billing periods, payments) even when no transition uses them.
FACT_EVENTS = frozenset({
    "checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
    "customer.subscription.deleted", "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
    "invoice.payment_action_required",
})


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
