"""What of a Stripe event the gate keeps once its raw payload has served its time: the facts the gate reads.

The facts are derived, not listed alone. The event's object is read by the gate's own readers (linking,
payments, and the state table's apply from every status of the plan, so every condition and fact the compiled
plan looks at) through a view that records each field they touch; the reduced object keeps exactly those,
plus FACTS: what Stripe says about a subscription's life, its money and its links, never about a person, so
that a reader added later or a plan that reads more still finds them. A reduction that would change what any
reader answers is refused (the payload stays as it came, and the caller says so).
"""
from __future__ import annotations

import json
from typing import cast
from collections.abc import Mapping

from plangate.engine import StateTable, StripeEvent, SubjectState, stripe_refs
from plangate.engine._reversals import money_back
from plangate.policy import SubjectLink

from .objects import named_subject, payment_of

# Paths (lists are crossed: "items.data.price.id" is every item's price id) of what Stripe objects say about a
# subscription's life, its money and its links. A reference field keeps the id alone when Stripe expanded it
# into an object (a customer object carries an email and a name).
FACTS = (
    # whose, and which Stripe objects it links
    "id", "object", "livemode", "customer.id", "subscription.id", "client_reference_id", "mode", "status",
    "payment_status", "invoice.id", "charge.id", "payment_intent.id", "latest_invoice.id", "latest_charge.id",
    "parent.type", "parent.subscription_details.subscription.id", "subscription_details.subscription.id",
    # a subscription's life and its dates
    "created", "start_date", "billing_cycle_anchor", "current_period_start", "current_period_end",
    "trial_start", "trial_end", "cancel_at", "cancel_at_period_end", "canceled_at", "ended_at",
    "cancellation_details.reason", "pause_collection.behavior", "pause_collection.resumes_at",
    "trial_settings.end_behavior.missing_payment_method", "collection_method", "quantity",
    "plan.id", "plan.interval", "plan.interval_count", "price.id",
    "items.data.id", "items.data.quantity", "items.data.current_period_start", "items.data.current_period_end",
    "items.data.price.id", "items.data.price.recurring.interval", "items.data.price.recurring.interval_count",
    "items.data.plan.id", "items.data.plan.interval", "items.data.plan.interval_count",
    # money: invoices, charges, refunds, disputes
    "paid", "amount", "amount_due", "amount_paid", "amount_remaining", "amount_refunded", "total", "subtotal",
    "currency", "billing_reason", "attempted", "attempt_count", "next_payment_attempt", "period_start",
    "period_end", "due_date", "status_transitions.paid_at", "refunded", "disputed", "captured", "reason",
    "failure_code", "outcome.type",
    "lines.data.id", "lines.data.amount", "lines.data.quantity", "lines.data.period.start", "lines.data.period.end",
    "lines.data.price.id", "lines.data.pricing.price_details.price", "lines.data.subscription.id",
    "lines.data.parent.subscription_item_details.subscription",
    # a one-time Checkout's line items (the gate asks Stripe for them): which credit packs, how many
    "line_items.object", "line_items.data.price.id", "line_items.data.quantity", "line_items.data.amount_total",
)
# The event around its object: what the fold reads of it (event_order, StripeEvent) and what says its shape.
ENVELOPE = ("id", "object", "type", "created", "api_version", "livemode")


class _Keep:
    """The fields of a value to keep: `whole` (a reader looked at all of it), else `fields`, each with what to
    keep of it. A scalar is kept whenever its field is; a list keeps each element as its node says."""

    __slots__ = ("fields", "whole")

    def __init__(self):
        self.fields: dict[str, _Keep] = {}
        self.whole = False

    def child(self, key: str) -> _Keep:
        node = self.fields.get(key)
        if node is None:
            node = self.fields[key] = _Keep()
        return node

    def merged(self, other: _Keep) -> _Keep:
        out = _Keep()
        out.whole = self.whole or other.whole
        for key in self.fields.keys() | other.fields.keys():
            a, b = self.fields.get(key), other.fields.get(key)
            out.fields[key] = a.merged(b) if a is not None and b is not None else cast(_Keep, a or b)  # one is
        return out


def _paths(paths) -> _Keep:
    root = _Keep()
    for path in paths:
        node = root
        for part in path.split("."):
            node = node.child(part)
    return root


