"""What the gate reads from a Stripe event: whose it is, which Stripe ids it names, and what it paid."""
from __future__ import annotations

from collections.abc import Mapping

from plangate.engine import FACT_EVENTS, named_subject, stripe_ids

from ..store import Payment

# Whose an event is, decided by the engine's rules (the same `plangate test` applies): re-exported here.
__all__ = ["FACT_EVENTS", "named_subject", "payment_of", "stripe_ids"]
# Subscription statuses after which Stripe sends nothing more about the subscription.
ENDED = frozenset({"canceled", "incomplete_expired"})

_PAYMENT_STATUS = {"invoice.paid": "paid", "invoice.payment_succeeded": "paid", "invoice.payment_failed": "failed",
                   "invoice.payment_action_required": "action_required"}


def payment_of(event_type: str, event_id: str, created: float, obj: Mapping, subject: str | None) -> Payment | None:
    """The payments row an invoice event fills."""
    if obj.get("object") != "invoice" or not isinstance(obj.get("id"), str) or not obj["id"]:
        return None
    status = _PAYMENT_STATUS.get(event_type) or str(obj.get("status") or "unknown")
    amount = obj.get("amount_paid") if status == "paid" else obj.get("amount_due")
    customer, subscription = stripe_ids(obj)
    return Payment(invoice_id=obj["id"], status=status, created=created, subject=subject, stripe_customer=customer,
                   stripe_subscription=subscription, amount=amount if isinstance(amount, int) else None,
                   currency=obj.get("currency") if isinstance(obj.get("currency"), str) else None,
                   event_id=event_id)
