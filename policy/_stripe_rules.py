"""Lint rules that know how Stripe behaves: conditions checked against the fields Stripe's objects really
have, and transitions tried on objects shaped like the ones Stripe sends at the moments plans get wrong
(the $0 invoice of a trial, a subscription turning active at trial end before it is charged, a pause).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import _stripe_fields as fields
from ._conditions import COMPARISONS, PREVIOUS, Condition, Op, compile_all, leaves
from ._findings import Finding, Severity
from ._model import Plan, Transition, TriggerKind

E, W = Severity.ERROR, Severity.WARNING
SUBSCRIPTION_EVENTS = ("customer.subscription.created", "customer.subscription.updated")

# Objects as Stripe sends them at the moments the rules ask about (only the fields a condition could use to
# tell them apart from the real thing are filled in).
_T0, _T1 = 1_800_000_000, 1_800_604_800
_ITEMS = {"object": "list", "data": [{"object": "subscription_item", "current_period_start": _T1,
                                      "current_period_end": _T1 + 2_592_000, "quantity": 1,
                                      "price": {"object": "price", "id": "price_x", "type": "recurring"}}]}


def _subscription(status: str, **extra) -> dict:
    return {"object": "subscription", "id": "sub_x", "customer": "cus_x", "status": status, "livemode": False,
            "collection_method": "charge_automatically", "cancel_at_period_end": False, "cancel_at": None,
            "canceled_at": None, "ended_at": None, "pause_collection": None, "trial_start": _T0, "trial_end": _T1,
            "latest_invoice": "in_x", "metadata": {}, "items": _ITEMS, **extra}


# The invoice Stripe creates, marks paid and reports (invoice.paid, invoice.payment_succeeded) when a trial starts.
ZERO_TRIAL_INVOICE = {
    "object": "invoice", "id": "in_x", "customer": "cus_x", "status": "paid", "billing_reason": "subscription_create",
    "collection_method": "charge_automatically", "currency": "usd", "amount_due": 0, "amount_paid": 0,
    "amount_remaining": 0, "amount_overpaid": 0, "subtotal": 0, "total": 0, "attempted": True, "attempt_count": 0,
    "livemode": False, "next_payment_attempt": None, "period_start": _T0, "period_end": _T0,
    "parent": {"type": "subscription_details", "quote_details": None,
               "subscription_details": {"subscription": "sub_x", "metadata": {}}},
    "lines": {"object": "list", "data": [{"object": "line_item", "amount": 0,
                                          "period": {"start": _T0, "end": _T1}}]},
    "status_transitions": {"paid_at": _T0, "finalized_at": _T0},
}
TRIALING = _subscription("trialing")
ACTIVE_AT_TRIAL_END = _subscription("active")     # trialing -> active at trial_end; charged about an hour later
PAUSED = _subscription("paused", pause_collection=None)
UNPAID = _subscription("unpaid")
PAST_DUE = _subscription("past_due")
CANCELED = _subscription("canceled", ended_at=_T1, canceled_at=_T1)
# Events that end or suspend a subscription by a decision (a person's, or the bank's in a dispute), not by a
# failed payment: grace is for failed payments, so these may deny access at once.
DELIBERATE_ENDS = frozenset({
    "customer.subscription.deleted", "customer.subscription.paused", "charge.refunded", "charge.dispute.created",
    "charge.dispute.closed", "charge.dispute.funds_withdrawn", "charge.dispute.updated",
})


def _f(code: str, severity: Severity, message: str, location) -> Finding:
    return Finding(code, severity, message, location)


def matches(t: Transition, obj: Mapping) -> bool:
    return compile_all(t.conditions)(obj)


def _on(t: Transition, *events: str) -> bool:
    return t.trigger.kind is TriggerKind.STRIPE and t.trigger.name in events


# --- conditions against Stripe's fields ---------------------------------------------------------------------

def condition_fields(plan: Plan) -> Iterator[Finding]:
    """Each `when` path must exist in the event's object (or, under previous_attributes, which only *.updated
    events carry, in the same object), and each value must be one its field can hold."""
    for t in plan.transitions:
        if t.trigger.kind is not TriggerKind.STRIPE or not t.conditions:
            continue
        object_type = fields.object_of(t.trigger.name)
        if object_type is None:
            continue
        for c in leaves(t.conditions):
            path = c.path
            if path[0] == PREVIOUS:
                if not t.trigger.name.endswith(".updated"):
                    yield _f("unknown-field", E,
                             f"{c.dotted}: Stripe sends previous_attributes only with *.updated events, never "
                             f"with {t.trigger.name}", c.location)
                    continue
                path = path[1:]
                if not path:
                    yield _f("unknown-field", E, f"{c.dotted}: name a field of previous_attributes, e.g. "
                                                 f"{PREVIOUS}.status", c.location)
                    continue
            try:
                kind = fields.field_type(object_type, path)
            except fields.NoSuchField as exc:
                yield _f("unknown-field", E, f"{c.dotted}: {exc} (the {object_type} object that "
                                             f"{t.trigger.name} carries, {fields.source()})", c.location)
                continue
            problem = _wrong_value(c, kind)
            if problem:
                yield _f("wrong-value-type", E, f"{c.dotted}: {problem}", c.location)


def _wrong_value(c: Condition, kind: fields.FieldType) -> str | None:
    if kind.kind == "any" or c.op is Op.EXISTS:
        return None
    if c.op in COMPARISONS:
        if kind.kind not in ("integer", "number"):
            return f"{c.op.value} compares numbers, but the field is {kind}"
        return None
    for value in c.values:
        if value is None:
            if not kind.nullable:
                return "the field is never null; to test that it is missing, write {exists: false}"
            continue
        wrong = _value_problem(value, kind)
        if wrong:
            return wrong
    return None


def _value_problem(value: object, kind: fields.FieldType) -> str | None:
    shown = f"'{value}'" if isinstance(value, str) else repr(value).lower() if isinstance(value, bool) else str(value)
    if kind.kind == "enum":
        if value not in kind.values:
            return f"{shown} is not a value Stripe gives this field; it is {kind}"
        return None
    ok = {"string": isinstance(value, str) and True,
          "integer": isinstance(value, int) and not isinstance(value, bool),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "boolean": isinstance(value, bool)}.get(kind.kind)
    if ok is None:
        return f"the field is {'an ' if kind.kind == 'object' else 'a '}{kind.kind}, never equal to {shown}"
    if not ok:
        return f"the field holds {_words(kind.kind)}, never {shown}"
    return None


def _words(kind: str) -> str:
    return {"string": "text", "integer": "whole numbers", "number": "numbers", "boolean": "true or false"}[kind]


# --- whose event ---------------------------------------------------------------------------------------------

def linkable_events(plan: Plan) -> Iterator[Finding]:
    """The gate applies an event to the subject its object links to (a customer, subscription, charge or
    payment intent it has seen): an event whose object carries none of these can never move anyone."""
    for t in plan.transitions:
        if t.trigger.kind is not TriggerKind.STRIPE:
            continue
        object_type = fields.object_of(t.trigger.name)
        if object_type is None or fields.links(object_type):
            continue
        yield _f("unlinkable-event", W,
                 f"{t.trigger.name} carries a {object_type}, which names no customer, subscription, charge or "
                 "payment intent: the gate cannot tell whose event it is, so this transition never fires",
                 plan.document.locate(("transitions", t.index, "on")))


# --- trials ---------------------------------------------------------------------------------------------------

def trial_statuses(plan: Plan) -> set[str]:
    """Statuses marked `trial: true`, and those a subscription event enters when Stripe says trialing (but
    not when it says active)."""
    marked = {s.name for s in plan.statuses if s.trial}
    entered = {t.target for t in plan.transitions if _on(t, *SUBSCRIPTION_EVENTS)
               and matches(t, TRIALING) and not matches(t, ACTIVE_AT_TRIAL_END)}
    return marked | entered


def _leaving_trial(plan: Plan) -> Iterator[tuple[str, Transition]]:
    trials = trial_statuses(plan)
    for t in plan.transitions:
        for src in dict.fromkeys(plan.sources_of(t)):
            if src in trials and t.target not in trials and plan.status(t.target):
                yield src, t


def zero_invoice_ends_trial(plan: Plan) -> Iterator[Finding]:
    for src, t in _leaving_trial(plan):
        if _on(t, "invoice.paid", "invoice.payment_succeeded") and matches(t, ZERO_TRIAL_INVOICE):
            yield _f("zero-invoice-ends-trial", W,
                     f"{t.trigger} leaves trial status '{src}' on any paid invoice, but Stripe pays a $0 invoice "
                     "(billing_reason subscription_create) the moment a trial starts: add a condition such as "
                     "`when: {amount_paid: {gt: 0}}`", t.location)


def active_ends_trial(plan: Plan) -> Iterator[Finding]:
    for src, t in _leaving_trial(plan):
        target = plan.status(t.target)
        if _on(t, "customer.subscription.updated") and target is not None and target.paying and \
                matches(t, ACTIVE_AT_TRIAL_END):
            yield _f("active-ends-trial", W,
                     f"'{src}' moves to paying status '{t.target}' when the subscription turns active, but Stripe "
                     "turns a trial active at trial_end and charges about an hour later: move on invoice.paid "
                     "(with amount_paid > 0) or invoice.payment_failed instead", t.location)


# --- paying statuses must follow Stripe's ends ------------------------------------------------------------------

_EXITS = (
    ("a pause", ("customer.subscription.paused", "customer.subscription.updated"), PAUSED),
    ("status unpaid", ("customer.subscription.updated",), UNPAID),
    ("customer.subscription.deleted", ("customer.subscription.deleted",), CANCELED),
)


def paying_exits(plan: Plan) -> Iterator[Finding]:
    for s in plan.statuses:
        if not s.paying:
            continue
        missing = [what for what, events, sample in _EXITS
                   if not any(_on(t, *events) and s.name in plan.sources_of(t) and t.target != s.name
                              and matches(t, sample) for t in plan.transitions)]
        if missing:
            yield _f("paying-without-exit", W,
                     f"paying status '{s.name}' has no transition on {', '.join(missing)}: Stripe stops "
                     "charging then, and the customer would keep paid access", s.location)


def fails_payment(t: Transition) -> bool:
    """Whether a transition may be a failed payment's doing (what grace is for), rather than a deliberate end:
    a pause, a cancellation, a refund or a dispute, or a subscription event only about such a status."""
    if t.trigger.kind is TriggerKind.ADMIN:
        return False
    if t.trigger.kind is TriggerKind.TIMER:
        return True
    if t.trigger.name in DELIBERATE_ENDS:
        return False
    if t.trigger.name in SUBSCRIPTION_EVENTS:
        return matches(t, PAST_DUE) or matches(t, UNPAID)
    return True
