"""The meaning checks: a named, ordered list of small rules over a built plan.

Each rule takes the plan and yields findings; the codes it may yield are listed
with it, so the list below is also the catalogue of meaning-level codes.
"""
from __future__ import annotations

import difflib
import zoneinfo
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, cast

from . import _entitlement_rules as entitlement_rules
from . import _stripe_rules as stripe_rules
from ._conditions import COMPARISONS, EACH, Condition, Op, compile_node
from ._durations import DurationError, parse_duration
from ._findings import Finding, Location, Severity
from ._model import ANY, Anchor, Plan, QuotaKind, SubscriptionScope, Transition, TriggerKind, Window
from ._stripe_events import (SUBSCRIPTION_ENDING, about_subscription, is_known_event, names_subscription,
                             starts_subscription)

Rule = Callable[[Plan], Iterator[Finding]]
E, W = Severity.ERROR, Severity.WARNING


def _f(code: str, severity: Severity, message: str, location: Location | None) -> Finding:
    """A finding; a model node built without a location (only in tests) is placed at the top of no file."""
    return Finding(code, severity, message, location or Location(""))


def reserved_names(plan: Plan) -> Iterator[Finding]:
    reserved = plan.status(ANY)
    if reserved:
        yield _f("reserved-name", E, "'any' is reserved for `from: any`; give this status another name",
                 reserved.location)


