"""The gate's side of entitlements beyond one quota: counting past a limit (credits, then overage, reported to
Stripe later), the subject's credit balance, and admin grants. The decisions are the engine's; this reads and
writes the store for them."""
from __future__ import annotations

import hashlib
import math
import logging
import uuid
from collections.abc import Iterable

from plangate.engine import Decision, Reason, StateTable, SubjectState
from plangate.engine._credits import ANY_GRANT, Grant, GrantSource, balance, spendable_grants
from plangate.engine._entitlements import overage_cap
from plangate.policy import ADMIN_PRIORITY

from .logs import log
from .store import Counted, Reversal, Spend



def overage_identifier() -> str:
    """The meter event identifier of one counted piece of work's overage, new for each count: a retried consume
    is a repeat of its key, which reports nothing (the report is written with the key, in one transaction), and
    a report sent again keeps its identifier (Stripe counts it once). One made of the key would be the same for
    the key's new work once the key is forgotten (its retention), and that work's report was dropped."""
    return "pgo_" + uuid.uuid4().hex


def spend_of(table: StateTable, state: SubjectState, rule, meter: str, enforce: bool, now: float, grants,
             customer: str | None) -> Spend:
    """What the store needs to count past the rule's limit for this subject."""
    limit = rule.limit_for(state)
    cap = overage_cap(rule)
    ceiling = None if not enforce or cap is None else limit + cap
    which = table.spendable(state, meter, now) if rule.credits else ANY_GRANT
    new: tuple[Grant, ...] = ()
    redates: tuple[tuple[str, float], ...] = ()
    if rule.credits and grants is not None:
        _, redates, new = table.tier_grants(state, meter, now, grants)
    declared = table.plan.meter(meter)
    report = declared.stripe_meter if rule.overage is not None and declared is not None else None
    return Spend(limit, ceiling, rule.credits, which, new, report,
                 overage_identifier() if report else None, customer, redates, cap=cap)


def repeat_admitted(decision: Decision, used: int) -> Decision:
    """A repeat of a consume that was counted, where its status still allows work: it was admitted when counted
    (and is billed), so it is answered allowed whatever the quota says now (a limit lowered since, the window
    filled by others since), with the usage its count left (`used`) against today's limit. A caller told no
    would not do work it paid for."""
    if not decision.allowed:
        decision.allowed, decision.reason, decision.retry_after = True, Reason.OK, None
        decision.used = used
        if decision.limit is not None:
            decision.remaining = max(0, decision.limit - used)
    return decision


def decided(table: StateTable, state: SubjectState, meter: str, amount: int, enforce: bool, done: Counted,
            now: float) -> Decision:
    """The decision a spend's outcome gives: the engine's split of the work, against what the store saw (its
    usage and the overage its window had billed)."""
    if done.duplicate and enforce:
        allow = amount - done.credits_used - done.overage
        decision, _ = table.consume(state, meter, amount, done.used - allow - done.overage, now, done.credits_used)
        decision.credits = None     # a repeat: the balance now is not what the first answer said
        decision = repeat_admitted(decision, done.used)
    elif not done.counted:
        decision = table.can_process(state, meter, amount, done.used, now, done.balance or 0, done.billed)
        if enforce and decision.allowed:
            # The store refused work the engine would let through (the window's usage as the transaction saw it,
            # past the ceiling): nothing was counted nor spent, and the answer must not let the work go ahead.
            decision.allowed, decision.reason = False, Reason.QUOTA_EXHAUSTED
            decision.credits_used = decision.overage = 0
            decision.credits = done.balance     # nothing was spent
            decision.retry_after = None if decision.resets_at is None else max(0, math.ceil(decision.resets_at - now))
        return decision
    elif enforce:
        used_before = done.used - (amount - done.credits_used)
        billed = None if done.billed is None else done.billed - done.overage
        decision, _ = table.consume(state, meter, amount, used_before, now, (done.balance or 0) + done.credits_used,
                                    billed)
    else:       # work that already ran (or its repeat): what is left after counting it
        decision = table.can_process(state, meter, 1, done.used, now, done.balance or 0, done.billed)
    decision.credits_used, decision.overage = done.credits_used, done.overage
    if done.balance is not None and not done.duplicate:
        decision.credits = done.balance
    return decision


def balance_of(table: StateTable, state: SubjectState, meter: str, now: float, grants) -> int:
    """The subject's spendable credits of the meter now: its grants and the tier's grant of this window."""
    held, _, new = table.tier_grants(state, meter, now, grants)
    return balance(held + list(new), meter, now, table.spendable(state, meter, now))


class PastExpiry(ValueError):
    """A new grant would have expired already."""


def admin_grant(meter: str, amount: int, now: float, *, reason: str, key: str | None, expires_at: float | None,
                priority: int | None) -> Grant:
    """An admin's grant: its id from the caller's key (granting twice with one key grants once), else new."""
    ident = "admin:" + (hashlib.sha256(key.encode()).hexdigest()[:32] if key else uuid.uuid4().hex)
    return Grant(ident, meter, amount, amount, ADMIN_PRIORITY if priority is None else priority, now, expires_at,
                 GrantSource.ADMIN, reason)


def grant_terms(grant: Grant) -> tuple:
    """What an admin's grant gives (its key's repeat must ask for the same)."""
    return grant.meter, grant.amount, grant.expires_at, grant.priority


def credits_view(table: StateTable, state: SubjectState, now: float, spendable: list[Grant],
                 recent: list[Grant], reversals: Iterable[Reversal] = (), limit: int = 50) -> list[dict]:
    """Per meter with credits: the balance now, and the newest grants (spent and expired ones too) as they stand
    now: the tier's grants ending with their windows as the billing period says them now, and the tier's grants
    of this window (and its rollover) even before a spend makes them in the store, as the balance counts them;
    each with whether the subject may spend it now (the balance counts those that say so), each bought one
    with what refunds and lost disputes of its payment took back of it."""
    taken: dict[str, list[dict]] = {}
    for r in reversals:
        taken.setdefault(r.grant_id, []).append(r.to_dict())
    out = []
    for meter in table.meters:
        if not table.has_credits(meter):
            continue
        held = table.tier_grants(state, meter, now, recent).held
        new = table.tier_grants(state, meter, now, spendable).new     # spendable: the latest tier window's grants
        known = {g.id for g in held}
        shown = sorted([g for g in new if g.id not in known] + [g for g in held if g.meter == meter],
                       key=lambda g: -g.created)[:limit]
        counted = {g.id for g in spendable_grants(shown, meter, now, table.spendable(state, meter, now))}
        out.append({"meter": meter, "balance": balance_of(table, state, meter, now, spendable),
                    "grants": [_with_reversals({**g.to_dict(), "spendable": g.id in counted}, taken)
                               for g in shown]})
    return out


def _with_reversals(grant: dict, taken: dict[str, list[dict]]) -> dict:
    if grant["source"] == GrantSource.PURCHASE.value:
        grant["reversals"] = taken.get(grant["id"], [])
    return grant


def log_grant(subject: str, grant: Grant, actor: str, made: bool) -> None:
    log(logging.INFO, "credits_granted" if made else "credits_grant_repeated", subject=subject, meter=grant.meter,
        amount=grant.amount, grant=grant.id, actor=actor)
