"""Stripe objects as Stripe sends them in the current API shape (2025-03-31 and later: the period on the
subscription's items, an invoice's subscription under parent.subscription_details, no charge or payment intent on
the invoice), and the events around each step of a subscription's life, for the tests of several subscriptions,
charges, refunds and disputes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import stripe_events as se

DAY = 86400
HOUR = 3600


def subscription(ident: str, status: str, *, customer: str, created: float, period: tuple[float, float],
                 subject: str | None = None, price: str = "price_pro_monthly", **extra) -> dict:
    return {
        "id": ident, "object": "subscription", "status": status, "customer": customer, "created": int(created),
        "start_date": int(created), "billing_cycle_anchor": int(created), "cancel_at": None,
        "cancel_at_period_end": False, "canceled_at": None, "ended_at": None, "trial_start": None, "trial_end": None,
        "collection_method": "charge_automatically", "currency": "eur", "livemode": False,
        "latest_invoice": None, "metadata": {"plangate_subject": subject} if subject else {},
        "items": {"object": "list", "has_more": False, "data": [{
            "id": f"si_{ident}", "object": "subscription_item", "quantity": 1, "subscription": ident,
            "current_period_start": int(period[0]), "current_period_end": int(period[1]),
            "price": {"id": price, "object": "price", "currency": "eur", "unit_amount": 2000,
                      "recurring": {"interval": "month", "interval_count": 1}}}]},
        **extra,
    }


def invoice(ident: str, status: str, *, subscription: str, customer: str, period: tuple[float, float],
            reason: str = "subscription_cycle", attempts: int = 0, amount: int = 2000, **extra) -> dict:
    paid = status == "paid"
    return {
        "id": ident, "object": "invoice", "status": status, "customer": customer, "currency": "eur",
        "billing_reason": reason, "amount_due": amount, "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount, "attempt_count": attempts, "attempted": attempts > 0,
        "collection_method": "charge_automatically", "livemode": False,
        "period_start": int(period[0]), "period_end": int(period[0]),
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"subscription": subscription, "metadata": {}}},
        "lines": {"object": "list", "has_more": False, "data": [{
            "id": f"il_{ident}", "object": "line_item", "amount": amount, "currency": "eur",
            "period": {"start": int(period[0]), "end": int(period[1])}}]},
        **extra,
    }


def payment_intent(ident: str, status: str, *, customer: str, charge: str | None, amount: int = 2000) -> dict:
    return {"id": ident, "object": "payment_intent", "status": status, "customer": customer, "amount": amount,
            "amount_received": amount if status == "succeeded" else 0, "currency": "eur", "latest_charge": charge,
            "livemode": False, "metadata": {}, "payment_method": "pm_card_visa"}


def charge(ident: str, *, customer: str | None, payment_intent: str | None, status: str = "succeeded",
           amount: int = 2000, refunded: int = 0, disputed: bool = False) -> dict:
    return {"id": ident, "object": "charge", "status": status, "customer": customer,
            "payment_intent": payment_intent, "amount": amount, "amount_captured": amount if status == "succeeded"
            else 0, "amount_refunded": refunded, "refunded": refunded == amount, "captured": status == "succeeded",
            "paid": status == "succeeded", "disputed": disputed, "currency": "eur", "livemode": False,
            "metadata": {}, "payment_method": "pm_card_visa", "balance_transaction": f"txn_{ident}"}


def dispute(ident: str, status: str, *, charge: str, payment_intent: str | None, amount: int = 2000) -> dict:
    """A dispute names its charge and payment intent, never the customer."""
    return {"id": ident, "object": "dispute", "status": status, "charge": charge, "payment_intent": payment_intent,
            "amount": amount, "currency": "eur", "reason": "fraudulent", "is_charge_refundable": False,
            "livemode": False, "metadata": {}, "balance_transactions": [],
            "evidence_details": {"due_by": None, "has_evidence": False, "past_due": False, "submission_count": 0}}


@dataclass
class Life:
    """The events of one customer's subscriptions, with ids of its own (n keeps customers apart)."""

    n: int
    subject: str
    start: float
    events: list[dict] = field(default_factory=list)
    made: int = 0       # events made so far: each gets the next id, even when a test drops some from `events`

    @property
    def customer(self) -> str:
        return f"cus_{self.n}"

    def sub_id(self, name: str) -> str:
        return f"sub_{name}{self.n}"

    def add(self, type_: str, obj: dict, at: float) -> dict:
        evt = se.event(type_, obj, at, f"evt_{self.n}_{self.made:03d}")
        self.made += 1
        self.events.append(evt)
        return evt

    def subscribe(self, name: str, at: float, *, price: str = "price_pro_monthly", checkout: bool = True) -> None:
        """A new subscription paid at once: everything Stripe sends within that second."""
        sub, period = self.sub_id(name), (at, at + 30 * DAY)
        if checkout:
            self.add("checkout.session.completed", {
                "id": f"cs_{name}{self.n}", "object": "checkout.session", "mode": "subscription",
                "client_reference_id": self.subject, "customer": self.customer, "subscription": sub,
                "payment_status": "paid", "status": "complete", "metadata": {}}, at)
        obj = subscription(sub, "active", customer=self.customer, created=at, period=period, subject=self.subject,
                           price=price)
        self.add("customer.subscription.created", obj, at)
        self.pay(name, f"in_{name}{self.n}_1", at, period, reason="subscription_create")

    def pay(self, name: str, inv: str, at: float, period: tuple[float, float], *, reason: str = "subscription_cycle",
            attempts: int = 1) -> None:
        sub, pi, ch = self.sub_id(name), f"pi_{inv}", f"ch_{inv}"
        self.add("invoice.created", invoice(inv, "draft", subscription=sub, customer=self.customer, period=period,
                                            reason=reason), at)
        self.add("invoice.finalized", invoice(inv, "open", subscription=sub, customer=self.customer, period=period,
                                              reason=reason), at)
        self.add("payment_intent.created", payment_intent(pi, "requires_payment_method", customer=self.customer,
                                                          charge=None), at)
        self.add("charge.succeeded", charge(ch, customer=self.customer, payment_intent=pi), at)
        self.add("payment_intent.succeeded", payment_intent(pi, "succeeded", customer=self.customer, charge=ch), at)
        for type_ in ("invoice.paid", "invoice.payment_succeeded"):
            self.add(type_, invoice(inv, "paid", subscription=sub, customer=self.customer, period=period,
                                    reason=reason, attempts=attempts), at)

    def pay_open(self, name: str, inv: str, at: float, period: tuple[float, float], attempts: int) -> None:
        """The customer pays an open invoice on its hosted page (its payment intent confirmed at last): the payment
        intent and charge, invoice_payment.paid (naming only the invoice and the payment), the invoice paid."""
        sub, pi, ch = self.sub_id(name), f"pi_{inv}", f"ch_{inv}_paid"
        self.add("charge.succeeded", charge(ch, customer=self.customer, payment_intent=pi), at)
        self.add("payment_intent.succeeded", payment_intent(pi, "succeeded", customer=self.customer, charge=ch), at)
        self.add("invoice_payment.paid", {
            "id": f"inpay_{inv}", "object": "invoice_payment", "amount_paid": 2000, "amount_requested": 2000,
            "created": int(at), "currency": "eur", "invoice": inv, "is_default": True, "livemode": False,
            "payment": {"type": "payment_intent", "payment_intent": pi}, "status": "paid",
            "status_transitions": {"canceled_at": None, "paid_at": int(at)}}, at)
        for type_ in ("invoice.paid", "invoice.payment_succeeded"):
            self.add(type_, invoice(inv, "paid", subscription=sub, customer=self.customer, period=period,
                                    attempts=attempts), at)

    def fail(self, name: str, inv: str, at: float, period: tuple[float, float], attempts: int) -> None:
        sub, pi, ch = self.sub_id(name), f"pi_{inv}", f"ch_{inv}_{attempts}"
        if attempts == 1:
            self.add("invoice.finalized", invoice(inv, "open", subscription=sub, customer=self.customer,
                                                  period=period), at)
        self.add("charge.failed", charge(ch, customer=self.customer, payment_intent=pi, status="failed"), at)
        self.add("payment_intent.payment_failed", payment_intent(pi, "requires_payment_method",
                                                                 customer=self.customer, charge=ch), at)
        self.add("invoice.payment_failed", invoice(inv, "open", subscription=sub, customer=self.customer,
                                                   period=period, attempts=attempts,
                                                   next_payment_attempt=int(at + 3 * DAY)), at)

    def status(self, name: str, status: str, at: float, period: tuple[float, float], created: float,
               **extra) -> None:
        obj = subscription(self.sub_id(name), status, customer=self.customer, created=created, period=period,
                           subject=self.subject, **extra)
        kind = "customer.subscription.deleted" if status == "canceled" else "customer.subscription.updated"
        self.add(kind, obj, at)


