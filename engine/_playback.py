"""Running a parsed scenario against the compiled plan with a virtual clock, step by step.

What the server does with the world (deliver Stripe events, sweep due timers, count usage in the
store) is played here in memory, through the same table calls, so a passing scenario says what
the running gate will do.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ._credits import Grant, GrantSource
from ._decision import Decision
from ._history import Step as Folded, advance, event_order, refold_from, replay, tie_group
from ._links import named_subject, relevant_events, stripe_refs
from ._reversals import money_back
from ._scenario import Expectation, Scenario, Step, _iso, _show
from ._state import SubjectState
from ._table import StateTable
from ._triggers import AdminAction, Outcome, StripeEvent
from ._usage import UsageBook
from ._windows import LAST_INSTANT


@dataclass(frozen=True)
class Failure:
    """The first expectation that did not hold, with what happened at its step; or a step that could not
    happen as written (expectation None, `happened` says why). `others`: the step's other expectations that did
    not hold, with what was seen, so that one run shows all of them."""

    step: Step
    expectation: Expectation | None
    actual: object
    happened: str
    others: tuple[tuple[Expectation, object], ...] = ()

    def describe(self, file: str) -> str:
        e = self.expectation
        if e is None:
            return f"step {self.step.number} ({self.step.kind}) at {file}:{self.step.line}: {self.happened}"
        also = "".join(f"\n    also at {file}:{o.line}: {o.key}: expected {_show_value(o.key, o.value, o.written)}, "
                       f"got {_show_value(o.key, seen)}" for o, seen in self.others)
        return (f"step {self.step.number} ({self.step.kind}) at {file}:{e.line}: {e.key}: "
                f"expected {_show_value(e.key, e.value, e.written)}, got {_show_value(e.key, self.actual)}{also}\n"
                f"    {self.happened}")


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    failure: Failure | None

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass
class _Seen:
    """What one step did: the decision it made (if any), whether it moved the subject, in words."""

    decision: Decision | None
    moved: bool
    happened: str
    broken: bool = False        # the step could not happen as written (an event the gate could not link)


def play(table: StateTable, scenario: Scenario) -> Result:
    """Run every step in order; stop at the first expectation that does not hold."""
    player = _Player(table, scenario)
    for step in scenario.steps:
        seen = player.do(step)
        failure = player.verify(step, seen)
        if failure is not None:
            return Result(scenario, failure)
    return Result(scenario, None)


class _Player:
    def __init__(self, table: StateTable, scenario: Scenario):
        self.table = table
        self.scenario = scenario
        self.now = scenario.start
        self.state: SubjectState = table.initial_state(scenario.subject, self.now)
        self.book = UsageBook(table)
        self.relevant = relevant_events(table.plan)
        self.linked: set[str] = set()       # Stripe ids linked to the subject so far, as the gate keeps them
        # The Stripe events folded since the subject last changed otherwise (an admin, a plan), in fold order, each
        # with the state before it: an event that sorts before some of them is folded in among them, as the gate
        # folds one that arrives late.
        self.folded: list[Folded] = []

    def do(self, step: Step) -> _Seen:
        return getattr(self, "_" + step.kind)(step)

    # --- steps -------------------------------------------------------------------------------

    def _check(self, step: Step) -> _Seen:
        decision = self.book.check(self.state, _meter(step), step.amount, self.now)
        return _Seen(decision, False, f"check of {step.amount} {step.meter}: {_explain(decision)}")

    def _consume(self, step: Step) -> _Seen:
        decision = self.book.consume(self.state, _meter(step), step.amount, self.now)
        verb = "counted" if decision.allowed else "refused"
        return _Seen(decision, False, f"consume {step.amount} {step.meter} {verb}: {_explain(decision)}")

    def _wait(self, step: Step) -> _Seen:
        return self._advance(self.now + step.value, f"waited {_span_words(step.value)}")

    def _until(self, step: Step) -> _Seen:
        return self._advance(step.value, f"moved the clock to {_iso(step.value)}")

    def _stripe(self, step: Step) -> _Seen:
        obj = step.object or {}
        if not step.whole and obj.get("object") == "invoice" and "subscription" not in obj and "parent" not in obj \
                and self.state.follows is not None:
            # A story's invoice is of the subscription the user has, as Stripe's renewals are (`parent: null`
            # writes a one-off invoice, of no subscription).
            obj = {**obj, "subscription": self.state.follows.id}
        if not step.whole and step.value == "customer.subscription.created" and "created" not in obj:
            obj = {**obj, "created": int(self.now)}     # Stripe's subscription always says when it was made
        # A whole event is of its own `created` (one delivered late sorts before those folded since), any other now.
        created = step.at if step.at is not None and step.at < self.now else self.now
        event = StripeEvent(step.value, obj, step.extra, created, step.previous)
        if step.value not in self.relevant:
            return _Seen(None, False, f"{event.key}: the gate reads no {step.value} events (ignored)")
        named = named_subject(obj, self.table.plan.subject_link)
        if named is not None and named != self.scenario.subject:
            return _Seen(None, False, f"{event.key} is about '{named}', not '{self.scenario.subject}': ignored")
        refs = stripe_refs(obj)
        ids = {i for i in (refs.customer, refs.subscription, *refs.payments) if i}
        if named is None and (step.whole or ids) and not ids & self.linked:
            asked = (" (a gate with STRIPE_SECRET_KEY would ask Stripe whose the charge is; a story cannot)"
                     if refs.only_payments else "")
            return _Seen(None, False, f"{event} cannot be linked to '{self.scenario.subject}': it names no "
                                      "subject, and no earlier event linked "
                                      f"{' or '.join(sorted(ids)) or 'a customer or subscription of it'}; the gate "
                                      f"would keep it pending{asked}", broken=True)
        self.linked |= ids
        seen = self._fold(event, step.at is not None)
        grants = self.table.credits.purchased(step.value, step.object or {}, self.now)
        if grants:
            self.book.add_grants(self.scenario.subject, grants)
            seen.happened += "; granted " + ", ".join(f"{g.amount} {g.meter} credits ({g.note})" for g in grants)
        back = money_back(step.value, step.extra or f"story:{step.number}", obj, self.now)
        taken = self.book.take_back(self.scenario.subject, back, grants)
        if taken > 0:
            seen.happened += f"; took back {taken} bought credits (money of their payment came back)"
        elif taken < 0:
            seen.happened += f"; gave back {-taken} bought credits (a refund of their payment failed)"
        return seen

    def _event(self, step: Step) -> _Seen:
        """A whole event from a file: it happens at its `created` (timers due before fire first)."""
        if step.at is None or step.at <= self.now:
            return self._stripe(step)
        waited = self._advance(step.at, f"moved the clock to {_iso(step.at)}")
        seen = self._stripe(step)
        return _Seen(seen.decision, waited.moved or seen.moved, f"{waited.happened}; then {seen.happened}",
                     seen.broken)

    def _fold(self, event: StripeEvent, whole: bool) -> _Seen:
        """The event into the subject's fold, as the gate folds it: after every event folded so far, one more
        step; a whole event (a file, with its own `created`) sorting before some of them (in one second a
        checkout sorts before its subscription's update, whatever came first), or tied with an update of its
        subscription in that second, makes the fold run again from before the first of those, with the timers
        due since. A story's own `stripe:` steps are folded as written: the fold starts again after each."""
        if not whole:
            self.folded = []
            return self._outcome(self.table.apply(self.state, event, self.now))
        key, tie = event_order(event), tie_group(event)
        start = next((i for i, f in enumerate(self.folded)
                      if event_order(f.event) > key or (tie is not None and tie_group(f.event) == tie)), None)
        if start is None:
            outcome = self.table.apply(self.state, event, self.now)
            self.folded.append(Folded(event, self.state, (), outcome))
            return self._outcome(outcome)
        start = refold_from([f.event for f in self.folded], start)
        before, again = self.state, self.folded[start:]
        # Traits are set through the API, never by Stripe, and plan versions only move forward: the ones held stay.
        base = again[0].before.with_(traits=before.traits, plan_version=before.plan_version)
        state, steps = replay(self.table, base, [event, *(f.event for f in again)])
        self.state, _ = advance(self.table, state, self.now)
        self.folded[start:] = steps
        what = next(f.outcome for f in steps if f.event is event)
        return _Seen(None, self.state.status != before.status,
                     f"{event.key} sorts before {len(again)} event(s) folded already, folded again in created order: "
                     f"{what.reason}")

    def _admin(self, step: Step) -> _Seen:
        self.folded = []        # the fold starts again from what the admin made
        return self._outcome(self.table.apply(self.state, AdminAction(step.value, step.extra), self.now))

    def _plan(self, step: Step) -> _Seen:
        """The plan changes: the gate deploys it, and moves the subject if the plan renamed or retired its
        status or tier (usage counted so far stays counted)."""
        table: StateTable = step.value
        self.table = self.book.table = table
        self.folded = []        # folded under the plan before: the fold starts again from the state it leaves
        moved = table.migrate(self.state, self.now)
        if moved is None:
            return _Seen(None, False, f"the plan changed to version {table.version}; the subject stays as it is")
        return self._outcome(moved)

    def _feature(self, step: Step) -> _Seen:
        decision = self.table.feature(self.state, step.value, self.now)
        verdict = "entitled" if decision.allowed else f"not entitled ({decision.reason.value})"
        return _Seen(decision, False, f"feature {step.value}: {verdict} by {decision.rule}")

    def _grant(self, step: Step) -> _Seen:
        """An admin grants credits (as POST /v1/subjects/{subject}/credits does)."""
        expires = (step.object or {}).get("expires_after")
        grant = Grant(f"story:{step.number}", _meter(step), step.value, step.value, self.table.credits.admin_priority,
                      self.now, self.now + expires if expires else None, GrantSource.ADMIN, "a step of the story")
        self.book.add_grants(self.scenario.subject, [grant])
        return _Seen(None, False, f"granted {step.value} {step.meter} credits")

    def _traits(self, step: Step) -> _Seen:
        traits = dict(self.state.traits)
        traits.update(step.value)
        self.state = self.state.with_(traits=tuple(sorted(traits.items())))
        return _Seen(None, False, "traits now " + ", ".join(f"{k}={v}" for k, v in self.state.traits))

    def _override(self, step: Step) -> _Seen:
        self.folded = []
        return self._outcome(self.table.override(self.state, step.value, self.now, step.extra))

    # --- the clock and triggers ----------------------------------------------------------------

    def _advance(self, until: float, what: str) -> _Seen:
        """Move the clock; timers due on the way fire at their deadlines, as the server's sweep does."""
        if until >= LAST_INSTANT:
            return _Seen(None, False, f"{what}: past the year 9000, further than a story's clock goes", broken=True)
        self.state, fired = advance(self.table, self.state, until)
        self.now = until
        notes = [f"timer at {_iso(o.before.timer_due or until)}: {o.reason}" for o in fired]
        return _Seen(None, any(o.moved for o in fired),
                     what + (": " + "; ".join(notes) if notes else ", no timer fired"))

    def _outcome(self, outcome: Outcome) -> _Seen:
        self.state = outcome.state
        return _Seen(None, outcome.moved, f"{outcome.trigger}: {outcome.reason}")

    # --- expectations ------------------------------------------------------------------------

    def verify(self, step: Step, seen: _Seen) -> Failure | None:
        if seen.broken:
            return Failure(step, None, None, seen.happened)
        wrong = [(e, actual) for e in step.expect
                 if not _same(actual := self.actual(e, step, seen), e.value)]
        if not wrong:
            return None
        (first, actual), *others = wrong
        return Failure(step, first, actual, seen.happened, tuple(others))

    def actual(self, e: Expectation, step: Step, seen: _Seen):
        state = self.state
        if e.key in ("status", "tier"):
            return getattr(state, e.key)
        if e.key == "moved":
            return seen.moved
        if e.key == "kept":
            kept = self.table.decided_under(state, self.now)[1]
            return None if kept is None else kept.value
        if e.key == "timer":
            if isinstance(e.value, bool):
                return state.timer_due is not None
            return False if state.timer_due is None else math.ceil(state.timer_due - self.now)
        if seen.decision is None:
            # After a step that made no decision, expectations about one ask a fresh check (not counted).
            seen.decision = self.book.check(state, _meter(step), step.amount, self.now)
            seen.happened += f"; then a check of {step.amount} {step.meter}: {_explain(seen.decision)}"
        if e.key == "reason":
            return seen.decision.reason.value
        if e.key == "credits":      # the balance now, after the step
            return self.book.balance(state, _meter(step), self.now)
        return getattr(seen.decision, e.key)


def _same(actual, expected) -> bool:
    # true is not 1 and false is not 0 here: a `timer: false` must not pass for "due in 0 seconds".
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    return actual == expected


def _explain(decision: Decision) -> str:
    limit = "unlimited" if decision.limit is None else f"{decision.used}/{decision.limit} used"
    verdict = "allowed" if decision.allowed else "denied"
    return f"{verdict}, {decision.reason.value}, {limit} in '{decision.status}' by {decision.rule}"


def _show_value(key: str, value, written=None) -> str:
    if key in ("retry_after", "timer") and isinstance(value, int) and not isinstance(value, bool):
        return f"{value}s ({_span_words(value)})" if value > 0 else f"{value}s"
    if key == "resets_at" and isinstance(value, (int, float)):
        return _iso(value)
    if key == "timer" and isinstance(value, bool):
        return "a running timer" if value else "no timer"
    shown = value if written is None else written
    return shown if isinstance(shown, str) else _show(shown)


def _span_words(seconds: int) -> str:
    """Seconds as a person reads them: 7d, 15h, 1d 2h 30m."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


def _meter(step: Step) -> str:
    """The meter of a step that decides (the reader refuses such a step without one)."""
    if step.meter is None:
        raise ValueError(f"step {step.number} has no meter")
    return step.meter
