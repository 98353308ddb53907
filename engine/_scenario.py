"""Plan scenarios: timelines product owners write in YAML, checked against the plan before they run.

A scenario file is read with the policy layer's YAML reader, so every problem in it (an unknown
key, a bad duration, a status the plan does not have) is reported at its file, line and column.
Running a parsed scenario is `_playback.play`.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from plangate.policy import (DurationError, Location, PlanError, PlanFileError, YamlDocument, is_known_event,
                             load_plan, parse_duration, parse_yaml)

from ._decision import Reason
from ._table import StateTable, compile_plan
from ._windows import LAST_INSTANT

# Step kinds, each named by its key; a step with only `expect` is a check of the meter.
KINDS = ("consume", "wait", "until", "stripe", "event", "admin", "override", "plan", "feature", "grant", "traits")
_FOR_DECISION = {"expect", "amount", "meter"}
_EXTRA_KEYS = {
    "check": _FOR_DECISION,
    "consume": {"expect", "meter"},
    "wait": _FOR_DECISION,
    "until": _FOR_DECISION,
    "stripe": _FOR_DECISION | {"object", "previous_attributes", "id", "price", "period", "quantity"},
    "event": _FOR_DECISION,
    "admin": _FOR_DECISION | {"actor"},
    "override": _FOR_DECISION | {"why"},
    "plan": _FOR_DECISION,
    "feature": {"expect"},
    "grant": _FOR_DECISION | {"expires_after"},
    "traits": _FOR_DECISION,
}
TOP_KEYS = ("name", "description", "start", "subject", "meter", "steps")
DEFAULT_SUBJECT = "subject"


PAID_INVOICE_EVENTS = ("invoice.paid", "invoice.payment_succeeded")


class ScenarioError(Exception):
    """A scenario file that cannot run: each problem with its file, line and column."""

    def __init__(self, problems: list[tuple[Location, str]]):
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(f"{loc.file}:{loc.line}:{loc.column}: {msg}" for loc, msg in self.problems)


@dataclass(frozen=True)
class Expectation:
    key: str
    value: object           # normalised: seconds for durations, Unix seconds for instants
    written: object         # as the file says it, for messages
    line: int


@dataclass(frozen=True)
class Step:
    number: int             # 1-based, as a reader counts them
    kind: str               # "check" or one of KINDS
    line: int
    value: Any              # amount, seconds, instant, event type, action or status: the kind says which
    meter: str | None
    amount: int
    expect: tuple[Expectation, ...]
    object: Mapping | None = None
    extra: str = ""         # event id, actor, or the why of an override
    at: float | None = None     # an `event:` step: the event's `created`, when it happens
    whole: bool = False         # the event came whole from a file, as Stripe sends it
    previous: Mapping | None = None     # a Stripe event's data.previous_attributes


@dataclass(frozen=True)
class Scenario:
    name: str
    file: str
    start: float
    subject: str
    meter: str | None
    steps: tuple[Step, ...]


class _Bad(ValueError):
    """A value that does not fit; the reader adds where it is."""


def looks_like_scenario(text: str, file: str) -> bool:
    """Whether a YAML text is a scenario (a mapping with `steps`) rather than a plan. One that is not valid YAML
    is a scenario when a line begins with `steps:` (no plan has such a key), so that its YAML error is reported
    as the scenario's, not as a broken plan's."""
    doc, _ = parse_yaml(text, file)
    if doc is None:
        return _STEPS_LINE.search(text) is not None
    return isinstance(doc.data, Mapping) and "steps" in doc.data


_STEPS_LINE = re.compile(r"^steps[ \t]*:", re.MULTILINE)


def parse_scenario(text: str, file: str, table: StateTable) -> Scenario:
    """The scenario a text describes, checked against the plan; ScenarioError lists every problem."""
    doc, findings = parse_yaml(text, file)
    if doc is None:
        raise ScenarioError([(f.location, _in_scenario_words(f.message)) for f in findings])
    return _Reader(doc, table).scenario()


def _in_scenario_words(message: str) -> str:
    """The YAML reader speaks of plans; a few of its messages need other words here."""
    if message.startswith("the file is empty"):
        return "the file is empty: a scenario needs a name, a start and steps"
    return message.replace("a plan is one document", "a scenario is one document")


class _Reader:
    def __init__(self, doc: YamlDocument, table: StateTable):
        self.doc = doc
        self.table = table
        self.problems: list[tuple[Location, str]] = []
        self.plans = {table.version: table.plan}    # every plan of the story so far: a later one keeps their quotas
        self.superseded: dict[str, float] = {}       # when each of them last stopped being the story's plan
        self.clock: float | None = None               # the story's clock at the step being read

    def problem(self, path: tuple, message: str, key: bool = False) -> None:
        loc = self.doc.key_location(path) if key else self.doc.locate(path)
        self.problems.append((loc, message))

    def scenario(self) -> Scenario:
        data = self.doc.data
        if not isinstance(data, Mapping):
            raise ScenarioError([(self.doc.locate(()), "a scenario is a mapping with name, start and steps")])
        if "statuses" in data and "transitions" in data and "steps" not in data:
            raise ScenarioError([(self.doc.locate(()), "this is a plan, not a scenario: name the plan first, then "
                                                        "its scenarios (plangate test PLAN SCENARIO ...)")])
        for key in data:
            if key not in TOP_KEYS:
                self.problem((key,), f"unknown key '{key}'; a scenario has {', '.join(TOP_KEYS)}", key=True)
        name = self.text(data, ("name",), required=True)
        start = self.field(data, ("start",), _instant, required=True)
        subject = self.text(data, ("subject",)) or DEFAULT_SUBJECT
        meter = self.field(data, ("meter",), self._meter)
        if meter is None and len(self.table.meters) == 1:
            meter = self.table.meters[0]
        steps = self.steps(data, start, meter)
        if self.problems or name is None:
            raise ScenarioError(self.problems)
        return Scenario(name, self.doc.file, start, subject, meter, steps)

    def field(self, data: Mapping, path: tuple, check, required: bool = False):
        key = path[-1]
        if key not in data:
            if required:
                self.problem(path[:-1], f"missing `{key}`")
            return None
        try:
            return check(data[key])
        except _Bad as exc:
            self.problem(path, f"{key}: {exc}")
            return None

    def text(self, data: Mapping, path: tuple, required: bool = False) -> str | None:
        return self.field(data, path, _text, required)

    def steps(self, data: Mapping, start: float | None, meter: str | None) -> tuple[Step, ...]:
        raw = data.get("steps")
        if not isinstance(raw, list) or not raw:
            what = "steps:" if "steps" in data else "missing `steps`:"
            self.problem(("steps",), f"{what} a list of at least one step (`- consume: 1`, `- wait: 1d`, ...)")
            return ()
        out, clock = [], start
        for i, item in enumerate(raw):
            self.clock = clock
            step = self.step(i, item, meter)
            if step is None:
                continue
            clock = self.clock_after(step, clock)
            out.append(step)
        return tuple(out)

    def clock_after(self, step: Step, clock: float | None) -> float | None:
        """The virtual time after a step: it is known before running, so time going back is an error."""
        if clock is None:
            return None
        if step.kind == "wait":
            return clock + step.value
        if step.kind == "event" and step.at is not None:
            return max(clock, step.at)
        if step.kind == "until":
            if step.value < clock:
                self.problem(("steps", step.number - 1, "until"),
                             f"until: {_iso(step.value)} is before the scenario's clock ({_iso(clock)}); "
                             "time only moves forward")
                return clock
            return step.value
        return clock

    def step(self, i: int, item, meter: str | None) -> Step | None:
        path = ("steps", i)
        if not isinstance(item, Mapping):
            self.problem(path, f"step {i + 1}: a step is a mapping, e.g. `- consume: 1` or `- wait: 1d`")
            return None
        kinds = [k for k in KINDS if k in item]
        if len(kinds) > 1:
            self.problem(path, f"step {i + 1} has several kinds ({', '.join(kinds)}); split it into steps")
            return None
        kind = kinds[0] if kinds else "check"
        allowed = _EXTRA_KEYS[kind]
        known = True
        for key in item:
            if key != kind and key not in allowed:
                self.problem(path + (key,), _unknown_step_key(key, kind, allowed), key=True)
                known = False
        if known and kind == "check" and "expect" not in item:
            self.problem(path, f"step {i + 1} does nothing: give it a kind ({', '.join(KINDS)}) or an `expect:`")
            known = False
        if not known:
            return None
        return self.build_step(i, item, kind, meter)

    def build_step(self, i: int, item: Mapping, kind: str, meter: str | None) -> Step | None:
        path = ("steps", i)
        before = len(self.problems)
        value = self.field(item, path + (kind,), self._kind_check(kind)) if kind != "check" else None
        step_meter = self.field(item, path + ("meter",), self._meter) or meter
        amount = self.field(item, path + ("amount",), _amount) or 1
        if kind == "consume":
            amount = value
        expect = self.expectations(item, path)
        obj, extra, at, previous = None, "", None, None
        if kind == "stripe":
            obj = self.stripe_object(item, path, value)
            previous = self.previous_attributes(item, path)
            extra = self.text(item, path + ("id",)) or ""
        elif kind == "event" and value is not None:
            previous = value["data"].get("previous_attributes")
            previous = previous if isinstance(previous, Mapping) else None
            value, obj, extra, at = value["type"], value["data"]["object"], value.get("id") or "", value["created"]
        elif kind in ("admin", "override"):
            extra = self.text(item, path + ("actor" if kind == "admin" else "why",)) or ""
        elif kind == "grant":
            obj = {"expires_after": self.field(item, path + ("expires_after",), _duration)}
            if step_meter is not None and not self.table.has_credits(step_meter):
                self.problem(path, f"step {i + 1} grants {step_meter} credits, but the plan has no credits of "
                                   f"{step_meter} (add `credits: {{{step_meter}: ...}}` to the plan)")
        needs_meter = kind in ("check", "consume", "grant") or any(e.key in _DECISION_KEYS for e in expect)
        if needs_meter and step_meter is None:
            self.problem(path, f"step {i + 1} needs a meter: the plan has several "
                               f"({', '.join(self.table.meters)}); add `meter:` to the step or the scenario")
        if len(self.problems) > before:
            return None
        line = self.doc.locate(path).line
        return Step(i + 1, kind, line, value, step_meter, amount, expect, obj, extra, at, kind == "event", previous)

    def _kind_check(self, kind: str):
        return {"consume": _amount, "wait": _duration, "until": _instant, "stripe": _event_type,
                "event": self._event_file, "admin": self._action, "override": self._status, "plan": self._plan,
                "feature": self._feature, "grant": _amount, "traits": _traits}[kind]

    def _event_file(self, value) -> dict:
        """A whole Stripe event, as Stripe sends it, from a JSON file named relative to the story."""
        if not isinstance(value, str) or not value.strip():
            raise _Bad(f"{_show(value)} is not a file name: write the path of a Stripe event's JSON file")
        path = Path(self.doc.file).parent / value
        try:
            event = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _Bad(f"cannot read {path} ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise _Bad(f"{path} is not JSON: {exc}") from None
        data = event.get("data") if isinstance(event, Mapping) else None
        if not (isinstance(data, Mapping) and isinstance(data.get("object"), Mapping)):
            raise _Bad(f"{path} is not a Stripe event: it needs data.object")
        created = event.get("created")
        if not isinstance(created, int) or isinstance(created, bool) or not 0 < created < 10_000_000_000:
            raise _Bad(f"{path}: created must be Unix seconds, as Stripe sends it, not {_show(created)}")
        _event_type(event.get("type"))
        return event

    def _plan(self, value) -> StateTable:
        """A plan change mid-story: the file (beside the scenario) deployed at this step's time, with the story's
        earlier plans as older versions; the steps after it are read against it."""
        path = Path(self.doc.file).parent / _text(value)
        try:
            plan = load_plan(path)
        except PlanFileError as exc:
            raise _Bad(str(exc)) from None
        except PlanError:
            raise _Bad(f"the plan {path} has errors; fix them first (plangate lint {path})") from None
        at = self.clock or 0.0
        if table_before := self.table:
            self.superseded[table_before.version] = at
        table = compile_plan(plan, dict(self.plans), at, self.superseded)
        self.plans[table.version] = plan
        self.table = table
        return table

    def expectations(self, item: Mapping, path: tuple) -> tuple[Expectation, ...]:
        raw = item.get("expect")
        if raw is None:
            return ()
        if not isinstance(raw, Mapping) or not raw:
            self.problem(path + ("expect",), "expect: a mapping of what to check, e.g. {status: paid, allowed: true}")
            return ()
        out = []
        for key, written in raw.items():
            where = path + ("expect", key)
            check = self._expectation_check(key)
            if check is None:
                self.problem(where, f"unknown expectation '{key}'; one of {', '.join(EXPECTATION_KEYS)}", key=True)
                continue
            try:
                out.append(Expectation(key, check(written), written, self.doc.key_location(where).line))
            except _Bad as exc:
                self.problem(where, f"{key}: {exc}")
        return tuple(out)

    def _expectation_check(self, key: str):
        return {"status": self._status, "tier": self._tier, "allowed": _bool, "moved": _bool,
                "reason": _reason, "remaining": _count, "used": _count, "limit": _count,
                "retry_after": _seconds_or_none, "timer": _timer, "resets_at": _instant_or_none,
                "kept": _kept, "credits": _count, "credits_used": _count, "overage": _count}.get(key)

    def stripe_object(self, item: Mapping, path: tuple, event: str | None) -> dict:
        obj = item.get("object", {})
        if not isinstance(obj, Mapping):
            self.problem(path + ("object",), "object: a mapping of the event object's fields")
            return {}
        obj = _times(dict(obj))
        if event:
            obj.setdefault("object", implied_object(event))
            if obj["object"] == "checkout.session":
                obj.setdefault("mode", "subscription")  # a story's Checkout is of a subscription unless it says
            elif event in PAID_INVOICE_EVENTS:
                obj.setdefault("status", "paid")        # as Stripe's invoice.paid always says
        price = self.text(item, path + ("price",))
        period = self.field(item, path + ("period",), _period)
        quantity = self.field(item, path + ("quantity",), _quantity)
        if quantity is not None and price is None:
            self.problem(path + ("quantity",), "quantity: goes with `price:` (the quantity of that price's item)")
        if price is not None or period is not None:
            sub_item: dict = {}
            if price is not None:
                sub_item["price"] = {"id": price}
                sub_item["quantity"] = 1 if quantity is None else quantity
            if period is not None:
                sub_item["current_period_start"], sub_item["current_period_end"] = period
            obj["items"] = {"object": "list", "data": [sub_item]}
        return obj

    def previous_attributes(self, item: Mapping, path: tuple) -> dict | None:
        """A stripe step's `previous_attributes:`: what the fields that changed said before, as Stripe's
        *.updated events carry it (times written as in `object:`)."""
        if "previous_attributes" not in item:
            return None
        previous = item["previous_attributes"]
        if not isinstance(previous, Mapping):
            self.problem(path + ("previous_attributes",),
                         "previous_attributes: a mapping of the fields that changed, with what they said before")
            return None
        return _times(dict(previous))

    # --- names the plan must know ---------------------------------------------------------------

    def _meter(self, value) -> str:
        return _one_of(value, self.table.meters, "meter")

    def _status(self, value) -> str:
        return _one_of(value, self.table.statuses, "status")

    def _tier(self, value) -> str | None:
        return None if value is None else _one_of(value, tuple(t.name for t in self.table.plan.tiers), "tier")

    def _action(self, value) -> str:
        return _one_of(value, self.table.actions, "admin action")

    def _feature(self, value) -> str:
        return _one_of(value, self.table.features.names, "feature")


EXPECTATION_KEYS = ("status", "tier", "allowed", "reason", "remaining", "used", "limit", "moved",
                    "retry_after", "timer", "resets_at", "kept", "credits", "credits_used", "overage")
_DECISION_KEYS = frozenset({"allowed", "reason", "remaining", "used", "limit", "retry_after", "resets_at",
                            "credits", "credits_used", "overage"})


def implied_object(event: str) -> str:
    """The `object` field Stripe puts in an event's data.object: customer.subscription.updated ->
    subscription, invoice.paid -> invoice, checkout.session.completed -> checkout.session."""
    prefix = event.rsplit(".", 1)[0]
    return prefix.split(".", 1)[1] if prefix.startswith("customer.") else prefix


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _times(value):
    """An object written in a story, with times written as "2026-01-12T09:00:00Z" turned into the Unix seconds
    Stripe sends (trial_end, cancel_at, ...)."""
    if isinstance(value, Mapping):
        return {k: _times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_times(v) for v in value]
    if isinstance(value, str) and _ISO_TIME.fullmatch(value):
        return int(datetime.fromisoformat(value).timestamp())
    return value


def _unknown_step_key(key: str, kind: str, allowed: set) -> str:
    if kind == "check" and key not in allowed:
        return (f"unknown step kind '{key}'; a step is one of {', '.join(KINDS)}, "
                "or `expect:` alone (a check)")
    return f"unknown key '{key}' in a {kind} step; it may carry {', '.join(sorted(allowed))}"


def _one_of(value, known: tuple, what: str) -> str:
    if not isinstance(value, str) or value not in known:
        raise _Bad(f"unknown {what} {_show(value)}; the plan knows {', '.join(known) or 'none'}")
    return value


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"{_show(value)} is not text")
    return value


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"{_show(value)} is not true or false")
    return value


def _amount(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _Bad(f"{_show(value)} is not a whole number of at least 1")
    return value


def _quantity(value) -> int:
    """A subscription item's quantity: Stripe takes 0 (a per-seat subscription with every seat given up)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Bad(f"{_show(value)} is not a whole number (0 or more)")
    return value


