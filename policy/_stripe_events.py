"""What the plan checks know of Stripe's event types (the list ships as data)."""
from __future__ import annotations

import functools
from pathlib import Path

_DATA = Path(__file__).resolve().parent / "data" / "stripe_event_types.txt"

# Events after which a subject has no live subscription.
SUBSCRIPTION_ENDING = frozenset({"customer.subscription.deleted"})


@functools.cache
def event_types() -> frozenset[str]:
    lines = _DATA.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def is_known_event(name: str) -> bool:
    return name in event_types()


def starts_subscription(name: str) -> bool:
    """Events that only exist for a subject with a subscription (or one being created)."""
    return (name == "checkout.session.completed"
            or (name.startswith("customer.subscription.") and name not in SUBSCRIPTION_ENDING)
            or name.startswith("invoice."))


def about_subscription(name: str) -> bool:
    """Events whose object can name a subscription: the subscription itself, an invoice, a Checkout Session."""
    return name.startswith(("customer.subscription.", "invoice.", "checkout.session."))


def names_subscription(name: str) -> bool:
    """Events whose object names a subscription without being it (an invoice, a Checkout Session): the only ones
    that can be of a subscription that has ended already (a subscription's own events tell of its end)."""
    return name.startswith(("invoice.", "checkout.session."))
