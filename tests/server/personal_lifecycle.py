"""A subscription's whole life as Stripe sends it (API 2025-03-31 and later), with the person in it: the customer's
email, name, phone and addresses, the card's brand, last digits and fingerprint, where Stripe puts them
(customer.*, payment_method.*, checkout.session.completed's customer_details, invoices' customer_* fields,
charges' billing_details and payment_method_details, customer.updated's previous_attributes).

Checkout into a 7-day trial ($0 invoice paid at once), the trial turning paid (the invoice charged an hour
later), a renewal declined (past_due) and paid on the hosted page after the customer changed email and card, a
partial refund and a dispute, cancellation at period end, and the end. Events of one step share seconds.
"""
from __future__ import annotations

import itertools

DAY, HOUR = 86400, 3600
API_VERSION = "2025-09-30.clover"
_serial = itertools.count(1)


class Person:
    """Who pays, as Stripe has them; every value here must never reach a log or outlive retention."""

    def __init__(self, n: int = 1):
        self.name = f"Jenny Rosenthal-{n}"
        self.email = f"jenny.rosenthal.{n}@example.com"
        self.new_email = f"j.rosenthal.{n}@mailbox.example.org"
        self.phone = f"+1555010{n:04d}"
        self.line1 = f"{510 + n} Townsend Street"
        self.city = "Marysville Springs"
        self.postal_code = f"9{n:04d}"
        self.fingerprint = f"FpJr{n:04d}Xt5EWLLDS7"
        self.ship_name = f"Rosenthal Household {n}"

    def address(self) -> dict:
        return {"city": self.city, "country": "US", "line1": self.line1, "line2": "Apartment 4B",
                "postal_code": self.postal_code, "state": "CA"}

    def needles(self) -> list[str]:
        """What a grep of a store or a log must not find."""
        return [self.name, self.email, self.new_email, self.phone, self.line1, self.city, self.fingerprint,
                self.ship_name, "Apartment 4B", '"last4"', '"billing_details"', '"customer_email"',
                '"customer_name"', '"customer_address"', '"customer_details"']


def _event(type_: str, obj: dict, created: int, previous: dict | None = None) -> dict:
    data = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": f"evt_1Q{next(_serial):08d}PiiLife", "object": "event", "api_version": API_VERSION,
            "created": int(created), "livemode": False, "pending_webhooks": 1, "type": type_, "data": data,
            "request": {"id": f"req_{next(_serial):010d}", "idempotency_key": f"ik-{next(_serial)}"}}