def resubscribe_during_dunning(n: int, start: float) -> Life:
    """Subscription A renews and its payment fails (past_due); a day later the customer subscribes again (B, paid
    at once); Stripe retries A's invoice twice, failing, and cancels A by dunning two weeks after B."""
    life = Life(n, f"user{n}", start)
    life.subscribe("A", start)
    renewal = start + 30 * DAY
    period2 = (renewal, renewal + 30 * DAY)
    life.status("A", "active", renewal, period2, start)
    life.add("invoice.created", invoice(f"in_A{n}_2", "draft", subscription=life.sub_id("A"), customer=life.customer,
                                        period=period2), renewal)
    life.fail("A", f"in_A{n}_2", renewal + HOUR, period2, 1)
    life.status("A", "past_due", renewal + HOUR, period2, start)
    life.subscribe("B", renewal + DAY)
    life.fail("A", f"in_A{n}_2", renewal + 4 * DAY, period2, 2)
    life.fail("A", f"in_A{n}_2", renewal + 9 * DAY, period2, 3)
    life.status("A", "canceled", renewal + 15 * DAY, period2, start, canceled_at=int(renewal + 15 * DAY),
                ended_at=int(renewal + 15 * DAY))
    life.add("invoice.voided", invoice(f"in_A{n}_2", "void", subscription=life.sub_id("A"), customer=life.customer,
                                       period=period2), renewal + 15 * DAY)
    return life
