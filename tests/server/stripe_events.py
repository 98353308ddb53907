"""Realistic Stripe events for tests, signed with the stripe package's own helper."""
from __future__ import annotations

import itertools
import json
import time

import stripe

SECRET = "whsec_test_0123456789abcdef"
_ids = itertools.count(1)


def event(type_: str, obj: dict, created: float, id_: str | None = None) -> dict:
    return {"id": id_ or f"evt_test_{next(_ids)}", "object": "event", "type": type_, "created": int(created),
            "api_version": "2026-10-28", "livemode": False, "data": {"object": obj}}


def sign(body: bytes | str, secret: str = SECRET, timestamp: int | None = None) -> str:
    text = body.decode() if isinstance(body, bytes) else body
    return stripe.WebhookSignature.generate_signature_header(text, secret, timestamp or int(time.time()))


def encode(evt: dict) -> bytes:
    return json.dumps(evt).encode()


def checkout(subject: str, customer: str = "cus_1", subscription: str = "sub_1") -> dict:
    return {"id": "cs_test_1", "object": "checkout.session", "client_reference_id": subject, "customer": customer,
            "subscription": subscription, "mode": "subscription", "metadata": {}}


def subscription(status: str, subject: str | None = None, *, sub_id: str = "sub_1", customer: str = "cus_1",
                 start: float = 1_800_000_000, end: float = 1_802_592_000, price: str = "price_pro_monthly",
                 new_shape: bool = True) -> dict:
    obj = {"id": sub_id, "object": "subscription", "status": status, "customer": customer,
           "metadata": {"plangate_subject": subject} if subject else {},
           "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                                                   "price": {"id": price, "object": "price"}}]}}
    where = obj["items"]["data"][0] if new_shape else obj
    where["current_period_start"], where["current_period_end"] = int(start), int(end)
    return obj


def invoice(status: str, *, sub_id: str = "sub_1", customer: str = "cus_1", inv_id: str = "in_1",
            period_end: float | None = None, new_shape: bool = True, amount: int = 2000) -> dict:
    obj = {"id": inv_id, "object": "invoice", "status": status, "customer": customer, "currency": "eur",
           "amount_due": amount, "amount_paid": amount if status == "paid" else 0}
    if new_shape:
        obj["parent"] = {"type": "subscription_details", "subscription_details": {"subscription": sub_id,
                                                                                 "metadata": {}}}
    else:
        obj["subscription"] = sub_id
    if period_end is not None:
        obj["lines"] = {"object": "list", "data": [{"period": {"start": int(period_end) - 2592000,
                                                               "end": int(period_end)}}]}
    return obj