class Lifecycle:
    def __init__(self, subject: str, start: float, n: int = 1, person: Person | None = None):
        self.subject, self.n = subject, n
        self.person = person or Person(n)
        self.t0 = int(start)
        self.customer = f"cus_Pii{n:05d}"
        self.subscription = f"sub_1QPii{n:05d}"
        self.price = "price_pro_monthly"
        self.pm1, self.pm2 = f"pm_1QPiiA{n:05d}", f"pm_1QPiiB{n:05d}"

    # --- objects ---------------------------------------------------------------------------------

    def customer_obj(self, email: str | None = None) -> dict:
        p = self.person
        return {"id": self.customer, "object": "customer", "address": p.address(), "balance": 0,
                "created": self.t0, "currency": "usd", "delinquent": False, "description": f"{p.name} (web signup)",
                "email": email or p.email, "invoice_prefix": "A1B2C3D4", "livemode": False,
                "invoice_settings": {"default_payment_method": self.pm1, "custom_fields": None, "footer": None},
                "metadata": {"plangate_subject": self.subject}, "name": p.name, "phone": p.phone,
                "preferred_locales": ["en-US"], "shipping": {"address": p.address(), "name": p.ship_name,
                                                             "phone": p.phone}, "tax_exempt": "none"}

    def card(self, pm: str, last4: str = "4242", brand: str = "visa") -> dict:
        p = self.person
        return {"id": pm, "object": "payment_method", "allow_redisplay": "always", "created": self.t0,
                "customer": self.customer, "livemode": False, "type": "card",
                "billing_details": {"address": p.address(), "email": p.email, "name": p.name, "phone": p.phone},
                "card": {"brand": brand, "checks": {"address_line1_check": "pass", "address_postal_code_check":
                                                    "pass", "cvc_check": "pass"},
                         "country": "US", "display_brand": brand, "exp_month": 8, "exp_year": 2031,
                         "fingerprint": p.fingerprint, "funding": "credit", "last4": last4,
                         "networks": {"available": [brand], "preferred": None}}, "metadata": {}}

    def subscription_obj(self, status: str, start: int, end: int, *, trial: tuple[int, int] | None = None,
                         cancel_at_period_end: bool = False, ended: int | None = None) -> dict:
        item = {"id": f"si_Pii{self.n:05d}", "object": "subscription_item", "created": self.t0,
                "current_period_start": start, "current_period_end": end, "metadata": {}, "quantity": 1,
                "subscription": self.subscription,
                "price": {"id": self.price, "object": "price", "active": True, "currency": "usd",
                          "product": "prod_Pro", "recurring": {"interval": "month", "interval_count": 1,
                                                               "usage_type": "licensed"},
                          "type": "recurring", "unit_amount": 2000, "nickname": "Pro monthly"}}
        return {"id": self.subscription, "object": "subscription", "application": None,
                "billing_cycle_anchor": start, "cancel_at": end if cancel_at_period_end else None,
                "cancel_at_period_end": cancel_at_period_end, "canceled_at": ended, "collection_method":
                "charge_automatically", "created": self.t0, "currency": "usd", "customer": self.customer,
                "default_payment_method": self.pm1, "description": None, "ended_at": ended,
                "items": {"object": "list", "data": [item], "has_more": False, "total_count": 1,
                          "url": f"/v1/subscription_items?subscription={self.subscription}"},
                "latest_invoice": f"in_Pii{self.n:05d}x", "livemode": False,
                "metadata": {"plangate_subject": self.subject}, "start_date": self.t0, "status": status,
                "trial_start": trial[0] if trial else None, "trial_end": trial[1] if trial else None,
                "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
                "cancellation_details": {"comment": None, "feedback": None,
                                         "reason": "cancellation_requested" if cancel_at_period_end else None}}

    def invoice(self, suffix: str, status: str, reason: str, start: int, end: int, *, amount: int = 2000,
                attempts: int = 0, next_attempt: int | None = None, email: str | None = None) -> dict:
        p = self.person
        paid = status == "paid"
        return {"id": f"in_Pii{self.n:05d}{suffix}", "object": "invoice", "account_country": "US",
                "account_name": "Gated Inc.", "amount_due": amount, "amount_paid": amount if paid else 0,
                "amount_remaining": 0 if paid else amount, "attempt_count": attempts, "attempted": attempts > 0,
                "billing_reason": reason, "collection_method": "charge_automatically", "created": start,
                "currency": "usd", "customer": self.customer, "customer_address": p.address(),
                "customer_email": email or p.email, "customer_name": p.name, "customer_phone": p.phone,
                "customer_shipping": {"address": p.address(), "name": p.ship_name, "phone": p.phone},
                "customer_tax_exempt": "none", "hosted_invoice_url": f"https://invoice.stripe.com/i/x{suffix}",
                "lines": {"object": "list", "has_more": False, "total_count": 1, "data": [{
                    "id": f"il_Pii{self.n:05d}{suffix}", "object": "line_item", "amount": amount,
                    "currency": "usd", "description": f"1 × Pro (at $20.00 / month) for {p.name}",
                    "period": {"start": start, "end": end}, "quantity": 1,
                    "parent": {"type": "subscription_item_details", "subscription_item_details": {
                        "subscription": self.subscription, "subscription_item": f"si_Pii{self.n:05d}"}},
                    "pricing": {"type": "price_details", "price_details": {"price": self.price,
                                                                             "product": "prod_Pro"}}}]},
                "next_payment_attempt": next_attempt, "number": f"A1B2C3D4-{suffix}",
                "parent": {"type": "subscription_details", "subscription_details": {
                    "metadata": {"plangate_subject": self.subject}, "subscription": self.subscription}},
                "period_start": start, "period_end": end, "status": status,
                "status_transitions": {"paid_at": start + HOUR if paid else None, "finalized_at": start},
                "total": amount, "subtotal": amount}

    def charge(self, suffix: str, status: str, amount: int, created: int, *, refunded: int = 0,
               pm: str | None = None, last4: str = "4242") -> dict:
        p = self.person
        return {"id": f"ch_Pii{self.n:05d}{suffix}", "object": "charge", "amount": amount,
                "amount_captured": amount if status == "succeeded" else 0, "amount_refunded": refunded,
                "billing_details": {"address": p.address(), "email": p.email, "name": p.name, "phone": p.phone},
                "captured": status == "succeeded", "created": created, "currency": "usd", "customer": self.customer,
                "description": "Subscription update", "disputed": False, "failure_code":
                "card_declined" if status == "failed" else None, "livemode": False,
                "outcome": {"network_status": "approved_by_network" if status == "succeeded" else
                            "declined_by_network", "type": "authorized" if status == "succeeded" else "issuer_declined",
                            "risk_level": "normal"},
                "paid": status == "succeeded", "payment_intent": f"pi_Pii{self.n:05d}{suffix}",
                "payment_method": pm or self.pm1,
                "payment_method_details": {"type": "card", "card": {
                    "brand": "visa", "country": "US", "exp_month": 8, "exp_year": 2031, "fingerprint": p.fingerprint,
                    "funding": "credit", "last4": last4, "network": "visa"}},
                "receipt_email": p.email, "receipt_url": f"https://pay.stripe.com/receipts/x{suffix}",
                "refunded": refunded == amount, "shipping": {"address": p.address(), "name": p.ship_name},
                "status": status}

    def payment_intent(self, suffix: str, status: str, amount: int, created: int) -> dict:
        return {"id": f"pi_Pii{self.n:05d}{suffix}", "object": "payment_intent", "amount": amount,
                "created": created, "currency": "usd", "customer": self.customer,
                "latest_charge": f"ch_Pii{self.n:05d}{suffix}", "payment_method": self.pm1,
                "receipt_email": self.person.email, "shipping": {"address": self.person.address(),
                                                                 "name": self.person.ship_name}, "status": status}

    def checkout(self, created: int) -> dict:
        p = self.person
        return {"id": f"cs_test_Pii{self.n:05d}", "object": "checkout.session", "amount_subtotal": 0,
                "amount_total": 0, "client_reference_id": self.subject, "created": created, "currency": "usd",
                "customer": self.customer, "customer_creation": "always",
                "customer_details": {"address": p.address(), "email": p.email, "name": p.name, "phone": p.phone,
                                     "tax_exempt": "none", "tax_ids": []},
                "customer_email": p.email, "livemode": False, "metadata": {"plangate_subject": self.subject},
                "mode": "subscription", "payment_status": "no_payment_required", "status": "complete",
                "subscription": self.subscription, "success_url": "https://example.com/welcome",
                "shipping_details": {"address": p.address(), "name": p.ship_name}}

    # --- the life --------------------------------------------------------------------------------

    def events(self) -> list[dict]:
        t0, e, p = self.t0, _event, self.person
        trial_end = t0 + 7 * DAY
        p1_end = trial_end + 30 * DAY
        p2_end = p1_end + 30 * DAY
        trial = (t0, trial_end)
        out = [
            e("customer.created", self.customer_obj(), t0),
            e("payment_method.attached", self.card(self.pm1), t0),
            e("customer.subscription.created", self.subscription_obj("trialing", t0, trial_end, trial=trial), t0 + 1),
            e("invoice.created", self.invoice("a", "draft", "subscription_create", t0, t0, amount=0), t0 + 1),
            e("invoice.finalized", self.invoice("a", "open", "subscription_create", t0, t0, amount=0), t0 + 1),
            e("invoice.paid", self.invoice("a", "paid", "subscription_create", t0, t0, amount=0), t0 + 1),
            e("invoice.payment_succeeded", self.invoice("a", "paid", "subscription_create", t0, t0, amount=0), t0 + 1),
            e("checkout.session.completed", self.checkout(t0 + 2), t0 + 2),
            e("customer.subscription.trial_will_end", self.subscription_obj("trialing", t0, trial_end, trial=trial),
              trial_end - 3 * DAY),
            # The trial ends: active at once, the invoice charged about an hour later.
            e("customer.subscription.updated", self.subscription_obj("active", trial_end, p1_end, trial=trial),
              trial_end, previous={"status": "trialing", "items": {"data": [{"current_period_start": t0,
                                                                                 "current_period_end": trial_end}]}}),
            e("invoice.created", self.invoice("b", "draft", "subscription_cycle", trial_end, p1_end), trial_end),
            e("invoice.finalized", self.invoice("b", "open", "subscription_cycle", trial_end, p1_end),
              trial_end + HOUR),
            e("payment_intent.succeeded", self.payment_intent("b", "succeeded", 2000, trial_end + HOUR),
              trial_end + HOUR),
            e("charge.succeeded", self.charge("b", "succeeded", 2000, trial_end + HOUR), trial_end + HOUR),
            e("invoice.paid", self.invoice("b", "paid", "subscription_cycle", trial_end, p1_end, attempts=1),
              trial_end + HOUR),
            e("invoice.payment_succeeded", self.invoice("b", "paid", "subscription_cycle", trial_end, p1_end,
                                                        attempts=1), trial_end + HOUR),
            # The renewal is declined: past_due, Smart Retries scheduled.
            e("customer.subscription.updated", self.subscription_obj("active", p1_end, p2_end, trial=trial), p1_end,
              previous={"items": {"data": [{"current_period_start": trial_end, "current_period_end": p1_end}]}}),
            e("charge.failed", self.charge("c", "failed", 2000, p1_end + HOUR), p1_end + HOUR),
            e("payment_intent.payment_failed", self.payment_intent("c", "requires_payment_method", 2000,
                                                                   p1_end + HOUR), p1_end + HOUR),
            e("invoice.payment_failed", self.invoice("c", "open", "subscription_cycle", p1_end, p2_end, attempts=1,
                                                     next_attempt=p1_end + 3 * DAY), p1_end + HOUR),
            e("customer.subscription.updated", self.subscription_obj("past_due", p1_end, p2_end, trial=trial),
              p1_end + HOUR, previous={"status": "active"}),
            # The customer changes email and card, and pays on the hosted invoice page.
            e("customer.updated", self.customer_obj(p.new_email), p1_end + 2 * DAY, previous={"email": p.email}),
            e("payment_method.attached", self.card(self.pm2, "0077", "mastercard"), p1_end + 2 * DAY),
            e("charge.succeeded", self.charge("d", "succeeded", 2000, p1_end + 2 * DAY, pm=self.pm2, last4="0077"),
              p1_end + 2 * DAY + 5),
            e("invoice.paid", self.invoice("c", "paid", "subscription_cycle", p1_end, p2_end, attempts=2,
                                           email=p.new_email), p1_end + 2 * DAY + 5),
            e("customer.subscription.updated", self.subscription_obj("active", p1_end, p2_end, trial=trial),
              p1_end + 2 * DAY + 5, previous={"status": "past_due"}),
            # A partial refund, a dispute, then cancellation at the period's end.
            e("charge.refunded", self.charge("b", "succeeded", 2000, trial_end + HOUR, refunded=500),
              p1_end + 5 * DAY),
            e("charge.dispute.created", {"id": f"dp_Pii{self.n:05d}", "object": "dispute", "amount": 2000,
                                         "charge": f"ch_Pii{self.n:05d}d", "currency": "usd",
                                         "created": p1_end + 6 * DAY,
                                         "evidence": {"customer_name": p.name, "customer_email_address": p.email,
                                                      "billing_address": p.line1},
                                         "payment_intent": f"pi_Pii{self.n:05d}d", "reason": "fraudulent",
                                         "status": "needs_response"}, p1_end + 6 * DAY),
            e("customer.subscription.updated", self.subscription_obj("active", p1_end, p2_end, trial=trial,
                                                                     cancel_at_period_end=True),
              p1_end + 10 * DAY, previous={"cancel_at_period_end": False, "cancel_at": None}),
            e("customer.subscription.deleted", self.subscription_obj("canceled", p1_end, p2_end, trial=trial,
                                                                     cancel_at_period_end=True, ended=p2_end),
              p2_end),
        ]
        return out

    def until_live(self) -> list[dict]:
        """The events up to the recovered renewal: the subscription still live at the end."""
        return [evt for evt in self.events() if evt["type"] != "customer.subscription.deleted"]

    @property
    def length(self) -> int:
        """Seconds from the first event to the last."""
        return 7 * DAY + 60 * DAY
