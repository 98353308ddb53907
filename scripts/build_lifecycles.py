"""Write the lifecycle corpus, scenarios/lifecycles/<name>/: each a subscription's life as Stripe sends it (every
event around each step, full objects in the current API shape, ties in `created`), and a story that replays the
event files in delivery order and says where the subject must end.

    .venv/bin/python scripts/build_lifecycles.py

The JSON files and stories it writes are the corpus: the tests (plangate test, a running gate in order and
shuffled) and `plangate stripe-simulate` read those files, not this script. It is kept to change the corpus
consistently (an object's shape, a new lifecycle) and is written from Stripe's documentation of trials, invoices,
subscription statuses, pausing, Smart Retries, SCA, cancellation, proration, refunds and disputes.
"""
from __future__ import annotations

import itertools
import json
import shutil
from datetime import datetime, UTC
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "scenarios" / "lifecycles"
API = "2026-10-28.endive"
T0 = 1_798_794_000          # 2027-01-01T09:00:00Z
H, D = 3600, 86400
MONTH = 31 * D
PRICE = {"price_pro_monthly": (2000, "month"), "price_pro_yearly": (20000, "year")}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


class Life:
    """One lifecycle: its customer, subscription and the events Stripe sends, in delivery order."""

    def __init__(self, name: str, subject: str, title: str, about: str):
        self.name, self.subject, self.title, self.about = name, subject, title, about
        self.tag = "".join(ch for ch in name if ch.isalnum())[:24]
        self.customer = f"cus_{self.tag}"
        self.sub_id = f"sub_{self.tag}A"
        self.pm = f"pm_{self.tag}"
        self.events: list[tuple[dict, dict | None]] = []     # (event, expectations after it)
        self.ids = itertools.count(1)
        self.sub: dict = {}
        self.end_at = T0
        self.end_expect: dict = {}

    def nid(self, prefix: str) -> str:
        return f"{prefix}_{self.tag}{next(self.ids):03d}"

    def send(self, type_: str, obj: dict, at: float, previous: dict | None = None, expect: dict | None = None):
        data = {"object": json.loads(json.dumps(obj))}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {"id": self.nid("evt"), "object": "event", "api_version": API, "created": int(at), "data": data,
                 "livemode": False, "pending_webhooks": 1,
                 "request": {"id": self.nid("req") if type_.startswith(("checkout", "customer.created")) else None,
                             "idempotency_key": None}, "type": type_}
        self.events.append((event, expect))

    # --- objects ---------------------------------------------------------------------------------------------

    def customer_obj(self, at: float, default_pm: str | None = None) -> dict:
        return {"id": self.customer, "object": "customer", "address": None, "balance": 0, "created": int(at),
                "currency": "usd", "default_source": None, "delinquent": False, "description": None,
                "email": f"{self.subject}@example.com", "invoice_prefix": self.tag[:8].upper(),
                "invoice_settings": {"custom_fields": None, "default_payment_method": default_pm, "footer": None,
                                     "rendering_options": None},
                "livemode": False, "metadata": {"plangate_subject": self.subject}, "name": self.subject.title(),
                "next_invoice_sequence": 2, "phone": None, "preferred_locales": ["en"], "shipping": None,
                "tax_exempt": "none", "test_clock": None}

    def payment_method(self, at: float, last4: str = "4242") -> dict:
        return {"id": self.pm, "object": "payment_method", "allow_redisplay": "always",
                "billing_details": {"address": {"city": None, "country": "US", "line1": None, "line2": None,
                                                "postal_code": "10001", "state": None},
                                    "email": f"{self.subject}@example.com", "name": self.subject.title(), "phone": None,
                                    "tax_id": None},
                "card": {"brand": "visa", "checks": {"address_line1_check": None, "address_postal_code_check": "pass",
                                                     "cvc_check": "pass"},
                         "country": "US", "display_brand": "visa", "exp_month": 12, "exp_year": 2030,
                         "fingerprint": f"fp{self.tag}", "funding": "credit", "generated_from": None, "last4": last4,
                         "networks": {"available": ["visa"], "preferred": None}, "regulated_status": "unregulated",
                         "three_d_secure_usage": {"supported": True}, "wallet": None},
                "created": int(at), "customer": self.customer, "livemode": False, "metadata": {}, "type": "card"}

    def subscription(self, at: float, status: str, start: float, end: float, *, price: str = "price_pro_monthly",
                     trial: tuple[float, float] | None = None, pm: str | None = None, **extra) -> dict:
        amount, interval = PRICE[price]
        item = {"id": f"si_{self.tag}", "object": "subscription_item", "billing_thresholds": None, "created": int(at),
                "current_period_end": int(end), "current_period_start": int(start), "discounts": [], "metadata": {},
                "price": {"id": price, "object": "price", "active": True, "billing_scheme": "per_unit",
                          "created": T0 - 90 * D, "currency": "usd", "custom_unit_amount": None, "livemode": False,
                          "lookup_key": None, "metadata": {}, "nickname": None, "product": "prod_plangatepro",
                          "recurring": {"interval": interval, "interval_count": 1, "meter": None,
                                        "trial_period_days": None, "usage_type": "licensed"},
                          "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
                          "type": "recurring", "unit_amount": amount, "unit_amount_decimal": str(amount)},
                "quantity": 1, "subscription": self.sub_id, "tax_rates": []}
        sub = {"id": self.sub_id, "object": "subscription", "application": None, "application_fee_percent": None,
               "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
               "billing_cycle_anchor": int(start), "billing_cycle_anchor_config": None,
               "billing_mode": {"flexible": {"proration_discounts": "included"}, "type": "flexible",
                                "updated_at": int(at)},
               "billing_thresholds": None, "cancel_at": None, "cancel_at_period_end": False, "canceled_at": None,
               "cancellation_details": {"comment": None, "feedback": None, "reason": None},
               "collection_method": "charge_automatically", "created": int(at), "currency": "usd",
               "customer": self.customer, "customer_account": None, "days_until_due": None,
               "default_payment_method": pm, "default_source": None, "default_tax_rates": [], "description": None,
               "discounts": [], "ended_at": None,
               "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
               "items": {"object": "list", "data": [item], "has_more": False, "total_count": 1,
                         "url": f"/v1/subscription_items?subscription={self.sub_id}"},
               "latest_invoice": None, "livemode": False, "metadata": {"plangate_subject": self.subject},
               "next_pending_invoice_item_invoice": None, "on_behalf_of": None, "pause_collection": None,
               "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                                    "save_default_payment_method": "on_subscription"},
               "pending_invoice_item_interval": None, "pending_setup_intent": None, "pending_update": None,
               "schedule": None, "start_date": int(at), "status": status, "status_details": None, "test_clock": None,
               "transfer_data": None, "trial_end": int(trial[1]) if trial else None,
               "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
               "trial_start": int(trial[0]) if trial else None}
        sub.update(extra)
        self.sub = sub
        return sub

    def changed(self, **fields) -> tuple[dict, dict]:
        """The subscription after a change, and Stripe's previous_attributes for it (what changed, only)."""
        previous = {k: self.sub.get(k) for k in fields if k != "items" and self.sub.get(k) != fields[k]}
        sub = json.loads(json.dumps(self.sub))
        sub.update(fields)
        if "items" in fields:
            previous["items"] = self.sub["items"]
        self.sub = sub
        return sub, previous

    def period(self, start: float, end: float) -> dict:
        sub = json.loads(json.dumps(self.sub))
        item = sub["items"]["data"][0]
        item["current_period_start"], item["current_period_end"] = int(start), int(end)
        sub["billing_cycle_anchor"] = sub["billing_cycle_anchor"]
        return sub

    def invoice(self, at: float, status: str, amount: int, reason: str, start: float, end: float, *,
                paid_at: float | None = None, attempts: int = 0, next_attempt: float | None = None,
                inv_id: str | None = None, price: str = "price_pro_monthly") -> dict:
        inv_id = inv_id or self.nid("in")
        paid = status == "paid"
        finalized = None if status == "draft" else int(at)
        return {
            "id": inv_id, "object": "invoice", "account_country": "US", "account_name": "Plangate Demo",
            "account_tax_ids": None, "amount_due": amount, "amount_overpaid": 0, "amount_paid": amount if paid else 0,
            "amount_remaining": 0 if paid else amount, "amount_shipping": 0, "application": None,
            "attempt_count": attempts, "attempted": attempts > 0 or paid, "auto_advance": not paid and status != "void",
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None, "provider": None,
                              "status": None},
            "automatically_finalizes_at": int(at + H) if status == "draft" else None, "billing_reason": reason,
            "collection_method": "charge_automatically", "confirmation_secret": None, "created": int(at),
            "currency": "usd", "custom_fields": None, "customer": self.customer, "customer_account": None,
            "customer_address": None, "customer_email": f"{self.subject}@example.com",
            "customer_name": self.subject.title(), "customer_phone": None, "customer_shipping": None,
            "customer_tax_exempt": "none", "customer_tax_ids": [], "default_payment_method": None,
            "default_source": None, "default_tax_rates": [], "description": None, "discounts": [], "due_date": None,
            "effective_at": finalized, "ending_balance": 0 if finalized else None, "footer": None,
            "from_invoice": None, "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_demo/{inv_id}",
            "invoice_pdf": f"https://pay.stripe.com/invoice/acct_demo/{inv_id}/pdf", "issuer": {"type": "self"},
            "last_finalization_error": None, "latest_revision": None,
            "lines": {"object": "list", "data": [{
                "id": f"il_{inv_id[3:]}", "object": "line_item", "amount": amount, "currency": "usd",
                "description": f"1 × Plangate Pro (at ${PRICE[price][0] / 100:.2f} / {PRICE[price][1]})",
                "discount_amounts": [], "discountable": True, "discounts": [], "invoice": inv_id, "livemode": False,
                "metadata": {},
                "parent": {"invoice_item_details": None, "type": "subscription_item_details",
                           "subscription_item_details": {"invoice_item": None,
                                                         "proration": reason == "subscription_update",
                                                         "proration_details": {"credited_items": None},
                                                         "subscription": self.sub_id,
                                                         "subscription_item": f"si_{self.tag}"}},
                "period": {"end": int(end), "start": int(start)}, "pretax_credit_amounts": [],
                "pricing": {"price_details": {"price": price, "product": "prod_plangatepro"},
                            "type": "price_details", "unit_amount_decimal": str(amount)},
                "quantity": 1, "taxes": []}],
                "has_more": False, "total_count": 1, "url": f"/v1/invoices/{inv_id}/lines"},
            "livemode": False, "metadata": {}, "next_payment_attempt": int(next_attempt) if next_attempt else None,
            "number": None if status == "draft" else f"{self.tag[:8].upper()}-{inv_id[-4:]}", "on_behalf_of": None,
            "parent": {"quote_details": None, "type": "subscription_details",
                       "subscription_details": {"metadata": {"plangate_subject": self.subject},
                                                "subscription": self.sub_id}},
            "payment_settings": {"default_mandate": None, "payment_method_options": None,
                                 "payment_method_types": None},
            "period_end": int(at), "period_start": int(at), "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0, "receipt_number": None, "rendering": None, "shipping_cost": None,
            "shipping_details": None, "starting_balance": 0, "statement_descriptor": None, "status": status,
            "status_details": None,
            "status_transitions": {"finalized_at": finalized, "marked_uncollectible_at": None,
                                   "paid_at": int(paid_at or at) if paid else None,
                                   "voided_at": int(at) if status == "void" else None},
            "subtotal": amount, "subtotal_excluding_tax": amount, "test_clock": None, "total": amount,
            "total_discount_amounts": [], "total_excluding_tax": amount, "total_pretax_credit_amounts": [],
            "total_taxes": [], "webhooks_delivered_at": int(at)}

    def payment_intent(self, at: float, amount: int, status: str, charge: str | None, *, error: str | None = None,
                       pi_id: str | None = None) -> dict:
        pi_id = pi_id or self.nid("pi")
        last_error = None if error is None else {
            "charge": charge, "code": error, "decline_code": "insufficient_funds" if error == "card_declined" else None,
            "doc_url": f"https://docs.stripe.com/error-codes/{error.replace('_', '-')}",
            "message": "Your card has insufficient funds." if error == "card_declined" else
            "Your card was declined. This transaction requires authentication.",
            "payment_method": {"id": self.pm, "object": "payment_method", "type": "card"}, "type": "card_error"}
        next_action = {"type": "use_stripe_sdk", "use_stripe_sdk": {"type": "three_d_secure_redirect"}} \
            if status == "requires_action" else None
        return {"id": pi_id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
                "amount_details": {"tip": {}}, "amount_received": amount if status == "succeeded" else 0,
                "application": None, "application_fee_amount": None, "automatic_payment_methods": None,
                "canceled_at": None, "cancellation_reason": None, "capture_method": "automatic",
                "client_secret": f"{pi_id}_secret_demo", "confirmation_method": "automatic", "created": int(at),
                "currency": "usd", "customer": self.customer, "description": "Subscription update",
                "last_payment_error": last_error, "latest_charge": charge, "livemode": False, "metadata": {},
                "next_action": next_action, "on_behalf_of": None, "payment_method": self.pm,
                "payment_method_configuration_details": None, "payment_method_options": {
                    "card": {"installments": None, "mandate_options": None, "network": None,
                             "request_three_d_secure": "automatic"}},
                "payment_method_types": ["card"], "processing": None, "receipt_email": None, "review": None,
                "setup_future_usage": "off_session", "shipping": None, "source": None, "statement_descriptor": None,
                "statement_descriptor_suffix": None, "status": status, "transfer_data": None, "transfer_group": None}

    def charge(self, at: float, amount: int, pi: str, *, failed: bool = False, refunded: int = 0,
               ch_id: str | None = None, disputed: bool = False) -> dict:
        ch_id = ch_id or self.nid("ch")
        return {"id": ch_id, "object": "charge", "amount": amount, "amount_captured": 0 if failed else amount,
                "amount_refunded": refunded, "application": None, "application_fee": None,
                "application_fee_amount": None, "balance_transaction": None if failed else f"txn_{ch_id[3:]}",
                "billing_details": {"address": {"city": None, "country": "US", "line1": None, "line2": None,
                                                "postal_code": "10001", "state": None},
                                    "email": f"{self.subject}@example.com", "name": self.subject.title(),
                                    "phone": None, "tax_id": None},
                "calculated_statement_descriptor": "PLANGATE", "captured": not failed, "created": int(at),
                "currency": "usd", "customer": self.customer, "description": "Subscription update",
                "disputed": disputed, "failure_balance_transaction": None,
                "failure_code": "card_declined" if failed else None,
                "failure_message": "Your card has insufficient funds." if failed else None, "fraud_details": {},
                "livemode": False, "metadata": {}, "on_behalf_of": None,
                "outcome": {"advice_code": "try_again_later" if failed else None, "network_advice_code": None,
                            "network_decline_code": "51" if failed else None,
                            "network_status": "declined_by_network" if failed else "approved_by_network",
                            "reason": "insufficient_funds" if failed else None, "risk_level": "normal",
                            "risk_score": 32,
                            "seller_message": "The bank returned the decline code `insufficient_funds`."
                            if failed else "Payment complete.", "type": "issuer_declined" if failed else "authorized"},
                "paid": not failed, "payment_intent": pi, "payment_method": self.pm,
                "payment_method_details": {"card": {"amount_authorized": None if failed else amount, "brand": "visa",
                                                    "country": "US", "exp_month": 12, "exp_year": 2030,
                                                    "funding": "credit", "last4": "4242", "network": "visa",
                                                    "three_d_secure": None}, "type": "card"},
                "receipt_email": None, "receipt_number": None,
                "receipt_url": f"https://pay.stripe.com/receipts/payment/{ch_id}", "refunded": refunded >= amount > 0,
                "review": None, "shipping": None, "source_transfer": None, "statement_descriptor": None,
                "statement_descriptor_suffix": None, "status": "failed" if failed else "succeeded",
                "transfer_data": None, "transfer_group": None}

    def invoice_payment(self, inv: dict, pi: str, at: float) -> dict:
        """The invoice payment Stripe's invoice_payment.paid carries: it names the invoice and the payment intent
        only (neither the customer nor the subscription)."""
        return {"id": self.nid("inpay"), "object": "invoice_payment", "amount_paid": inv["amount_due"],
                "amount_requested": inv["amount_due"], "created": int(at), "currency": "usd", "invoice": inv["id"],
                "is_default": True, "livemode": False,
                "payment": {"payment_intent": pi, "type": "payment_intent"}, "status": "paid",
                "status_transitions": {"canceled_at": None, "paid_at": int(at)}}

    def dispute(self, charge: dict, at: float) -> dict:
        """A dispute of `charge` opened at `at` (fraudulent, awaiting the merchant's evidence): it names the charge
        and its payment intent, never the customer."""
        return {"id": self.nid("dp"), "object": "dispute", "amount": charge["amount"], "balance_transactions": [],
                "charge": charge["id"], "created": int(at), "currency": "usd", "enhanced_eligibility_types": [],
                "evidence": {"access_activity_log": None, "billing_address": None, "cancellation_policy": None,
                             "customer_email_address": None, "customer_name": None, "product_description": None,
                             "receipt": None, "service_date": None, "uncategorized_text": None},
                "evidence_details": {"due_by": int(at + 21 * D), "has_evidence": False, "past_due": False,
                                     "submission_count": 0},
                "is_charge_refundable": False, "livemode": False, "metadata": {}, "network_reason_code": "10.4",
                "payment_intent": charge["payment_intent"],
                "payment_method_details": {"card": {"brand": "visa", "case_type": "chargeback",
                                                    "network_reason_code": "10.4"}, "type": "card"},
                "reason": "fraudulent", "status": "needs_response"}

    def checkout(self, at: float, *, paid: bool, collect: str = "always") -> dict:
        return {"id": self.nid("cs_test"), "object": "checkout.session", "adaptive_pricing": {"enabled": False},
                "after_expiration": None, "allow_promotion_codes": None, "amount_subtotal": 2000 if paid else 0,
                "amount_total": 2000 if paid else 0, "automatic_tax": {"enabled": False, "liability": None,
                                                                        "provider": None, "status": None},
                "billing_address_collection": None, "cancel_url": "https://example.com/pricing",
                "client_reference_id": self.subject, "consent": None, "created": int(at - 120), "currency": "usd",
                "customer": self.customer, "customer_creation": "always",
                "customer_details": {"address": None, "email": f"{self.subject}@example.com",
                                     "name": self.subject.title(), "phone": None, "tax_exempt": "none",
                                     "tax_ids": []},
                "customer_email": None, "expires_at": int(at + D), "invoice": None, "livemode": False,
                "locale": None, "metadata": {"plangate_subject": self.subject}, "mode": "subscription",
                "payment_intent": None, "payment_method_collection": collect,
                "payment_status": "paid" if paid else "no_payment_required", "status": "complete",
                "submit_type": None, "subscription": self.sub_id,
                "success_url": "https://example.com/welcome", "ui_mode": "hosted", "url": None}

    # --- steps Stripe takes, each with every event it sends ------------------------------------------------

    def card_customer(self, at: float) -> None:
        """The customer made, and its card attached, as Checkout does first."""
        self.send("customer.created", self.customer_obj(at), at)
        self.send("payment_method.attached", self.payment_method(at), at)

    def start_trial(self, at: float, days: int = 7, card: bool = True) -> float:
        """Checkout with a trial: customer, card, subscription trialing, the $0 invoice paid, checkout."""
        trial_end = at + days * D
        self.send("customer.created", self.customer_obj(at), at)
        if card:
            self.send("payment_method.attached", self.payment_method(at), at)
            self.send("customer.updated", self.customer_obj(at, self.pm), at,
                      previous={"invoice_settings": {"default_payment_method": None}})
        sub = self.subscription(at, "trialing", at, trial_end, trial=(at, trial_end), pm=self.pm if card else None)
        if not card:
            sub["trial_settings"]["end_behavior"]["missing_payment_method"] = "pause"
        zero = self.invoice(at, "paid", 0, "subscription_create", at, trial_end)
        sub["latest_invoice"] = zero["id"]
        self.send("customer.subscription.created", sub, at, expect={"status": "paid_trial"})
        self.send("invoice.created", {**zero, "status": "draft", "status_transitions": {
            **zero["status_transitions"], "paid_at": None, "finalized_at": None}}, at)
        self.send("invoice.finalized", {**zero, "status": "open", "status_transitions": {
            **zero["status_transitions"], "paid_at": None}}, at)
        self.send("invoice.paid", zero, at, expect={"status": "paid_trial", "moved": False})
        self.send("invoice.payment_succeeded", zero, at)
        self.send("checkout.session.completed", self.checkout(at, paid=False, collect="always" if card else
                                                              "if_required"), at + 1, expect={"status": "paid_trial"})
        self.send("customer.subscription.trial_will_end", self.sub, trial_end - 3 * D)
        return trial_end

    def subscribe_paid(self, at: float, price: str = "price_pro_monthly") -> float:
        """Checkout without a trial: the first invoice is charged at once, the subscription created active."""
        amount, interval = PRICE[price]
        end = at + (365 * D if interval == "year" else MONTH)
        self.card_customer(at)
        first = self.invoice(at, "paid", amount, "subscription_create", at, end, attempts=1)
        sub = self.subscription(at, "active", at, end, price=price, pm=self.pm, latest_invoice=first["id"])
        self.send("customer.subscription.created", sub, at, expect={"status": "paid"})
        self.charged(at, first, created=True)
        self.send("checkout.session.completed", self.checkout(at, paid=True), at + 1, expect={"status": "paid"})
        return end

    def charged(self, at: float, inv: dict, *, created: bool = False, expect: dict | None = None) -> dict:
        """An invoice charged successfully: payment intent, charge, invoice paid (all in the same second)."""
        amount = inv["amount_due"]
        pi_id, ch_id = self.nid("pi"), self.nid("ch")
        if created:
            self.send("invoice.created", {**inv, "status": "draft", "amount_paid": 0, "amount_remaining": amount},
                      at)
        self.send("invoice.finalized", {**inv, "status": "open", "amount_paid": 0, "amount_remaining": amount}, at)
        self.send("payment_intent.created", self.payment_intent(at, amount, "requires_payment_method", None,
                                                                pi_id=pi_id), at)
        self.send("payment_intent.succeeded", self.payment_intent(at, amount, "succeeded", ch_id, pi_id=pi_id), at)
        charge = self.charge(at, amount, pi_id, ch_id=ch_id)
        self.send("charge.succeeded", charge, at)
        self.send("invoice.paid", inv, at, expect=expect)
        self.send("invoice.payment_succeeded", inv, at)
        return charge

    def declined(self, at: float, inv: dict, attempt: int, next_attempt: float | None,
                 expect: dict | None = None) -> None:
        amount = inv["amount_due"]
        pi_id, ch_id = self.nid("pi"), self.nid("ch")
        failed = {**inv, "status": "open", "attempt_count": attempt, "attempted": True,
                  "next_payment_attempt": int(next_attempt) if next_attempt else None}
        if attempt == 1:
            self.send("invoice.finalized", {**failed, "attempt_count": 0, "attempted": False}, at)
            self.send("payment_intent.created", self.payment_intent(at, amount, "requires_payment_method", None,
                                                                    pi_id=pi_id), at)
        self.send("charge.failed", self.charge(at, amount, pi_id, failed=True, ch_id=ch_id), at)
        self.send("payment_intent.payment_failed", self.payment_intent(
            at, amount, "requires_payment_method", ch_id, error="card_declined", pi_id=pi_id), at)
        self.send("invoice.payment_failed", failed, at, expect=expect)
        if attempt > 1:
            self.send("invoice.updated", failed, at, previous={"attempt_count": attempt - 1})

    def renewal(self, at: float, start: float, end: float, *, expect: dict | None = None) -> dict:
        """A new period (or a trial's end): the subscription moves its period and is `active`, a cycle invoice
        is drafted; Stripe finalizes and charges it about an hour later."""
        sub = self.period(start, end)
        inv = self.invoice(at, "draft", 2000, "subscription_cycle", start, end)
        sub["latest_invoice"], sub["status"] = inv["id"], "active"
        previous = {"items": self.sub["items"], "latest_invoice": self.sub["latest_invoice"]}
        if self.sub["status"] != "active":
            previous["status"] = self.sub["status"]
        self.sub = sub
        self.send("customer.subscription.updated", sub, at, previous=previous, expect=expect)
        self.send("invoice.created", inv, at)
        return inv

    def paid_invoice(self, inv: dict, at: float, attempts: int = 1) -> dict:
        return {**inv, "status": "paid", "amount_paid": inv["amount_due"], "amount_remaining": 0,
                "attempt_count": attempts, "attempted": True, "auto_advance": False, "next_payment_attempt": None,
                "status_transitions": {**inv["status_transitions"], "paid_at": int(at),
                                       "finalized_at": inv["status_transitions"]["finalized_at"] or int(at)},
                "number": inv["number"] or f"{self.tag[:8].upper()}-{inv['id'][-4:]}",
                "effective_at": inv["effective_at"] or int(at), "ending_balance": 0}

    def status(self, at: float, status: str, expect: dict | None = None, **extra) -> None:
        sub, previous = self.changed(status=status, **extra)
        self.send("customer.subscription.updated", sub, at, previous=previous, expect=expect)

    def cancels_at_period_end(self, at: float, end: float, feedback: str, expect: dict) -> None:
        """The customer cancels at the period's end: Stripe sets cancel_at_period_end and cancel_at, the status stays."""
        self.status(at, "active", expect=expect, cancel_at_period_end=True, cancel_at=int(end), canceled_at=int(at),
                    cancellation_details={"comment": None, "feedback": feedback, "reason": "cancellation_requested"})

    def deleted_at(self, end: float) -> None:
        """Stripe deletes the subscription when its period has ended."""
        sub, previous = self.changed(status="canceled", ended_at=int(end))
        self.send("customer.subscription.deleted", sub, end, previous=previous, expect={"status": "canceled"})

    def expires_unpaid(self, at: float, inv: dict, pi_id: str, expect: dict | None = None) -> None:
        """An incomplete subscription's 23 hours run out: incomplete_expired, its payment intent canceled, its
        first invoice voided."""
        self.status(at, "incomplete_expired", expect=expect, ended_at=int(at))
        self.send("payment_intent.canceled", {**self.payment_intent(at, 2000, "canceled", None, pi_id=pi_id),
                                              "canceled_at": int(at), "cancellation_reason": "automatic"}, at)
        self.send("invoice.voided", {**inv, "status": "void", "amount_remaining": 0, "auto_advance": False,
                                     "status_transitions": {**inv["status_transitions"], "voided_at": int(at)}}, at)

    def ends(self, at: float, status: str, **more) -> None:
        self.end_at, self.end_expect = at, {"status": status, **more}

    # --- writing -----------------------------------------------------------------------------------------------

    def write(self) -> None:
        folder = OUT / self.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        lines = ["# A lifecycle of the corpus (scenarios/README.md, Lifecycles): " + self.about,
                 "# Each step replays one event file, as Stripe sends it, in delivery order.",
                 f"name: {json.dumps(self.title)}", f'start: "{iso(self.events[0][0]["created"] - 60)}"',
                 f"subject: {self.subject}", "steps:"]
        for n, (event, expect) in enumerate(self.events, 1):
            file = f"{n:02d}-{event['type']}.json"
            (folder / file).write_text(json.dumps(event, indent=2) + "\n", encoding="utf-8")
            lines.append(f"  - event: {file}")
            if expect:
                lines.append("    expect: " + _flow(expect))
        lines += [f'  - until: "{iso(self.end_at)}"', "    expect: " + _flow(self.end_expect)]
        (folder / "story.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _flow(mapping: dict) -> str:
    def show(v):
        return "true" if v is True else "false" if v is False else str(v)
    return "{" + ", ".join(f"{k}: {show(v)}" for k, v in mapping.items()) + "}"


# --- the lifecycles ------------------------------------------------------------------------------------------

def trial_converts() -> Life:
    life = Life("trial-converts", "tina", "a trial with a card converts: the charge an hour after trial_end pays it",
                "Checkout with a 7-day trial; Stripe pays the $0 trial invoice at once, turns the subscription active "
                "at trial_end and charges the first month an hour later.")
    trial_end = life.start_trial(T0)
    inv = life.renewal(trial_end, trial_end, trial_end + MONTH, expect={"status": "paid_trial", "moved": False})
    life.charged(trial_end + H, life.paid_invoice(inv, trial_end + H), expect={"status": "paid", "moved": True})
    life.ends(trial_end + 3 * H, "paid")
    return life


def trial_declined() -> Life:
    life = Life("trial-declined", "dora", "a trial whose first charge is declined ends in billing_problem",
                "The first charge after the trial is declined; the subscription goes past_due and Smart Retries "
                "will try again.")
    trial_end = life.start_trial(T0)
    inv = life.renewal(trial_end, trial_end, trial_end + MONTH)
    life.declined(trial_end + H, inv, 1, trial_end + H + 3 * D, expect={"status": "billing_problem"})
    life.status(trial_end + H, "past_due")
    life.ends(trial_end + 3 * H, "billing_problem")
    return life


def trial_charge_late() -> Life:
    life = Life("trial-charge-late", "lena", "a first charge that comes late: an update saying active pays nothing",
                "Stripe finalizes the first invoice after the trial three hours late (it waits when an endpoint "
                "failed invoice.created): the trial's timer ends in billing_problem while the subscription says "
                "active; the product edits the subscription's metadata (an update, still active, nothing paid); "
                "then the charge goes through.")
    trial_end = life.start_trial(T0)
    inv = life.renewal(trial_end, trial_end, trial_end + MONTH, expect={"status": "paid_trial", "moved": False})
    edit = trial_end + 150 * 60
    life.status(edit, "active", metadata={"plangate_subject": life.subject, "team": "research"},
                expect={"status": "billing_problem"})
    late = trial_end + 3 * H
    life.charged(late, life.paid_invoice(inv, late), expect={"status": "paid", "moved": True})
    life.ends(late + H, "paid")
    return life


def trial_send_invoice() -> Life:
    life = Life("trial-send-invoice", "ines", "a trial billed by invoice: due in 14 days, paid on the fifth",
                "A subscription made through the API (Checkout only charges automatically) with collection_method "
                "send_invoice (days_until_due 14) and no card: at trial_end Stripe turns it active and an hour "
                "later finalizes the first invoice and emails it (invoice.sent), due in 14 days; nothing is "
                "charged. The customer pays it by bank transfer five days later.")
    trial_end = life.start_trial(T0, card=False)
    terms = {"collection_method": "send_invoice", "days_until_due": 14,
             "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}}}
    life.sub.update(terms)
    life.events = [(e, x) for e, x in life.events if e["type"] != "checkout.session.completed"]
    for event, _ in life.events:        # the subscription and its invoices say so from the start
        obj = event["data"]["object"]
        if obj.get("object") == "subscription":
            obj.update(terms)
        elif obj.get("object") == "invoice":
            obj["collection_method"] = "send_invoice"
    sub = life.period(trial_end, trial_end + MONTH)
    due = trial_end + H + 14 * D
    inv = {**life.invoice(trial_end, "draft", 2000, "subscription_cycle", trial_end, trial_end + MONTH),
           "collection_method": "send_invoice", "auto_advance": True}
    sub["latest_invoice"], sub["status"] = inv["id"], "active"
    previous = {"items": life.sub["items"], "latest_invoice": life.sub["latest_invoice"], "status": "trialing"}
    life.sub = sub
    life.send("customer.subscription.updated", sub, trial_end, previous=previous,
              expect={"status": "paid", "moved": True})
    life.send("invoice.created", inv, trial_end)
    sent = trial_end + H
    open_inv = {**inv, "status": "open", "due_date": int(due), "effective_at": int(sent),
                "number": f"{life.tag[:8].upper()}-{inv['id'][-4:]}",
                "status_transitions": {**inv["status_transitions"], "finalized_at": int(sent)}}
    life.send("invoice.finalized", open_inv, sent)
    life.send("invoice.sent", open_inv, sent, expect={"status": "paid", "moved": False})
    paid_at = trial_end + 5 * D
    paid = {**life.paid_invoice(open_inv, paid_at, attempts=0), "attempted": False}
    life.send("invoice.paid", paid, paid_at, expect={"status": "paid", "moved": False})
    life.send("invoice.payment_succeeded", paid, paid_at)
    life.ends(due + D, "paid")
    return life


def trial_paused_resumed() -> Life:
    life = Life("trial-paused-resumed", "pia", "a trial without a card pauses at its end, and resumes once paid",
                "Checkout without a card (payment_method_collection if_required) and "
                "trial_settings.end_behavior.missing_payment_method = pause; five days later the customer adds a "
                "card and the subscription resumes.")
    trial_end = life.start_trial(T0, card=False)
    life.status(trial_end, "paused", status_details={"paused": {"subscription": {
        "type": "trial_end_without_payment_method"}}})
    life.send("customer.subscription.paused", life.sub, trial_end, expect={"status": "paused"})
    back = trial_end + 5 * D
    life.send("payment_method.attached", life.payment_method(back), back)
    life.send("customer.updated", life.customer_obj(T0, life.pm), back,
              previous={"invoice_settings": {"default_payment_method": None}})
    resume = back + 60
    inv = life.invoice(resume, "paid", 2000, "subscription_update", resume, resume + MONTH, attempts=1)
    life.charged(resume, inv, created=True, expect={"status": "paid", "moved": True})
    sub = life.period(resume, resume + MONTH)
    sub.update(status="active", status_details=None, latest_invoice=inv["id"], billing_cycle_anchor=int(resume),
               default_payment_method=life.pm)
    previous = {"status": "paused", "status_details": life.sub["status_details"], "items": life.sub["items"]}
    life.sub = sub
    life.send("customer.subscription.updated", sub, resume, previous=previous)
    life.send("customer.subscription.resumed", sub, resume, expect={"status": "paid"})
    life.ends(resume + H, "paid")
    return life


def trial_paused_resume_declined() -> Life:
    life = Life("trial-paused-resume-declined", "pablo",
                "a paused trial resumes and its first charge is declined in the same second: grace_period",
                "The trial pauses at its end without a card; five days later the customer adds a card that is "
                "declined: Stripe resumes the subscription (paused -> active) and, its resumption invoice declined, "
                "turns it past_due within the same second. The two updates tie in `created`; their "
                "previous_attributes.status says which came first.")
    trial_end = life.start_trial(T0, card=False)
    life.status(trial_end, "paused", status_details={"paused": {"subscription": {
        "type": "trial_end_without_payment_method"}}})
    life.send("customer.subscription.paused", life.sub, trial_end, expect={"status": "paused"})
    back = trial_end + 5 * D
    life.send("payment_method.attached", life.payment_method(back, last4="0002"), back)
    life.send("customer.updated", life.customer_obj(T0, life.pm), back,
              previous={"invoice_settings": {"default_payment_method": None}})
    resume = back + 60
    inv = life.invoice(resume, "open", 2000, "subscription_update", resume, resume + MONTH)
    life.send("invoice.created", {**inv, "status": "draft"}, resume)
    life.declined(resume, inv, 1, resume + 2 * D, expect={"status": "paused", "moved": False})
    sub = life.period(resume, resume + MONTH)
    sub.update(status="active", status_details=None, latest_invoice=inv["id"], billing_cycle_anchor=int(resume),
               default_payment_method=life.pm)
    previous = {"status": "paused", "status_details": life.sub["status_details"], "items": life.sub["items"]}
    life.sub = sub
    life.send("customer.subscription.updated", sub, resume, previous=previous, expect={"status": "paid"})
    life.send("customer.subscription.resumed", sub, resume, expect={"status": "paid"})
    life.status(resume, "past_due", expect={"status": "grace_period"})
    life.ends(resume + H, "grace_period")
    return life


def smart_retries_recover() -> Life:
    life = Life("smart-retries-recover", "sam", "a declined renewal is recovered by a Smart Retry within grace",
                "A paid subscription's renewal is declined; the subscription goes past_due; two days later a Smart "
                "Retry goes through.")
    end = life.subscribe_paid(T0)
    inv = life.renewal(end, end, end + MONTH)
    life.declined(end + H, inv, 1, end + H + 2 * D, expect={"status": "grace_period"})
    life.status(end + H, "past_due")
    retry = end + H + 2 * D
    life.charged(retry, life.paid_invoice(inv, retry, attempts=2), expect={"status": "paid", "moved": True})
    life.status(retry, "active")
    life.ends(retry + H, "paid")
    return life


_DUNNING_TRIES = (0, 1 * D, 3 * D + 5 * H, 6 * D, 9 * D)     # Smart Retries' attempts, after the first


def _dunning(life: Life) -> tuple[float, dict]:
    """A renewal declined at every Smart Retry: the subject goes through grace into billing_problem."""
    end = life.subscribe_paid(T0)
    inv = life.renewal(end, end, end + MONTH)
    first = end + H
    tries = [first + after for after in _DUNNING_TRIES]
    for n, at in enumerate(tries, 1):
        expect = {"status": "grace_period"} if n == 1 else {"status": "billing_problem"} if n == 3 else None
        life.declined(at, inv, n, tries[n] if n < len(tries) else None, expect=expect)
        if n == 1:
            life.status(at, "past_due")
    return tries[-1], inv


def retries_exhausted_canceled() -> Life:
    life = Life("retries-exhausted-canceled", "cora", "Smart Retries run out and Stripe cancels the subscription",
                "Every retry of the renewal is declined; grace runs out into billing_problem; after the last "
                "retry the account's setting cancels the subscription.")
    last, inv = _dunning(life)
    sub, previous = life.changed(status="canceled", ended_at=int(last), canceled_at=int(last),
                                 cancellation_details={"comment": None, "feedback": None, "reason": "payment_failed"})
    life.send("customer.subscription.deleted", sub, last, previous=previous, expect={"status": "canceled"})
    life.ends(last + H, "canceled")
    return life


def canceled_then_paid_late() -> Life:
    life = Life("canceled-then-paid-late", "pete", "an invoice paid after Stripe canceled its subscription "
                "changes nothing", "Every retry of the renewal is declined and the account's setting cancels the "
                "subscription, leaving its invoice open; three days later the customer pays that invoice on its "
                "hosted page. The subscription stays canceled: the gate records the payment as an ended "
                "subscription's.")
    last, inv = _dunning(life)
    sub, previous = life.changed(status="canceled", ended_at=int(last), canceled_at=int(last),
                                 cancellation_details={"comment": None, "feedback": None, "reason": "payment_failed"})
    life.send("customer.subscription.deleted", sub, last, previous=previous, expect={"status": "canceled"})
    paid_at = last + 3 * D
    pi_id, ch_id = life.nid("pi"), life.nid("ch")
    life.send("payment_intent.succeeded", life.payment_intent(paid_at, 2000, "succeeded", ch_id, pi_id=pi_id),
              paid_at)
    life.send("charge.succeeded", life.charge(paid_at, 2000, pi_id, ch_id=ch_id), paid_at)
    paid = life.paid_invoice(inv, paid_at, attempts=len(_DUNNING_TRIES))
    life.send("invoice_payment.paid", life.invoice_payment(paid, pi_id, paid_at), paid_at)
    life.send("invoice.paid", paid, paid_at, expect={"status": "canceled", "moved": False})
    life.send("invoice.payment_succeeded", paid, paid_at, expect={"status": "canceled", "moved": False})
    life.ends(paid_at + H, "canceled")
    return life


def retries_exhausted_unpaid() -> Life:
    life = Life("retries-exhausted-unpaid", "ulla", "Smart Retries run out and the subscription is left unpaid",
                "Every retry of the renewal is declined; after the last one the account's setting leaves the "
                "subscription unpaid: Stripe charges no more.")
    last, inv = _dunning(life)
    life.status(last, "unpaid", expect={"status": "billing_problem"})
    life.ends(last + H, "billing_problem")
    return life


def cancel_at_period_end() -> Life:
    life = Life("cancel-at-period-end", "carl", "a cancellation at the period's end keeps paid access until then",
                "Ten days into a paid month the customer cancels at the period's end; Stripe sets "
                "cancel_at_period_end and cancel_at, and deletes the subscription when the period ends.")
    end = life.subscribe_paid(T0)
    at = T0 + 10 * D
    life.cancels_at_period_end(at, end, "too_expensive", expect={"status": "paid", "moved": False})
    life.deleted_at(end)
    life.ends(end + H, "canceled")
    return life


def sca_on_renewal() -> Life:
    life = Life("sca-on-renewal", "sara", "a renewal that needs 3-D Secure: grace until the customer authenticates",
                "The renewal's payment needs authentication (invoice.payment_action_required, the subscription "
                "past_due); the customer authenticates the next day.")
    end = life.subscribe_paid(T0)
    inv = life.renewal(end, end, end + MONTH)
    at = end + H
    pi_id = life.nid("pi")
    open_inv = {**inv, "status": "open", "attempt_count": 1, "attempted": True}
    life.send("invoice.finalized", {**open_inv, "attempt_count": 0, "attempted": False}, at)
    life.send("payment_intent.created", life.payment_intent(at, 2000, "requires_payment_method", None, pi_id=pi_id),
              at)
    life.send("payment_intent.requires_action", life.payment_intent(
        at, 2000, "requires_action", None, error="authentication_required", pi_id=pi_id), at)
    life.send("invoice.payment_action_required", open_inv, at, expect={"status": "paid", "moved": False})
    life.status(at, "past_due", expect={"status": "grace_period"})
    done = at + 20 * H
    ch_id = life.nid("ch")
    life.send("payment_intent.succeeded", life.payment_intent(done, 2000, "succeeded", ch_id, pi_id=pi_id), done)
    life.send("charge.succeeded", life.charge(done, 2000, pi_id, ch_id=ch_id), done)
    paid = life.paid_invoice(inv, done)
    life.send("invoice.paid", paid, done, expect={"status": "paid", "moved": True})
    life.send("invoice.payment_succeeded", paid, done)
    life.status(done, "active")
    life.ends(done + H, "paid")
    return life


def incomplete_expired() -> Life:
    life = Life("incomplete-expired", "ivan", "a first payment never completed: incomplete, then incomplete_expired",
                "A subscription created by the API (payment_behavior default_incomplete) whose first payment needs "
                "authentication that never comes; after 23 hours Stripe expires it.")
    at = T0
    life.card_customer(at)
    inv = life.invoice(at, "open", 2000, "subscription_create", at, at + MONTH, attempts=1)
    sub = life.subscription(at, "incomplete", at, at + MONTH, pm=life.pm, latest_invoice=inv["id"])
    life.send("customer.subscription.created", sub, at, expect={"status": "limited_free_trial", "moved": False})
    life.send("invoice.created", {**inv, "status": "draft", "attempt_count": 0, "attempted": False}, at)
    life.send("invoice.finalized", {**inv, "attempt_count": 0, "attempted": False}, at)
    pi_id = life.nid("pi")
    life.send("payment_intent.created", life.payment_intent(at, 2000, "requires_payment_method", None, pi_id=pi_id),
              at)
    life.send("payment_intent.requires_action", life.payment_intent(
        at, 2000, "requires_action", None, error="authentication_required", pi_id=pi_id), at)
    life.send("invoice.payment_action_required", inv, at, expect={"status": "limited_free_trial"})
    later = at + 23 * H
    life.expires_unpaid(later, inv, pi_id)
    life.ends(later + H, "limited_free_trial")
    return life


def upgrade_with_proration() -> Life:
    life = Life("upgrade-with-proration", "uma", "an upgrade to the yearly price is prorated and paid at once",
                "Twelve days into a monthly subscription the customer moves to the yearly price "
                "(proration_behavior always_invoice): a new period on the item and a proration invoice paid at once.")
    life.subscribe_paid(T0)
    at = T0 + 12 * D
    old_items = life.sub["items"]
    life.subscription(T0, "active", at, at + 365 * D, price="price_pro_yearly", pm=life.pm,
                      billing_cycle_anchor=int(at), start_date=int(T0))
    inv = life.invoice(at, "paid", 18_710, "subscription_update", at, at + 365 * D, attempts=1,
                       price="price_pro_yearly")
    life.sub["latest_invoice"] = inv["id"]
    life.send("customer.subscription.updated", life.sub, at, previous={"items": old_items,
                                                                       "billing_cycle_anchor": int(T0)},
              expect={"status": "paid", "moved": False, "tier": "pro"})
    life.charged(at, inv, created=True, expect={"status": "paid"})
    life.ends(at + H, "paid", tier="pro")
    return life


def upgrade_pending_declined() -> Life:
    life = Life("upgrade-pending-declined", "pat", "an upgrade kept pending whose payment is declined is no failed "
                "renewal", "Twelve days into a monthly subscription the product moves the customer to the yearly "
                "price with payment_behavior pending_if_incomplete (proration_behavior always_invoice): the proration "
                "invoice is declined, so Stripe keeps the subscription active on its old price with a pending_update, "
                "voids the invoice when the update expires 23 hours later, and renews the month as usual.")
    end = life.subscribe_paid(T0)
    at = T0 + 12 * D
    inv = life.invoice(at, "open", 18_710, "subscription_update", at, at + 365 * D, price="price_pro_yearly")
    life.send("invoice.created", {**inv, "status": "draft"}, at)
    life.declined(at, inv, 1, None, expect={"status": "paid", "moved": False})
    pending = {"billing_cycle_anchor": int(at), "expires_at": int(at + 23 * H), "trial_end": None,
               "trial_from_plan": None,
               "subscription_items": [{"id": f"si_{life.tag}", "object": "subscription_item",
                                       "price": life.sub["items"]["data"][0]["price"] | {"id": "price_pro_yearly"},
                                       "quantity": 1}]}
    life.status(at, "active", pending_update=pending, latest_invoice=inv["id"],
                expect={"status": "paid", "moved": False})
    expired = at + 23 * H
    sub, previous = life.changed(pending_update=None)
    life.send("customer.subscription.pending_update_expired", sub, expired, expect={"status": "paid"})
    life.send("customer.subscription.updated", sub, expired, previous=previous)
    life.send("invoice.voided", {**inv, "status": "void", "auto_advance": False, "attempt_count": 1,
                                 "attempted": True, "status_transitions": {**inv["status_transitions"],
                                                                           "voided_at": int(expired)}}, expired,
              expect={"status": "paid", "moved": False})
    renewal = life.renewal(end, end, end + MONTH, expect={"status": "paid", "moved": False})
    life.charged(end + H, life.paid_invoice(renewal, end + H), expect={"status": "paid"})
    life.ends(end + 2 * H, "paid", tier="pro")
    return life


def refund_and_cancel() -> Life:
    life = Life("refund-and-cancel", "rita", "a refund alone changes nothing; the cancellation with it ends access",
                "Three days after subscribing the customer asks for their money back: support refunds the charge "
                "(charge.refunded, refund.created) and cancels the subscription at once.")
    life.subscribe_paid(T0)
    charge = next(e["data"]["object"] for e, _ in life.events if e["type"] == "charge.succeeded")
    at = T0 + 3 * D
    re_id = life.nid("re")
    life.send("charge.refunded", {**charge, "amount_refunded": 2000, "refunded": True}, at,
              previous={"amount_refunded": 0, "refunded": False}, expect={"status": "paid", "moved": False})
    refund = {"id": re_id, "object": "refund", "amount": 2000, "balance_transaction": f"txn_{re_id[3:]}",
              "charge": charge["id"], "created": int(at), "currency": "usd", "destination_details": {
                  "card": {"reference": None, "reference_status": "pending",
                           "reference_type": "acquirer_reference_number",
                           "type": "refund"}, "type": "card"},
              "metadata": {}, "payment_intent": charge["payment_intent"], "reason": "requested_by_customer",
              "receipt_number": None, "source_transfer_reversal": None, "status": "succeeded",
              "transfer_reversal": None}
    life.send("refund.created", refund, at)
    sub, previous = life.changed(status="canceled", ended_at=int(at + 30), canceled_at=int(at + 30),
                                 cancellation_details={"comment": "refunded on request", "feedback": None,
                                                       "reason": "cancellation_requested"})
    life.send("customer.subscription.deleted", sub, at + 30, previous=previous, expect={"status": "canceled"})
    life.ends(at + H, "canceled")
    return life


def dispute_lost() -> Life:
    life = Life("dispute-lost", "dina", "a lost dispute takes the year's payment back: chargeback",
                "A yearly subscription's charge is disputed as fraudulent three weeks later (the dispute names the "
                "charge, not the customer); two months later the bank decides against the merchant.")
    life.subscribe_paid(T0, price="price_pro_yearly")
    charge = next(e["data"]["object"] for e, _ in life.events if e["type"] == "charge.succeeded")
    at = T0 + 21 * D
    dp = life.dispute(charge, at)
    life.send("charge.dispute.created", dp, at, expect={"status": "paid", "moved": False})
    life.send("charge.dispute.funds_withdrawn", dp, at)
    life.send("charge.updated", {**charge, "disputed": True}, at, previous={"disputed": False})
    closed = at + 60 * D
    life.send("charge.dispute.closed", {**dp, "status": "lost"}, closed, previous={"status": "needs_response"},
              expect={"status": "chargeback", "moved": True})
    life.ends(closed + H, "chargeback")
    return life


def dispute_lost_then_cancel() -> Life:
    life = Life("dispute-lost-then-cancel", "dora", "after a lost dispute, a cancellation at the period's end "
                "gives nothing back", "A yearly subscription's payment is lost to a dispute (chargeback); a week "
                "later the customer cancels at the period's end: the subscription stays active, and nothing is paid.")
    end = life.subscribe_paid(T0, price="price_pro_yearly")
    charge = next(e["data"]["object"] for e, _ in life.events if e["type"] == "charge.succeeded")
    at = T0 + 20 * D
    dp = life.dispute(charge, at)
    life.send("charge.dispute.created", dp, at)
    life.send("charge.dispute.funds_withdrawn", dp, at)
    closed = at + 60 * D
    life.send("charge.dispute.closed", {**dp, "status": "lost"}, closed, previous={"status": "needs_response"},
              expect={"status": "chargeback", "moved": True})
    cancel = closed + 7 * D
    life.cancels_at_period_end(cancel, end, "other", expect={"status": "chargeback", "moved": False})
    life.deleted_at(end)
    life.ends(end + H, "canceled")
    return life


def abandoned_second_subscription() -> Life:
    life = Life("abandoned-second-subscription", "abel", "an abandoned second subscription does not keep a "
                "canceled customer paid", "The subscription is set to cancel at its period's end; hours before "
                "that end the product's payment form starts another (payment_behavior default_incomplete), which "
                "the customer leaves unpaid. The first ends; the second expires 23 hours after it began.")
    end = life.subscribe_paid(T0)
    at = T0 + 10 * D
    life.cancels_at_period_end(at, end, "switched_service", expect={"status": "paid", "moved": False})
    first = life.sub
    second = end - 6 * H
    life.sub_id = f"sub_{life.tag}B"
    inv = life.invoice(second, "open", 2000, "subscription_create", second, second + MONTH, attempts=0)
    life.subscription(second, "incomplete", second, second + MONTH, pm=life.pm, latest_invoice=inv["id"])
    life.send("customer.subscription.created", life.sub, second, expect={"status": "paid", "moved": False})
    life.send("invoice.created", {**inv, "status": "draft"}, second)
    life.send("invoice.finalized", inv, second)
    pi_id = life.nid("pi")
    life.send("payment_intent.created", life.payment_intent(second, 2000, "requires_payment_method", None,
                                                            pi_id=pi_id), second)
    deleted = {**first, "status": "canceled", "ended_at": int(end)}
    life.send("customer.subscription.deleted", deleted, end, previous={"status": "active"},
              expect={"status": "canceled"})
    expired = second + 23 * H
    life.expires_unpaid(expired, inv, pi_id, expect={"status": "canceled"})
    life.ends(expired + H, "canceled")
    return life


def resubscribe_during_dunning() -> Life:
    life = Life("resubscribe-during-dunning", "remy", "a new subscription during dunning; the old one's end changes "
                "nothing", "The renewal of subscription A fails into billing_problem; the customer subscribes anew "
                "(B, paid at once); two weeks later Stripe's dunning cancels A.")
    end = life.subscribe_paid(T0)
    inv = life.renewal(end, end, end + MONTH)
    life.declined(end + H, inv, 1, end + H + 4 * D, expect={"status": "grace_period"})
    life.status(end + H, "past_due")
    sub_a = life.sub
    new = end + 4 * D
    life.sub_id = f"sub_{life.tag}B"
    first = life.invoice(new, "paid", 2000, "subscription_create", new, new + MONTH, attempts=1)
    life.subscription(new, "active", new, new + MONTH, pm=life.pm, latest_invoice=first["id"])
    # Created active: its first invoice was paid, which ends the dunning (the invoice.paid after it moves nothing).
    life.send("customer.subscription.created", life.sub, new, expect={"status": "paid", "moved": True})
    life.charged(new, first, created=True, expect={"status": "paid", "moved": False})
    life.send("checkout.session.completed", life.checkout(new, paid=True), new + 1, expect={"status": "paid"})
    gone = end + H + 14 * D
    deleted = {**sub_a, "status": "canceled", "ended_at": int(gone), "canceled_at": int(gone),
               "cancellation_details": {"comment": None, "feedback": None, "reason": "payment_failed"}}
    life.send("customer.subscription.deleted", deleted, gone, previous={"status": "past_due"},
              expect={"status": "paid", "moved": False})
    life.ends(gone + H, "paid")
    return life


def checkout_activates_a_second_later() -> Life:
    life = Life("checkout-activates-a-second-later", "nina", "a Checkout without a trial whose subscription turns "
                "active a second after it was created",
                "Checkout in subscription mode, no trial: Stripe creates the subscription incomplete, charges its "
                "first invoice and turns it active; the update and the session's completion come a second after the "
                "creation and the paid invoice (events of one second are folded checkout first).")
    at = T0
    life.card_customer(at)
    first = life.invoice(at, "paid", 2000, "subscription_create", at, at + MONTH, attempts=1)
    life.subscription(at, "incomplete", at, at + MONTH, pm=life.pm, latest_invoice=first["id"])
    life.send("customer.subscription.created", life.sub, at, expect={"status": "limited_free_trial", "moved": False})
    life.charged(at, first, created=True, expect={"status": "limited_free_trial"})
    life.status(at + 1, "active")
    life.send("checkout.session.completed", life.checkout(at + 1, paid=True), at + 1, expect={"status": "paid"})
    life.ends(at + 8 * D, "paid")      # past the trial's 7-day timer, which a paid subscription has not
    return life


def resubscribe_with_a_coupon_during_dunning() -> Life:
    life = Life("resubscribe-with-a-coupon-during-dunning", "omar", "a new subscription with a free first month "
                "ends a billing problem",
                "Every retry of subscription A's renewal is declined and Stripe leaves it unpaid (billing_problem); "
                "the customer subscribes anew (B) with a 100%-off first month: Stripe creates B active, its $0 "
                "first invoice paid at once, with no charge.")
    last, _ = _dunning(life)
    life.status(last, "unpaid", expect={"status": "billing_problem"})
    new = last + D
    life.sub_id = f"sub_{life.tag}B"
    zero = life.invoice(new, "paid", 0, "subscription_create", new, new + MONTH)
    life.subscription(new, "active", new, new + MONTH, pm=life.pm, latest_invoice=zero["id"])
    life.send("customer.subscription.created", life.sub, new, expect={"status": "paid", "moved": True})
    life.send("invoice.created", {**zero, "status": "draft", "status_transitions": {
        **zero["status_transitions"], "paid_at": None, "finalized_at": None}}, new)
    life.send("invoice.finalized", {**zero, "status": "open", "status_transitions": {
        **zero["status_transitions"], "paid_at": None}}, new)
    life.send("invoice.paid", zero, new, expect={"status": "paid", "moved": False})
    life.send("invoice.payment_succeeded", zero, new)
    life.send("checkout.session.completed", life.checkout(new, paid=False), new + 1, expect={"status": "paid"})
    life.ends(new + 8 * D, "paid")
    return life


LIFECYCLES = (trial_converts, trial_declined, trial_charge_late, trial_send_invoice, trial_paused_resumed,
              trial_paused_resume_declined, smart_retries_recover, retries_exhausted_canceled, canceled_then_paid_late,
              retries_exhausted_unpaid, cancel_at_period_end, sca_on_renewal, incomplete_expired,
              upgrade_with_proration, upgrade_pending_declined, refund_and_cancel, dispute_lost,
              dispute_lost_then_cancel, resubscribe_during_dunning,
              abandoned_second_subscription, checkout_activates_a_second_later,
              resubscribe_with_a_coupon_during_dunning)


def main() -> None:
    for build in LIFECYCLES:
        life = build()
        life.write()
        print(f"{life.name}: {len(life.events)} events")


if __name__ == "__main__":
    main()