def unknown_timezone(plan: Plan) -> Iterator[Finding]:
    try:
        zoneinfo.ZoneInfo(plan.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        yield _f("unknown-timezone", E,
                 f"'{plan.timezone}' is not an IANA time zone; use a name like UTC or Europe/Berlin",
                 plan.document.locate(("timezone",)))


def _known(name: str, names: set[str]) -> str:
    """'; did you mean X? known: ...' for a name not among `names` (the suggestion only when one is close)."""
    close = difflib.get_close_matches(name, names, n=1)
    return (f"; did you mean '{close[0]}'? known: " if close else "; known: ") + ", ".join(sorted(names))


def unknown_names(plan: Plan) -> Iterator[Finding]:
    statuses = {s.name for s in plan.statuses}
    meters = {m.name for m in plan.meters}
    known_m = ", ".join(sorted(meters))
    for t in plan.transitions:
        for i, src in enumerate(t.sources):
            if src != ANY and src not in statuses:
                path = ("transitions", t.index, "from") + ((i,) if len(t.sources) > 1 or _is_list(plan, t) else ())
                yield _f("unknown-status", E, f"transition from unknown status '{src}'{_known(src, statuses)}",
                         plan.document.locate(path))
        if t.target not in statuses:
            yield _f("unknown-status", E, f"transition to unknown status '{t.target}'{_known(t.target, statuses)}",
                     plan.document.locate(("transitions", t.index, "to")))
    owners = [(("tiers", t.name), t.quotas) for t in plan.tiers] + [
        (("statuses", s.name), s.quotas) for s in plan.statuses]
    for where, quotas in owners:
        for q in quotas:
            if q.meter not in meters:
                yield _f("unknown-meter", E,
                         f"quota for unknown meter '{q.meter}' in {'.'.join(where)}{_known(q.meter, meters)}",
                         q.location)
    for s in plan.statuses:
        for meter, _ in s.fail_modes:
            if meter not in meters:
                yield _f("unknown-meter", E, f"fail_mode for unknown meter '{meter}'; known meters: {known_m}",
                         plan.document.key_location(("statuses", s.name, "fail_mode", meter)))
    if plan.default_tier is not None and plan.tier(plan.default_tier) is None:
        tiers = ", ".join(t.name for t in plan.tiers) or "none declared"
        yield _f("unknown-tier", E, f"default_tier '{plan.default_tier}' is not a tier; tiers: {tiers}",
                 plan.document.locate(("default_tier",)))


def _is_list(plan: Plan, t: Transition) -> bool:
    data: Any = plan.document.data
    return isinstance(data["transitions"][t.index]["from"], list)


def tier_quotas(plan: Plan) -> Iterator[Finding]:
    uses_tier = [(s, q) for s in plan.statuses for q in s.quotas if q.kind is QuotaKind.TIER]
    if uses_tier and not plan.tiers:
        status, quota = uses_tier[0]
        yield _f("no-tiers", E, f"status '{status.name}' uses the tier's quota, but the plan declares no tiers",
                 quota.location)
    for s in plan.statuses:
        for q in s.quotas:
            if q.kind is not QuotaKind.TIER:
                continue
            for tier in plan.tiers:
                if tier.quotas and all(tq.meter != q.meter for tq in tier.quotas):
                    yield _f("tier-missing-meter", E,
                             f"status '{s.name}' takes the tier's quota for '{q.meter}', but tier '{tier.name}' "
                             f"has none: add quotas.{q.meter} to the tier", tier.location)
    seen: dict[str, str] = {}
    for tier in plan.tiers:
        for i, price in enumerate(tier.prices):
            if price in seen and seen[price] != tier.name:
                yield _f("duplicate-price", E,
                         f"price '{price}' selects both tier '{seen[price]}' and tier '{tier.name}': a price "
                         "selects one tier", plan.document.locate(("tiers", tier.name, "prices", i)))
            seen.setdefault(price, tier.name)


def initial_status(plan: Plan) -> Iterator[Finding]:
    initial = [s for s in plan.statuses if s.initial]
    if not initial:
        yield _f("no-initial", E, "no status is marked `initial: true`: unknown subjects need a status to start in",
                 plan.document.key_location(("statuses",)))
    for extra in initial[1:]:
        yield _f("several-initial", E,
                 f"'{extra.name}' is marked initial, but so is '{initial[0].name}': exactly one status is initial",
                 plan.document.locate(("statuses", extra.name, "initial")))


def durations(plan: Plan) -> Iterator[Finding]:
    for s in plan.statuses:
        for key, parse in (("expires_after", parse_duration), ("expires_at", Anchor.parse)):
            text = s.expires_after_text if key == "expires_after" else s.expires_at_text
            if text is None:
                continue
            try:
                parse(text)
            except DurationError as exc:
                yield _f("invalid-duration", E, f"{key} of '{s.name}': {exc}",
                         plan.document.locate(("statuses", s.name, key)))


def stripe_events(plan: Plan) -> Iterator[Finding]:
    for t in plan.transitions:
        if t.trigger.kind is TriggerKind.STRIPE and not is_known_event(t.trigger.name):
            yield _f("unknown-stripe-event", E,
                     f"'{t.trigger.name}' is not a Stripe event type (check the spelling, e.g. "
                     "invoice.payment_failed)", plan.document.locate(("transitions", t.index, "on")))
        if t.conditions and t.trigger.kind is not TriggerKind.STRIPE:
            yield _f("condition-without-event", E,
                     f"`when` tests fields of a Stripe event's object, but this transition is on {t.trigger}: "
                     "remove `when` or put the transition on a stripe: trigger",
                     plan.document.key_location(("transitions", t.index, "when")))


def subscription_scopes(plan: Plan) -> Iterator[Finding]:
    """`subscription:` says which of the subject's subscriptions a Stripe event may be about: it means nothing on
    another trigger, `other`, `ended` or `any` mean nothing on an event about no subscription, and `ended` nothing
    on a subscription's own events (they tell of its end; an invoice or a Checkout Session can come after it)."""
    for t in plan.transitions:
        if "subscription" not in _keys(plan, t):
            continue
        where = plan.document.key_location(("transitions", t.index, "subscription"))
        scope = t.subscription
        if t.trigger.kind is not TriggerKind.STRIPE:
            yield _f("subscription-without-event", E,
                     f"`subscription` says which Stripe subscription an event is about, but this transition is on "
                     f"{t.trigger}: remove `subscription` or put the transition on a stripe: trigger", where)
        elif scope is not SubscriptionScope.FOLLOWED and not about_subscription(t.trigger.name):
            yield _f("subscription-scope-unused", W,
                     f"{t.trigger.name} is about no subscription (its object is no subscription, invoice or "
                     f"Checkout Session), so `subscription: {scope.value}` "
                     + ("changes nothing" if scope is SubscriptionScope.ANY else "never matches") + ": remove it",
                     where)
        elif scope is SubscriptionScope.ENDED and not names_subscription(t.trigger.name):
            yield _f("subscription-scope-unused", W,
                     f"{t.trigger.name} is the subscription's own news (its end among them), never an event of a "
                     "subscription that had ended already, so `subscription: ended` never matches: only an "
                     "invoice.* or checkout.session.* event can be (an invoice paid after the end)", where)


def _keys(plan: Plan, t: Transition) -> tuple[str, ...]:
    raw = plan.document.data["transitions"][t.index]
    return tuple(raw) if isinstance(raw, dict) else ()


def terminal_statuses(plan: Plan) -> Iterator[Finding]:
    terminal = {s.name for s in plan.statuses if s.terminal}
    for t in plan.transitions:
        for i, src in enumerate(t.sources):
            if src in terminal:
                path = ("transitions", t.index, "from") + ((i,) if _is_list(plan, t) else ())
                yield _f("exit-from-terminal", E,
                         f"'{src}' is terminal, so no transition may leave it; remove it from `from` "
                         "or drop `terminal: true`", plan.document.locate(path))


def ways_out(plan: Plan) -> Iterator[Finding]:
    leaving = {src for t in plan.transitions for src in plan.sources_of(t) if t.target != src}
    for s in plan.statuses:
        if not s.terminal and s.name not in leaving:
            yield _f("no-way-out", E,
                     f"'{s.name}' has no transition to another status: add one, or mark it `terminal: true`",
                     s.location)


def _initial_names(plan: Plan) -> list[str]:
    """Where searches start: every status marked initial (several is reported once, by initial_status)."""
    return [s.name for s in plan.statuses if s.initial]


def reachability(plan: Plan) -> Iterator[Finding]:
    starts = _initial_names(plan)
    if not starts:
        return
    reached = set(starts)
    queue = deque(starts)
    while queue:
        here = queue.popleft()
        for t in plan.transitions:
            if here in plan.sources_of(t) and t.target not in reached and plan.status(t.target):
                reached.add(t.target)
                queue.append(t.target)
    for s in plan.statuses:
        if s.name not in reached:
            yield _f("unreachable-status", E,
                     f"no sequence of transitions from '{starts[0]}' reaches '{s.name}': add a transition "
                     "to it, or remove it", s.location)


def timers(plan: Plan) -> Iterator[Finding]:
    with_timer = {s.name for s in plan.statuses if s.has_timer}
    on_timer: set[str] = set()
    for t in plan.transitions:
        if t.trigger.kind is not TriggerKind.TIMER:
            continue
        for src in plan.sources_of(t):
            on_timer.add(src)
            if src not in with_timer and plan.status(src) and not t.from_any:
                yield _f("timer-without-expiry", E,
                         f"transition on timer from '{src}', but '{src}' has no expires_after or expires_at: "
                         "give the status a timer, or use another trigger",
                         plan.document.locate(("transitions", t.index, "on")))
    for name in sorted(with_timer - on_timer, key=lambda n: [s.name for s in plan.statuses].index(n)):
        status = plan.status(name)
        key = "expires_after" if status is not None and status.expires_after_text is not None else "expires_at"
        yield _f("timer-unused", E,
                 f"'{name}' has {key} but no transition `on: timer` from it: nothing would happen "
                 "when the timer runs out", plan.document.locate(("statuses", name, key)))


def determinism(plan: Plan) -> Iterator[Finding]:
    by_key: dict[tuple[str, str], list[Transition]] = {}
    for t in plan.transitions:
        for src in dict.fromkeys(plan.sources_of(t)):
            by_key.setdefault((src, str(t.trigger)), []).append(t)
    reported: set[tuple[int, int]] = set()
    # A pair's answer, once: `from: any` lists every status, and a pair met in each was compared in each.
    exclusive: set[tuple[int, int]] = set()
    for (src, trigger), ts in by_key.items():
        for i, a in enumerate(ts):
            for b in ts[i + 1:]:
                pair = (a.index, b.index)
                if pair in reported or pair in exclusive:
                    continue
                if not _may_both_match(a, b):
                    exclusive.add(pair)
                    continue
                reported.add(pair)
                yield _f("nondeterministic", E,
                         f"in '{src}', {trigger} matches both this transition (to '{b.target}') and the one "
                         f"at line {a.location.line} (to '{a.target}'): make their `when` conditions exclusive",
                         b.location)


def _may_both_match(a: Transition, b: Transition) -> bool:
    """Two transitions can both match one object unless a condition each must meet (outside `any:` groups)
    on the same field admits no value in common, or they listen to different ones of the followed subscription,
    the others and the ended ones. Paths into lists are never exclusive: two elements may differ."""
    if SubscriptionScope.ANY not in (a.subscription, b.subscription) and a.subscription is not b.subscription:
        return False    # followed, other and ended are apart: an event is of exactly one of them
    for x in _required(a.conditions):
        for y in _required(b.conditions):
            if x.path == y.path and EACH not in x.path and _disjoint(x, y):
                return False
    return True


def _required(nodes) -> list[Condition]:
    """Conditions that must hold for the whole to hold: the top level and `all:` groups, not `any:` ones."""
    out = []
    for node in nodes:
        if isinstance(node, Condition):
            out.append(node)
        elif node.kind == "all":
            out.extend(_required(node.members))
    return out


def _disjoint(x: Condition, y: Condition) -> bool:
    return _one_way_disjoint(x, y) or _one_way_disjoint(y, x)


def _one_way_disjoint(x: Condition, y: Condition) -> bool:
    if x.op in (Op.EQ, Op.IN):
        return all(not _admits(y, v) for v in x.values)
    if x.op is Op.EXISTS:
        if y.op is Op.EXISTS:
            return x.value != y.value
        return x.value is False and y.op in COMPARISONS      # a comparison needs a number there
    if x.op in COMPARISONS and y.op in COMPARISONS:
        lo_x, hi_x = _bounds(x)
        lo_y, hi_y = _bounds(y)
        return lo_x[0] > hi_y[0] or lo_y[0] > hi_x[0] or (
            (lo_x[0] == hi_y[0] and not (lo_x[1] and hi_y[1])) or (lo_y[0] == hi_x[0] and not (lo_y[1] and hi_x[1])))
    return False


def _bounds(c: Condition) -> tuple[tuple[float, bool], tuple[float, bool]]:
    """(lowest, included?), (highest, included?) of the numbers a comparison admits."""
    inf = float("inf")
    v = float(cast(float, c.value))     # a comparison's value is a number (the schema says so)
    return {Op.GT: ((v, False), (inf, False)), Op.GTE: ((v, True), (inf, False)),
            Op.LT: ((-inf, False), (v, False)), Op.LTE: ((-inf, False), (v, True))}[c.op]


def _admits(c: Condition, value: object) -> bool:
    """Whether condition c holds for a field holding value (as the compiled predicate decides)."""
    obj: dict = {}
    here = obj
    for part in c.path[:-1]:
        here = here.setdefault(part, {})
    here[c.path[-1]] = value
    return compile_node(c)(obj)


def billing_period_without_subscription(plan: Plan) -> Iterator[Finding]:
    """A billing_period window needs a subscription's period: find statuses reachable without one."""
    seen = {(name, False) for name in _initial_names(plan)}
    queue = deque(seen)
    while queue:
        here, subscribed = queue.popleft()
        for t in plan.transitions:
            if here not in plan.sources_of(t) or not plan.status(t.target):
                continue
            after = subscribed
            if t.trigger.kind is TriggerKind.STRIPE:
                after = False if t.trigger.name in SUBSCRIPTION_ENDING else (
                    True if starts_subscription(t.trigger.name) else subscribed)
            if (t.target, after) not in seen:
                seen.add((t.target, after))
                queue.append((t.target, after))
    unsubscribed = {name for name, sub in seen if not sub}
    for s in plan.statuses:
        for q in s.quotas:
            if q.window is Window.BILLING_PERIOD and s.name in unsubscribed:
                yield _f("billing-period-without-subscription", E,
                         f"'{s.name}' counts {q.meter} per billing_period, but can be reached without a "
                         "subscription (so without a billing period): use day, week or month", q.location)


def payment_failure_handled(plan: Plan) -> Iterator[Finding]:
    for s in plan.statuses:
        if not s.paying:
            continue
        handles = any(t.trigger.kind is TriggerKind.STRIPE and t.trigger.name == "invoice.payment_failed"
                      and s.name in plan.sources_of(t) for t in plan.transitions)
        if not handles:
            yield _f("unhandled-payment-failure", W,
                     f"paying status '{s.name}' has no transition on stripe:invoice.payment_failed: "
                     "a failed renewal would leave the customer here", s.location)


def paying_quotas(plan: Plan) -> Iterator[Finding]:
    """A paying status that allows work gives each meter a quota (a limit, `tier` or `unlimited`): a meter it
    leaves out is refused to every paying customer, which lint and `serve` otherwise take as meant."""
    for s in plan.statuses:
        if not (s.paying and s.allows):
            continue
        given = {q.meter for q in s.quotas}
        missing = [m.name for m in plan.meters if m.name not in given]
        if missing:
            names = ", ".join(f"'{m}'" for m in missing)
            yield _f("paying-without-quota", W,
                     f"paying status '{s.name}' gives no quota of {names}: every paying customer would be refused "
                     "it (reason no_quota); give a limit, `tier` or `unlimited`", s.location)


def grace_not_skipped(plan: Plan) -> Iterator[Finding]:
    """From a paying status, Stripe events and timers should reach a denying status only through grace.
    Cancellation, a pause, a refund or a dispute, and admin actions are deliberate ends, not failed payments
    (stripe_rules.fails_payment)."""
    for s in plan.statuses:
        if not s.paying:
            continue
        found = _ungraced_way_to_denial(plan, s.name)
        if found:
            first_step, denying = found
            yield _f("grace-skipped", W,
                     f"paying status '{s.name}' can reach denying status '{denying}' without passing "
                     "a grace status: customers would lose access at the first failed payment",
                     first_step.location)


def _ungraced_way_to_denial(plan: Plan, start: str) -> tuple[Transition, str] | None:
    seen = {start}
    queue: deque[tuple[str, Transition | None]] = deque([(start, None)])
    while queue:
        here, first = queue.popleft()
        for t in plan.transitions:
            if not stripe_rules.fails_payment(t) or _cancellation_timer(plan, here, t):
                continue
            target = plan.status(t.target)
            if here not in plan.sources_of(t) or target is None or target.grace or t.target in seen:
                continue
            if not target.allows:
                return first or t, target.name
            seen.add(t.target)
            queue.append((t.target, first or t))
    return None


def _cancellation_timer(plan: Plan, here: str, t: Transition) -> bool:
    """A timer of a status that runs out at the subscription's cancel_at: the end the customer chose."""
    status = plan.status(here)
    return t.trigger.kind is TriggerKind.TIMER and status is not None and status.expires_at is not None \
        and status.expires_at.date == "cancel_at"


def renames(plan: Plan) -> Iterator[Finding]:
    """Old names (renamed_from, retired) must be names the plan no longer has, each mapped once, to a name
    it has."""
    from ._renames import How, Kind, moves

    current = {Kind.STATUS: {s.name for s in plan.statuses}, Kind.TIER: {t.name for t in plan.tiers}}
    first: dict[tuple[Kind, str], Any] = {}     # the first move of each old name
    for move in moves(plan):
        kind, key = move.kind.value, "renamed_from" if move.how is How.RENAMED else "retired"
        if move.old in current[move.kind]:
            code = "renamed-from-existing" if move.how is How.RENAMED else "retired-existing"
            yield _f(code, E, f"{kind} '{move.old}' is still in the plan, so it cannot be an old name ({key}): "
                              f"remove it from {key}, or remove the {kind}", move.location)
        elif (move.kind, move.old) in first:
            earlier = first[(move.kind, move.old)]
            yield _f("renamed-twice", E, f"old {kind} name '{move.old}' is mapped twice (to '{earlier.new}' at line "
                                         f"{earlier.location.line}, and to '{move.new}' here): a stored subject can "
                                         "go one way only", move.location)
        else:
            first[(move.kind, move.old)] = move
        if move.how is How.RETIRED and move.new not in current[move.kind]:
            known = ", ".join(sorted(current[move.kind])) or "none declared"
            section = "statuses" if move.kind is Kind.STATUS else "tiers"
            yield _f(f"unknown-{kind}", E, f"retired {kind} '{move.old}' goes to unknown {kind} '{move.new}'; "
                                           f"known: {known}", plan.document.locate(("retired", section, move.old)))


RULES: tuple[tuple[str, Rule], ...] = (
    ("reserved-name", reserved_names),
    ("unknown-timezone", unknown_timezone),
    ("unknown-status/unknown-meter/unknown-tier", unknown_names),
    ("no-tiers/tier-missing-meter/duplicate-price", tier_quotas),
    ("no-initial/several-initial", initial_status),
    ("invalid-duration", durations),
    ("unknown-stripe-event/condition-without-event", stripe_events),
    ("subscription-without-event/subscription-scope-unused", subscription_scopes),
    ("exit-from-terminal", terminal_statuses),
    ("no-way-out", ways_out),
    ("unreachable-status", reachability),
    ("timer-without-expiry/timer-unused", timers),
    ("nondeterministic", determinism),
    ("billing-period-without-subscription", billing_period_without_subscription),
    ("unhandled-payment-failure", payment_failure_handled),
    ("grace-skipped", grace_not_skipped),
    ("paying-without-quota", paying_quotas),
    ("unknown-field/wrong-value-type", stripe_rules.condition_fields),
    ("unlinkable-event", stripe_rules.linkable_events),
    ("zero-invoice-ends-trial", stripe_rules.zero_invoice_ends_trial),
    ("active-ends-trial", stripe_rules.active_ends_trial),
    ("paying-without-exit", stripe_rules.paying_exits),
    ("renamed-from-existing/retired-existing/renamed-twice", renames),
    *entitlement_rules.RULES,
)

# Findings a `# plangate: ignore[code]` comment on their line may silence: warnings, and what the plan says of
# Stripe's objects (the field lists may lag behind an account's API version). Findings the compiled table
# cannot run with are never silenced.
SILENCEABLE = frozenset({
    "unhandled-payment-failure", "grace-skipped", "unknown-field", "wrong-value-type", "unlinkable-event",
    "zero-invoice-ends-trial", "active-ends-trial", "paying-without-exit", "paying-without-quota",
}) | entitlement_rules.SILENCEABLE


def check(plan: Plan) -> list[Finding]:
    ignores = plan.document.ignores
    return [finding for _, rule in RULES for finding in rule(plan)
            if not (finding.code in SILENCEABLE and finding.code in ignores.get(finding.location.line, ()))]