class _Seen(Mapping):
    """A read-only view of a JSON object that records, in its _Keep, every field read through it. Iterating
    it or asking its size (what comparing or copying it does) marks it read whole."""

    __slots__ = ("_data", "_keep")

    def __init__(self, data: dict, keep: _Keep):
        self._data, self._keep = data, keep

    def __getitem__(self, key):
        value = self._data[key]
        return _seen(value, self._keep.child(key))

    def get(self, key, default=None):
        return self[key] if key in self._data else default

    def __contains__(self, key) -> bool:
        if key in self._data:
            self._keep.child(key)
            return True
        return False

    def __iter__(self):
        self._keep.whole = True
        return iter(self._data)

    def __len__(self) -> int:
        self._keep.whole = True
        return len(self._data)


class _SeenList(list):
    """A JSON array as a list (readers test isinstance(..., list)), its elements seen through one _Keep."""

    __slots__ = ()


def _seen(value, keep: _Keep):
    if isinstance(value, dict):
        return _Seen(value, keep)
    if isinstance(value, list):
        return _SeenList(_seen(v, keep) for v in value)
    return value


def _prune(value, keep: _Keep):
    if keep.whole:
        return value
    if isinstance(value, dict):     # in the object's own order: the same payload reduces to the same text
        fields = keep.fields
        return {key: _prune(v, fields[key]) for key, v in value.items() if key in fields}
    if isinstance(value, list):
        return [_prune(v, keep) for v in value]
    return value


class Reducer:
    """Reduces stored event payloads for one compiled plan (its subject link, conditions and facts)."""

    def __init__(self, table: StateTable):
        self.table = table
        self.link: SubjectLink = table.plan.subject_link
        key = self.link.metadata_key
        linked = (f"metadata.{key}", f"subscription_details.metadata.{key}",
                  f"parent.subscription_details.metadata.{key}") if key else ()
        self.facts = _paths(FACTS + linked)
        self._states = tuple(SubjectState("-", status, plan_version=table.version) for status in table.statuses)

    def readings(self, event: StripeEvent) -> tuple:
        """What every reader of the gate answers about an event: its links, its payment, and what it does
        from each status of the plan."""
        obj = event.object
        out: list = [stripe_refs(obj), named_subject(obj, self.link),
                     payment_of(event.type, event.id, event.created, obj, None)]
        out.extend(self.table.apply(state, event, event.created) for state in self._states)
        out.append(self.table.credits.purchased(event.type, obj, event.created))
        out.append(money_back(event.type, event.id, obj, event.created))
        return tuple(out)

    def keep(self, event: StripeEvent) -> _Keep:
        """What of the event's object (and of its previous attributes: the same fields) the readers touch, with
        FACTS."""
        seen = _Keep()
        previous = None if event.previous is None else _Seen(dict(event.previous), seen)
        self.readings(StripeEvent(event.type, _Seen(dict(event.object), seen), event.id, event.created, previous))
        return seen.merged(self.facts)

    def reduce(self, payload: str, *, strict: bool = True) -> str | None:
        """The payload with only what the gate reads of it. None when it is no event the gate stored, or (strict)
        when reducing it would change what a reader answers; not strict (an erasure), it is reduced even so."""
        try:
            body = json.loads(payload)
            event = StripeEvent.of(body)
        except (ValueError, TypeError, KeyError):
            return None
        try:
            keep = self.keep(event)
            reduced = self._reduced(body, keep)
            same = not strict or self.readings(StripeEvent.of(reduced)) == self.readings(event)
        except Exception:       # noqa: BLE001 - a reader failing on an odd payload: strict, it is kept as it came
            if strict:
                return None
            reduced, same = self._reduced(body, self.facts), True
        return json.dumps(reduced, separators=(",", ":")) if same else None

    @staticmethod
    def _reduced(body: dict, keep: _Keep) -> dict:
        data = body["data"]
        reduced = {key: body[key] for key in ENVELOPE if key in body}
        reduced["data"] = {"object": _prune(data["object"], keep)}
        if isinstance(data.get("previous_attributes"), dict):   # a partial object: the same fields kept
            reduced["data"]["previous_attributes"] = _prune(data["previous_attributes"], keep)
        return reduced
