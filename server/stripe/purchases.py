"""What a paid Checkout bought, which its webhook leaves out: its line items (which credit packs, how many) and, for
a subscription's Checkout, the payment of its first invoice (a refund of that payment takes back what it bought).
Asked of Stripe and kept in the stored payload, so that every fold of the event reads the same."""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace

from plangate.engine import StripeEvent
from plangate.engine._credits import CreditRules, session_payment

from ..logs import log
from .api import StripeApi, StripeUnavailable


async def what_was_bought(api: StripeApi, credits: CreditRules, event: StripeEvent,
                          payload: str) -> tuple[StripeEvent, str]:
    """The event and its payload with the session's line items, and (a subscription's Checkout that sold a pack)
    its invoice's payments, as Stripe expands `invoice.payments`. A repeat delivery answers `duplicate` before it
    gets here with nothing asked. When Stripe does not know the session the event grants nothing; when it does
    not know the invoice, the packs are granted without a payment to find them by (both logged). Without
    STRIPE_SECRET_KEY (serve refuses a plan that sells packs without it) StripeUnavailable, as when Stripe refuses
    the key: stored as granting nothing, the purchase could never be granted, its redeliveries being duplicates."""
    obj = event.object
    session = obj.get("id")
    if not api.configured:
        raise StripeUnavailable("STRIPE_SECRET_KEY is not set: what a Checkout bought is read from Stripe")
    items = await api.line_items(session) if isinstance(session, str) else None
    if items is None:
        log(logging.WARNING, "credit_pack_unread", event_id=event.id, session=session,
            why="a paid Checkout whose line items Stripe does not know: it grants no credits")
        return event, payload
    obj = dict(obj, line_items=items)
    invoice = obj.get("invoice")
    if session_payment(obj) is None and isinstance(invoice, str) and _sells_packs(credits, items):
        payments = await api.invoice_payments(invoice)
        if payments is None:
            log(logging.WARNING, "credit_pack_payment_unread", event_id=event.id, session=session, invoice=invoice,
                why="Stripe does not know the invoice: its packs are granted, but a refund cannot take them back")
        else:
            obj["invoice"] = {"id": invoice, "object": "invoice", "payments": payments}
    body = json.loads(payload)
    body["data"]["object"] = obj
    return replace(event, object=obj), json.dumps(body, separators=(",", ":"))


def _sells_packs(credits: CreditRules, items: Mapping) -> bool:
    lines = items.get("data")
    for line in lines if isinstance(lines, list) else ():
        price = line.get("price") if isinstance(line, Mapping) else None
        price = price.get("id") if isinstance(price, Mapping) else price
        if isinstance(price, str) and price in credits.packs:
            return True
    return False
