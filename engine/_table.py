"""The compiled state table: built once from a valid plan, then asked many times.

Every answer takes `now` (Unix seconds) as an argument; the table has no clock.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from zoneinfo import ZoneInfo

from plangate.policy import (Access, Anchor, Anchoring, ExistingSubscribers, FailMode, How, Location, NameMap, Plan,
                             PlanError, QuotaKind, Status, SubscriptionScope, Tier, Window, check_plan,
                             compile_conditions, load_plan, version_of)

from ._credits import CreditRules, Spendable, TierGrants, cancelled_at, last_window, period_grants, windowed
from ._decision import MOST, Decision, Reason
from ._entitlements import OVERAGE_UNBOUNDED, Features, beyond
from ._state import SubjectState, compiled_replace
from ._stripe import billing_period, paid_periods, price_ids, price_items, subscription_dates
from ._subscriptions import Aside, Subscription, followed, live_addons, subscription_of, take_in
from ._triggers import Outcome, StripeEvent, TimerFired, Trigger
from ._versions import PLAN_TRIGGER, Pinned, former_names, kept_tiers, renewed
from ._windows import (AnniversaryClock, BillingClock, CalendarClock, FixedClock, LifetimeClock, Span,
                       billing_span)


# Enum members are slow to look up on the class (a descriptor call each on Python 3.11): bind them once.
_OK, _EXHAUSTED = Reason.OK, Reason.QUOTA_EXHAUSTED
_LIFETIME_CLOCK = LifetimeClock()
ONE_OFF_INVOICE = "none (a one-off invoice)"     # what an invoice of no subscription is about, in reasons
# The most a scaled limit says (a plan's limit times a trait or quantity, plus add-ons): no window counts that much,
# and with a window's overage added it still fits the stores' 64-bit integers.
SCALED_LIMIT_MAX = MOST
# A state entering a status: (state, status, since, timer_due, plan_version) -> the new state.
_entered = compiled_replace(SubjectState, "status", "since", "timer_due", "plan_version")


class UnknownMeter(ValueError):
    """The meter is not declared in the plan."""


class UnknownStatus(ValueError):
    """The status is not declared in the plan."""


class _Rule:
    """What one status allows of one meter for one tier, with the plan line that says so."""

    __slots__ = ("allows", "deny_reason", "limit", "window", "clock", "name", "fail_mode",
                 "scaled", "units", "adds", "beyond", "overage", "credits")

    def __init__(self, allows, deny_reason, limit, window, clock, name, fail_mode):
        self.allows = allows
        self.deny_reason = deny_reason
        self.limit = limit          # None: unlimited
        self.window = window        # policy.Window; LIFETIME for unlimited
        # The table's CalendarClock for day/week/month or FixedClock for minute/hour (shared by its rules), an
        # AnniversaryClock or a BillingClock of the rule's own, or the lifetime's.
        self.clock = clock if clock is not None else \
            BillingClock() if window is Window.BILLING_PERIOD else _LIFETIME_CLOCK
        self.name = name
        self.fail_mode = fail_mode
        self.scaled = False         # the limit depends on the subject: per unit, or add-ons add to it
        self.units = None           # policy PerUnit: the limit is per unit of the quantity or a trait
        self.adds: dict[str, int] = {}      # add-on -> what it adds per unit of its quantity
        self.beyond = False         # past the limit, credits or overage may let work through
        self.overage: int | None = None     # how much overage a window allows (None: none)
        self.credits = False        # the meter has credits to spend past the limit

    def limit_for(self, state: SubjectState) -> int | None:
        """The limit for this subject: per unit of its quantity or trait (1 when unknown), plus its add-ons'
        (None: no limit). What every count and spend holds the subject to, as its decision does."""
        limit = self.limit
        if not self.scaled or limit is None:
            return limit
        if self.units is not None:
            units = state.quantity if self.units.trait is None else state.trait(self.units.trait)
            limit *= 1 if units is None else units
        if self.adds and state.addons:
            for name, quantity in state.addons:
                limit += self.adds.get(name, 0) * quantity
        return min(limit, SCALED_LIMIT_MAX)

    def span(self, state: SubjectState, now: float) -> Span:
        return self.clock.span_for(state, now)


class _Edge:
    __slots__ = ("matches", "target", "rule", "why", "moved", "followed", "other", "ended")

    def __init__(self, matches, source, target, rule, why, scope=SubscriptionScope.FOLLOWED):
        self.matches = matches        # the transition's `when`, compiled once: object -> bool
        self.target = target
        self.rule = rule
        self.why = why
        self.moved = f"{source} -> {target}: {why}"   # the reason of the move, built once, not per transition
        # Which events it hears: about the followed subscription (or none), about another one of the subject's,
        # of one that had ended (followed or not). An event is of exactly one of the three.
        self.followed = scope in (SubscriptionScope.FOLLOWED, SubscriptionScope.ANY)
        self.other = scope in (SubscriptionScope.OTHER, SubscriptionScope.ANY)
        self.ended = scope in (SubscriptionScope.ENDED, SubscriptionScope.ANY)

    def hears(self, aside: Aside | None) -> bool:
        if aside is None:
            return self.followed
        return self.ended if aside.ended is not None else self.other


class StateTable:
    """Immutable after construction; compile_plan() is the way to build one.

    `older`: earlier versions of the plan (by version) that stored subjects may still be on, and
    `deployed_at`: when this plan became the active one. Subjects on an older version keep its tier quotas
    as each tier's `existing_subscribers` says. `superseded`: when each older version last stopped being the
    active one (a later deploy of something else moves nothing for subscribers who renewed since); a version
    not in it counts from deployed_at. `between`: versions deployed since the oldest of `older` that no subject is
    on: read only for the names each tier had (a plan maps a rename one step back)."""

    def __init__(self, plan: Plan, older: Mapping[str, Plan] | None = None, deployed_at: float = 0.0,
                 superseded: Mapping[str, float] | None = None, between: Iterable[Plan] = ()):
        self.plan = plan
        self.version = version_of(plan)
        if plan.initial is None:
            raise PlanError(())     # check_plan refuses a plan without an initial status (no-initial)
        self.initial = plan.initial.name
        self.meters = tuple(m.name for m in plan.meters)
        self.statuses = tuple(s.name for s in plan.statuses)
        self.actions = tuple(sorted({t.trigger.name for t in plan.transitions if t.trigger.kind.value == "admin"}))
        self.tz = ZoneInfo(plan.timezone)
        self._calendars = {w: CalendarClock(w, self.tz) for w in (Window.DAY, Window.WEEK, Window.MONTH)}
        self._clocks: dict[Window, CalendarClock | FixedClock] = {
            **self._calendars, Window.MINUTE: FixedClock(60), Window.HOUR: FixedClock(3600)}
        self.features = Features(plan)
        # Tiers whose subscribers on an older version keep its quotas and credits (by version, then tier).
        # The versions this one follows (a state on any other, a newer one a node not yet following its deploy
        # meets, keeps its version: see _stamped).
        self._older = frozenset(older or ()) - {self.version}
        former = former_names(plan, (*(older or {}).values(), *between))
        kept = {v: k for v, k in ((v, kept_tiers(plan, old, former)) for v, old in (older or {}).items()
                                  if v != self.version) if k}
        # Meters some tier grants credits of each window, in this version or one its subscribers keep.
        self._tier_credit_meters = frozenset(g.meter for t in plan.tiers for g in t.credits) | frozenset(
            g.meter for tiers in kept.values() for t in tiers.values() for g in t.credits)
        self._credit_meters = frozenset(c.meter for c in plan.credits) | self._tier_credit_meters
        self._addon_prices = {p: a.name for a in plan.addons for p in a.prices}
        self.credits = CreditRules(plan)
        self._period_grants = {(t.name, g.meter): g for t in plan.tiers for g in t.credits}
        self._price_tier = {p: t.name for t in plan.tiers for p in t.prices}
        self._expires = {s.name: s.expires_after for s in plan.statuses}
        self._anchors: dict[str, Anchor] = {s.name: s.expires_at for s in plan.statuses if s.expires_at}
        self._grace = frozenset(s.name for s in plan.statuses if s.grace)
        self._rules = {s.name: self._status_rules(s) for s in plan.statuses}
        self._edges = self._compile_edges()
        self._names = NameMap.of(plan)
        self._tier_names = frozenset(t.name for t in plan.tiers)
        self._uses_tier = {s.name: any(q.kind is QuotaKind.TIER for q in s.quotas) for s in plan.statuses}
        self.deployed_at = deployed_at
        self._superseded = dict(superseded or {})
        self._pinned = {v: self._pin(v, tiers) for v, tiers in kept.items()}

    # --- decisions ---------------------------------------------------------------------------

    def rule(self, state: SubjectState, meter: str, now: float = 0.0) -> _Rule:
        """The rule deciding the subject's meter (for a subject on an older plan version, with the quotas it
        keeps); a status or tier the plan renamed or retired is read under its new name."""
        by_tier = self._rules_for(state, now).get(state.status)
        if by_tier is None or (state.tier is not None and state.tier not in by_tier):
            state = self.named(state, now)
            by_tier = self._rules_for(state, now)[state.status]
        rules = by_tier.get(state.tier) or by_tier[None]
        try:
            return rules[meter]
        except KeyError:
            raise UnknownMeter(f"meter {meter!r} is not in the plan; known: {', '.join(self.meters)}") from None

    def window(self, state: SubjectState, meter: str, now: float) -> Span:
        """The window whose usage counts for this subject and meter now (its start is the usage key)."""
        return self.rule(state, meter, now).span(state, now)

    def can_process(self, state: SubjectState, meter: str, amount: int, used: int, now: float,
                    balance: int = 0, billed: int | None = None) -> Decision:
        """May the subject do `amount` of `meter` now, having used `used` in the current window (and having
        `balance` spendable credits of the meter, spent once the limit is used up, and `billed` overage billed in
        the window so far: None when not known, see beyond)?"""
        # The hot path: a few dict lookups and the cached window bounds, no calendar arithmetic.
        if amount.__class__ is not int or amount < 1:
            _check_amount(amount)
        try:
            # Subjects kept on an older plan version exist only while _pinned does: one test of it otherwise.
            rule = (self._rules_for(state, now) if self._pinned else self._rules)[state.status][state.tier][meter]
        except KeyError:
            rule = self.rule(state, meter, now)    # an old name is read as its new one; unknown names raise
            if state.status not in self._rules or (state.tier is not None and state.tier not in self._tier_names):
                # Stored under an old name (a deploy moves such subjects just after its swap): the answer names
                # the status and tier whose rule decided, its window still the stored state's.
                named = self.named(state, now)
                state = state.with_(status=named.status, tier=named.tier)
        if not rule.allows:
            return Decision(False, rule.deny_reason, state.status, state.tier, meter, 0, used, 0,
                            None, None, None, rule.name)
        span = rule.clock.span_for(state, now)
        limit = rule.limit
        if limit is None:
            return Decision(True, _OK, state.status, state.tier, meter, None, used, None,
                            span.start, span.end, None, rule.name)
        if rule.scaled:
            limit = rule.limit_for(state)
        remaining = limit - used if used < limit else 0
        if amount <= remaining:
            return Decision(True, _OK, state.status, state.tier, meter, limit, used, remaining,
                            span.start, span.end, None, rule.name)
        if rule.beyond:
            return beyond(rule, state, meter, amount, used, limit, span, now, balance, billed)
        retry = math.ceil(span.end - now) if span.end is not None and amount <= limit else None
        return Decision(False, _EXHAUSTED, state.status, state.tier, meter, limit, used,
                        remaining, span.start, span.end, retry, rule.name)

    def consume(self, state: SubjectState, meter: str, amount: int, used: int, now: float,
                balance: int = 0, billed: int | None = None) -> tuple[Decision, int]:
        """Check and count in one step: refuses rather than overshoots. Returns the decision (with the
        usage after counting) and the window's usage afterwards. What credits pay for is not counted in the
        window (decision.credits_used says how much of the balance it takes); overage is."""
        decision = self.can_process(state, meter, amount, used, now, balance, billed)
        if not decision.allowed:
            return decision, used
        counted = amount - decision.credits_used
        after = used + counted
        decision.used = after
        if decision.remaining is not None:
            decision.remaining = max(0, decision.remaining - counted)
        return decision, after

    def feature(self, state: SubjectState, feature: str, now: float = 0.0) -> Decision:
        """Is the feature granted to the subject now? UnknownFeature for a feature the plan does not declare."""
        if state.status not in self._rules or (state.tier is not None and state.tier not in self._tier_names):
            state = self.named(state, now)
        return self.features.decide(state, feature)

    def has_credits(self, meter: str) -> bool:
        """Can the meter's work be paid with credits past a limit?"""
        return meter in self._credit_meters

    def tier_grants_apply(self, meter: str) -> bool:
        """Does some tier grant credits of the meter each window (as it is now, or as a subscriber keeps it)?"""
        return meter in self._tier_credit_meters

    def spendable(self, state: SubjectState, meter: str, now: float) -> Spendable:
        """Which of its grants the subject may spend now (see Spendable)."""
        return Spendable(self.credits.not_before(state, meter), self._takes_tier(state, meter, now))

    def _takes_tier(self, state: SubjectState, meter: str, now: float) -> bool:
        status = self.plan.status(self.named(state, now).status)
        quota = status.quota(meter) if status is not None and status.allows else None
        return quota is not None and quota.kind is QuotaKind.TIER

    def tier_grants(self, state: SubjectState, meter: str, now: float, grants) -> TierGrants:
        """The subject's grants as they stand now (its tier's grants of the meter ending with their windows as its
        billing period now says them: see windowed), the expiries that moves in the store, and the credits the
        tier grants for the window containing now (and the rollover into it) when the subject has no grant of
        that window yet. Tier grants only where its status takes the tier's quota of the meter."""
        found = self._tier_windows(state, meter, now)
        if found is None:
            return TierGrants(list(grants), (), ())
        grant, span_at = found
        held, redates = windowed(grants, meter, span_at(now))
        new = period_grants(grant.amount, grant.rollover, meter, span_at, now, last_window(held, meter),
                            cancelled_at(state.subscriptions), state.tier_since)
        return TierGrants(held, redates, new)

    def _tier_windows(self, state: SubjectState, meter: str, now: float):
        """(the tier's grant rule of the meter, the window containing an instant), or None when the subject's tier
        grants none of the meter or its status does not take the tier's quota. A subscriber kept on an older plan
        version (decided_under) gets what its tier granted there."""
        tier = self.tier_of(state)
        if tier is None or meter not in self._tier_credit_meters or not self._takes_tier(state, meter, now):
            return None
        pinned = self._pinned.get(state.plan_version) if self._pinned else None
        if pinned is not None and self.decided_under(state, now)[1] is not None:
            grant = pinned.credits(tier, meter)
        else:
            grant = self._period_grants.get((tier, meter))
        if grant is None:
            return None
        clock = self._clocks.get(Window(grant.window))

        def span_at(t: float) -> Span:
            if clock is None:       # per billing period
                return billing_span(t, state.period_start, state.period_end)
            return clock._compute(t)
        return grant, span_at

    def increment_usage(self, state: SubjectState, meter: str, amount: int, used: int, now: float) -> tuple[Span, int]:
        """Count work that already ran: the window it counts in and the usage after."""
        _check_amount(amount)
        return self.window(state, meter, now), used + amount

    def fail_mode(self, state: SubjectState | None, meter: str) -> FailMode:
        """What to answer when usage cannot be read: the status's fail mode, or the meter's."""
        if state is None or state.status not in self._rules:
            declared = self.plan.meter(meter)
            return declared.fail_mode if declared else FailMode.CLOSED
        return self.rule(state, meter).fail_mode

    # --- transitions -------------------------------------------------------------------------

    def initial_state(self, subject: str, now: float) -> SubjectState:
        return self._enter(SubjectState(subject, self.initial, plan_version=self.version), self.initial, now)

    def timer_due(self, state: SubjectState, now: float) -> bool:
        return state.timer_due is not None and now >= state.timer_due

    def kept_due(self, state: SubjectState, due: float) -> float:
        """A running timer's due time kept across a deploy, bounded as entering the status bounds it: grace never
        ends before the date paid through."""
        if state.status in self._grace and state.paid_through is not None:
            return max(due, state.paid_through)
        return due

    def timer_from_entry(self, state: SubjectState) -> bool:
        """Whether the status's timer runs a duration from when it was entered (expires_after), not to a date of
        the subscription (expires_at, with that date known)."""
        anchor = self._anchors.get(state.status)
        return bool(self._expires.get(state.status)) and (anchor is None or _date(state, anchor) is None)

    def apply(self, state: SubjectState, trigger: Trigger, now: float) -> Outcome:
        """The transition a trigger causes, or a no-op that says why nothing moved."""
        if state.status not in self._rules or (state.tier is not None and state.tier not in self._tier_names) or \
                any(s.tier is not None and s.tier not in self._tier_names for s in state.subscriptions):
            state = self.named(state, now)
        facts = state
        obj: Mapping = {}
        aside: Aside | None = None     # an event its status does not follow: another or an ended subscription's
        if isinstance(trigger, StripeEvent):
            obj = trigger.object if isinstance(trigger.object, Mapping) else {}
            facts, aside = self._take_in(state, obj, now)
            if aside is None:       # another subscription's tier, period, dates and payments are not the subject's
                if obj.get("object") == "subscription":
                    facts = self._retimed(facts, self.subscription_facts(facts, obj))
                elif obj.get("object") == "invoice":
                    facts = self.invoice_facts(facts, obj)
            if facts.tier != state.tier:
                facts = facts.with_(tier_since=_tier_entered(state, facts, now))
        elif isinstance(trigger, TimerFired):
            if state.timer_due is None:
                return Outcome(state, facts, trigger.key, f"no timer runs in '{state.status}'")
            if now < state.timer_due:
                return Outcome(state, facts, trigger.key,
                               f"the timer of '{state.status}' is due at {state.timer_due:.0f}, not yet")
        facts = self._stamped(facts, now)
        edges = self._edges.get((state.status, trigger.key), ())
        if isinstance(trigger, TimerFired) and not edges:
            # A due timer fires once: with nothing to do, it stops rather than firing again.
            return Outcome(state, facts.with_(timer_due=None), trigger.key,
                           f"the timer of '{state.status}' ran out; no transition on it")
        matched = trigger.matched() if isinstance(trigger, StripeEvent) else obj
        for edge in edges:
            if edge.hears(aside) and edge.matches(matched):
                about = "" if aside is None else f" ({aside.note()})"
                if edge.target == state.status:
                    if isinstance(trigger, TimerFired):
                        # Staying put is all a due timer does here: it stops, or every sweep would fire it.
                        facts = facts.with_(timer_due=None)
                    return Outcome(state, facts, trigger.key, f"already in '{state.status}' ({edge.rule}){about}")
                moved = self._enter(facts, edge.target, now)
                return Outcome(state, moved, trigger.key, edge.moved + about, True, edge.rule)
        if aside is not None:
            scope = "ended" if aside.ended is not None else "other"
            return Outcome(state, facts, trigger.key,
                           f"about {aside.words()}: recorded, the subject stays in '{state.status}' (no transition "
                           f"from it on {trigger.key} with `subscription: {scope}` or `any` matches)",
                           other_subscription=aside.ended is None, ended_subscription=aside.ended is not None)
        why = (f"no transition from '{state.status}' on {trigger.key}" if not edges else
               f"no transition from '{state.status}' on {trigger.key} matches the event ("
               + "; ".join(e.why for e in edges) + ")")
        return Outcome(state, facts, trigger.key, why)

    def _take_in(self, state: SubjectState, obj: Mapping, now: float) -> tuple[SubjectState, Aside | None]:
        """The state with what the event's object says of the subscription it is about; and, when that is not the
        followed one, what it is about instead. An invoice of no subscription (a one-off invoice) is not the
        followed subscription's either: neither its payment nor its failure is the subscription's. A subscription
        that buys only add-ons is never followed: while the subject has no other, its events are another
        subscription's (follows: None): they give it no tier nor period, and move it only where a transition says
        `subscription: other` or `any`. An invoice or Checkout Session of a subscription that had ended before it
        (a late payment of its last open invoice) is an ended subscription's, even the followed one's (a subject
        follows the one that ended last): it moves the subject only where a transition says `subscription: ended`
        or `any`. Ended is what the fold knows at the event's place in created order, so a `deleted` delivered
        late makes the refold take the invoice for an ended subscription's."""
        about = subscription_of(obj)
        if about is None:
            follows = state.follows if obj.get("object") == "invoice" else None
            return state, (None if follows is None else Aside(ONE_OFF_INVOICE, follows.id))
        subscriptions = take_in(state.subscriptions, about, obj, now, self._items)
        if subscriptions is state.subscriptions:
            follows = state.follows
        else:
            was, follows = state.follows, followed(subscriptions)
            state = state.with_(subscriptions=subscriptions, addons=live_addons(subscriptions))
            if was is not None and follows is not None and was.id != follows.id:
                state = _paid_through_on_switch(state, was.id)
            # Another subscription followed now: the subject's dates are its (what is known of them), not those of
            # the one followed before. On an event about the new one, only once the old one ended (a returning
            # customer's new trial is not timed by the ended trial's trial_end); while the old one lives on (an
            # add-on's Checkout before its created), this event's own facts say what they say.
            if follows is not None and (was is None or was.id != follows.id) and \
                    (follows.id != about or _ended(subscriptions, was)):
                state = self._retimed(state, self._followed_facts(state, follows))
        if obj.get("object") != "subscription":     # a subscription's own events tell of its end, never after it
            sub = next((s for s in subscriptions if s.id == about), None)
            if sub is not None and sub.ended:
                return state, Aside(about, None if follows is None else follows.id, sub)
        if follows is not None and follows.id == about:
            return state, None
        return state, Aside(about, None if follows is None else follows.id)

    def _followed_facts(self, state: SubjectState, sub: Subscription) -> SubjectState:
        """The subject's tier, period and dates as the gate knows them of the subscription it now follows (the one
        it followed ended while this one lives on): until this one's own next event says more."""
        start, end = (sub.period_start, sub.period_end) if sub.period_end is not None else \
            (state.period_start, state.period_end)
        if sub.tier is not None and sub.tier not in self._tier_names:
            tier = state.tier       # a name the plan neither has nor maps (stored before two renames): not written
        else:
            tier = sub.tier or (state.tier if sub.status is None else self.plan.default_tier)
        return state.with_(tier=tier,
                           period_start=start, period_end=end, trial_end=sub.trial_end, cancel_at=sub.cancel_at,
                           quantity=sub.quantity if sub.status is not None else state.quantity)

    def _items(self, sub: Mapping) -> tuple[str | None, int | None, tuple[tuple[str, int], ...]]:
        """What a subscription's items buy: the tier its prices select (None: none is in a tier of the plan, and
        none is a price the plan does not know while it has a default_tier, which such a price selects), the
        quantity of that item (seats; None without one), and the add-ons of the plan its other items are, with
        their quantities."""
        tier = quantity = unknown = None
        addons: dict[str, int] = {}
        for price, count in price_items(sub):
            if tier is None and price in self._price_tier:
                tier, quantity = self._price_tier[price], count
            elif price in self._addon_prices:
                name = self._addon_prices[price]
                addons[name] = addons.get(name, 0) + count
            elif unknown is None:
                unknown = count
        if tier is None and unknown is not None and self.plan.default_tier:
            tier, quantity = self.plan.default_tier, unknown
        if tier is None and sub.get("object") == "subscription" and isinstance(sub.get("quantity"), int):
            quantity = sub["quantity"]      # the old shape's subscription-level quantity
        return tier, quantity, tuple(sorted(addons.items()))

    def override(self, state: SubjectState, to: str, now: float, why: str = "") -> Outcome:
        """An admin's direct move to a status, outside the plan's transitions (audited by the caller)."""
        if to not in self._rules:
            raise UnknownStatus(f"status {to!r} is not in the plan; known: {', '.join(self.statuses)}")
        state = self.named(state, now)
        if to == state.status:
            return Outcome(state, state, "admin:override", f"already in '{to}'")
        return Outcome(state, self._enter(state, to, now), "admin:override",
                       f"{state.status} -> {to}: admin override" + (f" ({why})" if why else ""), True)

    def subscription_facts(self, state: SubjectState, sub: Mapping) -> SubjectState:
        """The subject's tier and billing period as a Stripe subscription object states them."""
        tier, quantity = state.tier, state.quantity
        prices = price_ids(sub)
        if prices:
            tier = next((self._price_tier[p] for p in prices if p in self._price_tier), self.plan.default_tier)
            quantity = self._items(sub)[1]
        period = billing_period(sub)
        start, end = period if period else (state.period_start, state.period_end)
        trial_end, cancel_at = subscription_dates(sub, state.trial_end, state.cancel_at)
        if (tier, start, end, trial_end, cancel_at) == (state.tier, state.period_start, state.period_end,
                                                        state.trial_end, state.cancel_at):
            return state if quantity == state.quantity else state.with_(quantity=quantity)
        if state.tier is not None and tier != state.tier and state.plan_version != self.version:
            # Another tier is a new subscription to it: its quotas as they are now, whatever the old one kept.
            return state.with_(tier=tier, period_start=start, period_end=end, trial_end=trial_end, cancel_at=cancel_at,
                               plan_version=self.version, quantity=quantity)
        return state.with_(tier=tier, period_start=start, period_end=end, trial_end=trial_end, cancel_at=cancel_at,
                           quantity=quantity)

    def _retimed(self, before: SubjectState, facts: SubjectState) -> SubjectState:
        """When Stripe moves the date the current status's timer is anchored to (a trial extended, a
        cancel_at set or dropped), the timer moves with it."""
        anchor = self._anchors.get(facts.status)
        if anchor is None or _date(facts, anchor) == _date(before, anchor):
            return facts
        return facts.with_(timer_due=self._due(facts, facts.status, facts.since))

    def invoice_facts(self, state: SubjectState, invoice: Mapping) -> SubjectState:
        """A paid invoice extends what the subject has paid for: to the end of its lines' periods, or to the
        end of the known billing period. It also gives a billing period to a subject that has none yet
        (paid before any subscription event arrived)."""
        periods = paid_periods(invoice)
        if periods is None:
            return state
        end = max(e for _, e in periods) if periods else state.period_end
        changes = {}
        if end is not None and (state.paid_through is None or end > state.paid_through):
            changes["paid_through"] = float(end)
        if state.period_start is None and periods:
            start, stop = max(periods, key=lambda p: p[1])
            changes.update(period_start=start, period_end=stop)
        return state.with_(**changes) if changes else state

    def tier_for_price(self, price: str) -> str | None:
        return self._price_tier.get(price, self.plan.default_tier)

    # --- plan versions -----------------------------------------------------------------------

    def decided_under(self, state: SubjectState, now: float) -> tuple[str, ExistingSubscribers | None]:
        """The plan version whose tier quotas decide the subject, and why it is not this one (the tier's
        existing_subscribers), or (this version, None)."""
        pinned = self._pinned.get(state.plan_version) if self._pinned else None
        if pinned is None or not self._uses_tier.get(state.status):     # no tier's quota: no tier's subscriber
            return self.version, None
        tier = self.tier_of(state)
        keeps = pinned.keeps.get(tier) if tier is not None else None
        if keeps is None or (keeps is ExistingSubscribers.AT_RENEWAL and
                             renewed(state, now, self._superseded.get(state.plan_version, self.deployed_at))):
            return self.version, None
        return state.plan_version, keeps

    @property
    def kept_versions(self) -> tuple[str, ...]:
        """The older versions some tier's subscribers may be kept on."""
        return tuple(self._pinned)

    def named(self, state: SubjectState, now: float) -> SubjectState:
        """The state under the plan's names: a renamed status or tier takes its new name, a retired one enters
        the status (or takes the tier) that replaced it. UnknownStatus for a status neither declared nor mapped."""
        outcome = self.migrate(state, now)
        return state if outcome is None else outcome.state

    def migrate(self, state: SubjectState, now: float) -> Outcome | None:
        """The plan change a stored state needs (an old status or tier name), or None when the plan knows its
        names. The gate commits it once, audited, before anything else happens to the subject."""
        why, rules, before = [], [], state
        if state.status not in self._rules:
            move = self._names.statuses.get(state.status)
            if move is None:
                raise UnknownStatus(f"status {state.status!r} is not in the plan, nor mapped by renamed_from or "
                                    f"retired; known: {', '.join(self.statuses)}")
            if move.how is How.RENAMED:
                # Its running timer stays, if the status still has one (after a time, or on a subscription's date).
                timer = state.timer_due if self._expires[move.new] or move.new in self._anchors else None
                state = state.with_(status=move.new, timer_due=timer)
            else:
                state = self._enter(state, move.new, now)
            why.append(move.describe())
            rules.append(f"{self.plan.file}:{move.location.line}")
        if state.tier is not None and state.tier not in self._tier_names:
            move = self._names.tiers.get(state.tier)
            if move is not None:
                state = state.with_(tier=move.new)
                why.append(move.describe())
                rules.append(f"{self.plan.file}:{move.location.line}")
        # Each subscription's tier moves with the subject's: the subject takes it when it comes to follow that one.
        moves = [None if s.tier is None else self._names.tiers.get(s.tier) for s in state.subscriptions]
        if any(moves):
            state = state.with_(subscriptions=tuple(s if m is None else replace(s, tier=m.new)
                                                    for s, m in zip(state.subscriptions, moves)))
            for move in dict.fromkeys(m for m in moves if m is not None):
                if move.describe() not in why:
                    why.append(move.describe())
                    rules.append(f"{self.plan.file}:{move.location.line}")
        if not why:
            return None
        return Outcome(before, state, PLAN_TRIGGER, "plan change: " + "; ".join(why), True,
                       ", ".join(rules))

    def unmapped(self, state: SubjectState) -> str | None:
        """A name of the state (its status, its tier or a subscription's) that the plan neither has nor maps, or
        None: a state stored before two renames of a name (a plan maps one step back) cannot be read as this
        plan's."""
        if state.status not in self._rules and state.status not in self._names.statuses:
            return state.status
        return next((t for t in (state.tier, *(s.tier for s in state.subscriptions))
                     if t is not None and t not in self._tier_names and t not in self._names.tiers), None)

    def upgrade(self, state: SubjectState, now: float) -> Outcome | None:
        """Move a subject kept on an older plan version to this one (an admin's decision), or None when it is
        decided under this version already."""
        state = self.named(state, now)
        version, keeps = self.decided_under(state, now)
        if keeps is None:
            return None
        return Outcome(state, state.with_(plan_version=self.version), PLAN_TRIGGER,
                       f"plan change: upgraded from plan version {version} (kept: {keeps.value}) to {self.version}",
                       True)

    def _stamped(self, state: SubjectState, now: float) -> SubjectState:
        """The state recording the version that decides it, as the state written: a renewal moves an at_renewal
        subscriber onto this version, and one this version keeps on nothing is this version's. A later deploy
        reads its kept quotas, and when its renewal counts, from the version recorded. Only a version this table
        knows as one before it is replaced: written down as this one, a newer version's subscriber (met by a node
        still on this plan) would be kept on this plan's quotas once the newer plan runs."""
        if state.plan_version == self.version or (state.plan_version and state.plan_version not in self._older):
            return state
        version = self.decided_under(state, now)[0]
        return state if version == state.plan_version else state.with_(plan_version=version)

    def _rules_for(self, state: SubjectState, now: float) -> dict:
        pinned = self._pinned.get(state.plan_version) if self._pinned else None
        if pinned is None or self.decided_under(state, now)[1] is None:
            return self._rules
        return pinned.rules

    def tier_of(self, state: SubjectState) -> str | None:
        """The tier (of this plan) whose quotas a subject takes: its own under the plan's name, else the default."""
        tier = state.tier
        if tier is not None and tier not in self._tier_names:
            move = self._names.tiers.get(tier)
            tier = move.new if move else None
        return tier or self.plan.default_tier

    def _keeps(self, state: SubjectState, status: str, now: float) -> bool:
        """Does a subject on an older version stay on it when it enters `status`? While it moves between
        statuses that take the tier's quota (paid, grace, back); entering one from elsewhere (subscribing
        anew) takes the quotas as they are now."""
        return bool(self._uses_tier.get(state.status) and self._uses_tier.get(status)
                    and self.decided_under(state, now)[1] is not None)

    def _pin(self, version: str, kept: Mapping[str, Tier]) -> Pinned:
        """The rules of an older version's subscribers: `kept`, the tiers (by active name) they keep from it."""
        rules = {s.name: self._status_rules(s, kept, version) for s in self.plan.statuses}
        return Pinned(version, rules, {name: tier.existing_subscribers for name in kept
                                       if (tier := self.plan.tier(name)) is not None}, dict(kept))

    # --- compilation -------------------------------------------------------------------------

    def _enter(self, state: SubjectState, status: str, now: float) -> SubjectState:
        due = self._due(state, status, now)
        version = self.version
        if self._pinned and state.plan_version != version and self._keeps(state, status, now):
            version = state.plan_version
        return _entered(state, status, now, due, version)

    def _due(self, state: SubjectState, status: str, entered: float) -> float | None:
        """When the timer of a status entered at `entered` runs out: at its anchor date (plus slack) when the
        subscription has that date, else expires_after from entry, else never."""
        due = None
        anchor = self._anchors.get(status)
        if anchor is not None:
            date = _date(state, anchor)
            due = date + anchor.slack if date is not None else None
        if due is None:
            expires = self._expires[status]
            due = entered + expires if expires else None
        if due is not None and status in self._grace and state.paid_through is not None:
            due = max(due, state.paid_through)    # grace never ends before the paid-through date
        return due

    def _status_rules(self, status: Status, kept: Mapping[str, Tier] | None = None,
                      version: str = "") -> dict[str | None, dict[str, _Rule]]:
        tiers: list[str | None] = [None] + [t.name for t in self.plan.tiers]
        return {tier: {m.name: self._meter_rule(status, m.name, tier, kept, version) for m in self.plan.meters}
                for tier in tiers}

    def _meter_rule(self, status: Status, meter: str, tier: str | None, kept: Mapping[str, Tier] | None = None,
                    version: str = "") -> _Rule:
        """kept: tiers (by name in this plan) whose quotas come from an older plan `version` instead."""
        plan = self.plan
        declared = plan.meter(meter)
        fail = dict(status.fail_modes).get(meter, declared.fail_mode if declared else FailMode.CLOSED)
        where = f"{plan.file}:{{line}} statuses.{status.name}"
        if status.access is Access.DENY:
            line = plan.document.locate(("statuses", status.name, "access")).line
            return _Rule(False, Reason.STATUS_DENIES, 0, None, None, where.format(line=line) + ".access", fail)
        quota = status.quota(meter)
        if quota is None:
            return _Rule(False, Reason.NO_QUOTA, 0, None, None,
                         where.format(line=_line(status.location)) + f" (no quota for {meter})", fail)
        name = where.format(line=_line(quota.location)) + f".quotas.{meter}"
        if quota.kind is QuotaKind.TIER:
            # A subject without a known tier (say, moved here by an admin) gets the default tier.
            chosen = plan.tier(tier or plan.default_tier or "") or (plan.tiers[0] if plan.tiers else None)
            old = (kept or {}).get(chosen.name) if chosen else None
            if old is not None and old.quota(meter) is None:
                old = None      # a meter the older tier had no quota for: the tier's quota as it is now
            quota = (old or chosen).quota(meter) if chosen else None
            if quota is None or chosen is None:
                return _Rule(False, Reason.NO_QUOTA, 0, None, None, name + " (the tier has no quota)", fail)
            name = (f"{plan.file}:{_line(quota.location)} tiers.{chosen.name}.quotas.{meter} "
                    f"(via {name.split(' ', 1)[1]})")
            if old is not None:
                name = (f"plan {version} tiers.{old.name}.quotas.{meter}, kept by existing subscribers "
                        f"({chosen.existing_subscribers.value}; via {name.split(' (via ', 1)[1]}")
        if quota.kind is QuotaKind.UNLIMITED or quota.window is None:
            return _Rule(True, None, None, Window.LIFETIME, None, name, fail)
        return self._limit_rule(status, meter, quota, name, fail)

    def _limit_rule(self, status: Status, meter: str, quota, name: str, fail) -> _Rule:
        """A limit's rule: its window's clock, and what may change it per subject (units, add-ons) or let work
        past it (credits, overage)."""
        clock: CalendarClock | FixedClock | AnniversaryClock | None = self._clocks.get(quota.window)
        if quota.anchor is Anchoring.BILLING and quota.window in (Window.DAY, Window.WEEK, Window.MONTH):
            clock = AnniversaryClock(quota.window, self._calendars[quota.window])
        rule = _Rule(True, None, quota.limit, quota.window, clock, name, fail)
        rule.units = quota.per_unit
        own = status.quota(meter)
        if own is not None and own.kind is QuotaKind.TIER:
            rule.adds = {a.name: a.adds(meter) for a in self.plan.addons if a.adds(meter)}
        rule.scaled = rule.units is not None or bool(rule.adds)
        if quota.overage is not None:
            rule.overage = OVERAGE_UNBOUNDED if quota.overage.up_to is None else quota.overage.up_to
        rule.credits = self.has_credits(meter)
        rule.beyond = rule.credits or rule.overage is not None
        return rule

    def _compile_edges(self) -> dict[tuple[str, str], tuple[_Edge, ...]]:
        edges: dict[tuple[str, str], list[_Edge]] = {}
        for t in self.plan.transitions:
            matches = compile_conditions(t.conditions)
            when = " when " + ", ".join(map(str, t.conditions)) if t.conditions else ""
            rule = f"{self.plan.file}:{t.location.line} transitions[{t.index}]"
            why = f"on {t.trigger}{when} ({rule})"
            if t.subscription is not SubscriptionScope.FOLLOWED:
                why += f" (subscription: {t.subscription.value})"
            for src in self.plan.sources_of(t):
                edges.setdefault((src, str(t.trigger)), []).append(
                    _Edge(matches, src, t.target, rule, why, t.subscription))
        return {k: tuple(v) for k, v in edges.items()}


