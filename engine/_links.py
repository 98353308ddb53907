"""The Stripe ids an event's object names, by which the gate links it to its subject.

A subscription, an invoice and a Checkout Session name their customer and subscription. Charges, payment
intents, refunds and disputes name a charge or a payment intent, and (but for disputes) mostly the customer;
a dispute names only its charge and payment intent. The gate remembers the charge and payment intent ids of
every event it links, so that a later event naming only one of them (a dispute) finds its subject; where it
has not seen them, Stripe's API says whose the charge is (server/stripe/links.py).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._subscriptions import subscription_of


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


def _id(value) -> str | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


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