def _count(value) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Bad(f"{_show(value)} is not a whole number (or null for unlimited)")
    return value


def _duration(value) -> int:
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise _Bad(str(exc)) from None


def _seconds_or_none(value) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    return _duration(value)


def _timer(value) -> bool | int:
    return value if isinstance(value, bool) else _duration(value)


def _reason(value) -> str:
    known = tuple(r.value for r in Reason)
    if value not in known:
        raise _Bad(f"unknown reason {_show(value)}; reasons are {', '.join(known)}")
    return value


def _traits(value) -> dict:
    if not isinstance(value, Mapping) or not value or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
        raise _Bad("write the subject's traits as {name: number, ...}, e.g. {seats: 5}")
    return dict(value)


def _event_type(value) -> str:
    if not isinstance(value, str) or not is_known_event(value):
        raise _Bad(f"{_show(value)} is not a Stripe event type (check the spelling, e.g. invoice.paid)")
    return value


def _kept(value) -> str | None:
    if value not in (None, "at_renewal", "never"):
        raise _Bad(f"{_show(value)} is not what keeps a subject on an older plan: null, at_renewal or never")
    return value


def _instant(value) -> float:
    if not isinstance(value, str):
        raise _Bad(f"{_show(value)} is not a time: write it in quotes, e.g. \"2026-01-05T09:00:00Z\"")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(f"'{value}' is not a time: write it like \"2026-01-05T09:00:00Z\"") from None
    if moment.tzinfo is None:
        raise _Bad(f"'{value}' has no time zone: end it with Z (UTC) or an offset like +01:00")
    if not 0 <= moment.timestamp() < LAST_INSTANT:
        raise _Bad(f"'{value}' is not between 1970 and the year 9000, where a story's clock runs")
    return moment.timestamp()


def _instant_or_none(value) -> float | None:
    return None if value is None else _instant(value)


def _period(value) -> tuple[int, int]:
    if not isinstance(value, Mapping) or set(value) != {"start", "end"}:
        raise _Bad("write the billing period as {start: \"...\", end: \"...\"}")
    start, end = _instant(value["start"]), _instant(value["end"])
    if end <= start:
        raise _Bad("the period's end must come after its start")
    return int(start), int(end)


def _show(value) -> str:
    """A value as YAML would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"'{value}'" if isinstance(value, str) else str(value)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