def _tier_entered(before: SubjectState, after: SubjectState, now: float) -> float:
    """When a subject Stripe moved into another tier entered it: where the billing period the same change brought
    began (a change at renewal, an upgrade that restarts the billing cycle: its event comes a moment later), else
    now (mid-period)."""
    start = after.period_start
    if start is not None and start != before.period_start and start <= now:
        return start
    return now


def _line(location: Location | None) -> int:
    """The line a rule names: a plan built from a file locates every node (a model built by hand, line 1)."""
    return location.line if location is not None else 1


def _date(state: SubjectState, anchor: Anchor) -> float | None:
    """The subscription date an anchored timer follows, as the subject's state knows it."""
    if anchor.date == "current_period_end":
        return state.period_end
    return state.trial_end if anchor.date == "trial_end" else state.cancel_at


def _paid_through_on_switch(state: SubjectState, was: str) -> SubjectState:
    """The subject now follows another subscription: what it has paid through is the latest date its subscriptions
    that have not ended were paid through. One that ended does not count: a yearly subscription canceled in its
    second month held a later monthly one's grace open until its year was out. A record stored before
    subscriptions kept a date of their own gets the subject's, which was the one it followed (`was`)."""
    subscriptions = state.subscriptions
    if state.paid_through is not None and any(s.id == was and s.paid_through is None for s in subscriptions):
        subscriptions = tuple(replace(s, paid_through=state.paid_through) if s.id == was else s for s in subscriptions)
    live = [s.paid_through for s in subscriptions if not s.ended and s.paid_through is not None]
    return state.with_(subscriptions=subscriptions, paid_through=max(live, default=None))


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        raise ValueError(f"amount must be a whole number of at least 1, not {amount!r}")


def compile_plan(plan: Plan, older: Mapping[str, Plan] | None = None, deployed_at: float = 0.0,
                 superseded: Mapping[str, float] | None = None, between: Iterable[Plan] = ()) -> StateTable:
    """The table of a plan (see StateTable for older, deployed_at, superseded and between); PlanError (with the
    findings) when the plan has an error finding."""
    findings = check_plan(plan)
    if any(f.is_error for f in findings):
        raise PlanError(tuple(findings))
    return StateTable(plan, older, deployed_at, superseded, between)


def compile_file(path) -> StateTable:
    """Load, check and compile a plan file in one step (PlanError, PlanFileError)."""
    return StateTable(load_plan(path))


def _ended(subscriptions: tuple[Subscription, ...], was: Subscription | None) -> bool:
    """Whether the subscription followed before (None: none was) has ended, as `subscriptions` now say."""
    if was is None:
        return False
    return next((s.ended for s in subscriptions if s.id == was.id), was.ended)
