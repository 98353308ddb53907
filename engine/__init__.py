"""What the plan means: a compiled, immutable state table answering decisions and transitions.

Pure code: no I/O beyond loading the plan, no clock (`now` is always an argument).
"""
from ._credits import AbsurdPurchase
from ._decision import Decision, Reason, override
from ._history import Step, advance, event_order, refold_from, replay, tie_group
from ._state import SubjectState
from ._subjects import MAX_SUBJECT, subject_problem
from ._table import StateTable, UnknownMeter, UnknownStatus, compile_file, compile_plan
from ._triggers import AdminAction, Outcome, StripeEvent, TimerFired, Trigger
from ._usage import UsageBook
from ._windows import LAST_INSTANT, Span, billing_span
from ._stripe import billing_period, invoice_subscription, price_ids
from ._subscriptions import Subscription, followed, subscription_of
from ._links import (FACT_EVENTS, MONEY_BACK_EVENTS, Refs, named_subject, refused_names, relevant_events, stripe_ids,
                     stripe_refs)

__all__ = [
    "FACT_EVENTS", "LAST_INSTANT", "MAX_SUBJECT", "AbsurdPurchase", "AdminAction", "Decision", "Step", "advance",
    "event_order", "refold_from", "replay", "tie_group", "Outcome",
    "Reason", "Span", "StateTable", "StripeEvent", "SubjectState", "TimerFired", "Trigger", "UnknownMeter",
    "UnknownStatus", "UsageBook", "billing_period", "billing_span", "compile_file", "compile_plan",
    "invoice_subscription", "named_subject", "override", "price_ids", "refused_names", "relevant_events",
    "stripe_ids", "subject_problem",
    "MONEY_BACK_EVENTS", "Refs", "Subscription", "followed", "stripe_refs", "subscription_of",
]
