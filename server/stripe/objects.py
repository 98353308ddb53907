"""What the gate reads from a Stripe event: whose it is, which Stripe ids it names, and what it paid."""
from __future__ import annotations

from collections.abc import Mapping

from plangate.engine import invoice_subscription
from plangate.policy import SubjectLink

from ..store import Payment

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
    "customer.subscription.deleted", "customer.subscription.paused", "customer.subscription.resumed", "invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed",
    "invoice.payment_action_required", "charge.succeeded",
}) | MONEY_BACK_EVENTS
MAX_SUBJECT = 200


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
        for holder in (obj, obj.get("subscription_details"),
                       (obj.get("parent") or {}).get("subscription_details") if isinstance(obj.get("parent"), Mapping)
                       else None):
            metadata = holder.get("metadata") if isinstance(holder, Mapping) else None
            if isinstance(metadata, Mapping):
                candidates.append(metadata.get(link.metadata_key))
    for value in candidates:
        if isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT and value.isprintable():
            return value
    return None


_PAYMENT_STATUS = {"invoice.paid": "paid", "invoice.payment_succeeded": "paid", "invoice.payment_failed": "failed",
                   "invoice.payment_action_required": "action_required"}


def payment_of(event_type: str, event_id: str, created: float, obj: Mapping, subject: str | None) -> Payment | None:
    """The payments row an invoice event fills."""
    if obj.get("object") != "invoice" or not _id(obj.get("id")):
        return None
    status = _PAYMENT_STATUS.get(event_type) or str(obj.get("status") or "unknown")
    amount = obj.get("amount_paid") if status == "paid" else obj.get("amount_due")
    customer, subscription = stripe_ids(obj)
    return Payment(invoice_id=obj["id"], status=status, created=created, subject=subject, stripe_customer=customer,
                   stripe_subscription=subscription, amount=amount if isinstance(amount, int) else None,
                   currency=obj.get("currency") if isinstance(obj.get("currency"), str) else None,
                   event_id=event_id)
