"""The plan as frozen values, built from a schema-valid document.

Names that refer to other parts (a transition's statuses, a quota's meter)
are kept as written; the rules in _rules report those that do not resolve.
"""
from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import _conditions
from ._conditions import Node
from ._durations import DurationError, parse_duration
from ._entitlements import (PURCHASE_PRIORITY, Addon, Anchoring, CreditRule, Feature, OnCancel, Overage, PerUnit,
                            PeriodGrant)
from ._findings import Location
from ._yaml import Document

ANY = "any"
# The subscription's dates a status timer can be anchored to (`expires_at: trial_end + 2h`).
ANCHORS = ("trial_end", "current_period_end", "cancel_at")
_ANCHOR_FORM = re.compile(r"\s*([a-z_]+)\s*(?:([+-])\s*(.*?))?\s*")


class Window(enum.Enum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    BILLING_PERIOD = "billing_period"
    LIFETIME = "lifetime"


class Access(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


class FailMode(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


class QuotaKind(enum.Enum):
    LIMIT = "limit"
    UNLIMITED = "unlimited"
    TIER = "tier"


class SubscriptionScope(enum.Enum):
    """Which of a subject's Stripe subscriptions a transition listens to (see engine._subscriptions)."""

    FOLLOWED = "followed"    # the one the subject's status follows (and events about no subscription)
    OTHER = "other"          # only the subject's other subscriptions (an add-on, the old one after a re-subscribe)
    ENDED = "ended"          # only its subscriptions that have ended (an invoice paid after the end)
    ANY = "any"              # every subscription of the subject


class TriggerKind(enum.Enum):
    STRIPE = "stripe"
    TIMER = "timer"
    ADMIN = "admin"


class ExistingSubscribers(enum.Enum):
    """When a tier's quotas change, what subscribers already on the tier get."""

    NOW = "now"                 # the new quotas at once
    AT_RENEWAL = "at_renewal"   # the new quotas from their next billing period
    NEVER = "never"             # the quotas they subscribed under, until an admin upgrades them


@dataclass(frozen=True, slots=True)
class Quota:
    meter: str
    kind: QuotaKind
    limit: int | None = None
    window: Window | None = None
    location: Location | None = field(default=None, compare=False)
    anchor: Anchoring = Anchoring.CALENDAR
    per_unit: PerUnit | None = None
    overage: Overage | None = None

    def describe(self) -> str:
        if self.kind is QuotaKind.LIMIT and self.window is not None:
            text = f"{self.limit} per {self.window.value.replace('_', ' ')}"
            if self.anchor is Anchoring.BILLING:
                text += " from the billing anniversary"
            if self.per_unit is not None:
                text += " " + self.per_unit.describe()
            if self.overage is not None:
                text += ", then " + self.overage.describe()
            return text
        return "the tier's quota" if self.kind is QuotaKind.TIER else "unlimited"


@dataclass(frozen=True, slots=True)
class Meter:
    name: str
    description: str
    fail_mode: FailMode
    location: Location = field(compare=False)
    stripe_meter: str | None = None     # the Stripe billing meter's event name overage is reported to


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    prices: tuple[str, ...]
    quotas: tuple[Quota, ...]
    location: Location = field(compare=False)
    renamed_from: tuple[str, ...] = ()
    existing_subscribers: ExistingSubscribers = ExistingSubscribers.NOW
    features: tuple[str, ...] = ()
    credits: tuple[PeriodGrant, ...] = ()

    def quota(self, meter: str) -> Quota | None:
        return next((q for q in self.quotas if q.meter == meter), None)


@dataclass(frozen=True, slots=True)
class Anchor:
    """A timer set to a date of the subscription, moved by `slack` seconds (`trial_end + 2h`)."""

    date: str           # one of ANCHORS
    slack: int          # seconds; negative: before the date
    text: str           # as written

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """DurationError when the slack is not a duration; the schema has checked the date's name."""
        match = _ANCHOR_FORM.fullmatch(text)
        if match is None or match.group(1) not in ANCHORS:
            raise DurationError(f"{text!r} is not a date of the subscription; use one of {', '.join(ANCHORS)}")
        date, sign, slack = match.groups()
        seconds = parse_duration(slack) if sign else 0
        return cls(date, -seconds if sign == "-" else seconds, text)


@dataclass(frozen=True, slots=True)
class Status:
    name: str
    description: str
    initial: bool
    access: Access
    quotas: tuple[Quota, ...]
    expires_after: int | None          # seconds; None when no timer or unparsable
    expires_after_text: str | None     # as written, for messages and views
    terminal: bool
    paying: bool
    grace: bool
    fail_modes: tuple[tuple[str, FailMode], ...]
    location: Location = field(compare=False)
    expires_at: Anchor | None = None   # a timer on a subscription date; None when none or unparsable
    expires_at_text: str | None = None
    trial: bool = False
    features: tuple[str, ...] = ()     # feature names; TIER_FEATURES for the tier's (and its add-ons')

    @property
    def has_timer(self) -> bool:
        return self.expires_after_text is not None or self.expires_at_text is not None
    renamed_from: tuple[str, ...] = ()

    @property
    def allows(self) -> bool:
        return self.access is Access.ALLOW

    def quota(self, meter: str) -> Quota | None:
        for q in self.quotas:
            if q.meter == meter:
                return q
        return None


@dataclass(frozen=True, slots=True)
class Trigger:
    kind: TriggerKind
    name: str = ""         # event type for stripe, action for admin, "" for timer

    @classmethod
    def parse(cls, text: str) -> Trigger:
        if text == "timer":
            return cls(TriggerKind.TIMER)
        kind, _, name = text.partition(":")
        return cls(TriggerKind(kind), name)

    def __str__(self) -> str:
        return "timer" if self.kind is TriggerKind.TIMER else f"{self.kind.value}:{self.name}"


@dataclass(frozen=True, slots=True)
class Transition:
    index: int
    sources: tuple[str, ...]       # as written; ("any",) for any
    trigger: Trigger
    conditions: tuple[Node, ...]       # all must hold; see _conditions
    target: str
    description: str
    location: Location = field(compare=False)
    subscription: SubscriptionScope = SubscriptionScope.FOLLOWED

    @property
    def from_any(self) -> bool:
        return self.sources == (ANY,)


@dataclass(frozen=True, slots=True)
class SubjectLink:
    client_reference_id: bool = True
    metadata_key: str | None = None


@dataclass(frozen=True, slots=True)
class Retired:
    """Names removed from the plan and where their stored subjects go: (old name, new name) pairs."""

    statuses: tuple[tuple[str, str], ...] = ()
    tiers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    file: str
    version: int
    timezone: str
    meters: tuple[Meter, ...]
    tiers: tuple[Tier, ...]
    default_tier: str | None
    statuses: tuple[Status, ...]
    transitions: tuple[Transition, ...]
    subject_link: SubjectLink
    document: Document = field(compare=False, repr=False)
    retired: Retired = Retired()
    features: tuple[Feature, ...] = ()
    addons: tuple[Addon, ...] = ()
    credits: tuple[CreditRule, ...] = ()

    def credit(self, meter: str) -> CreditRule | None:
        return next((c for c in self.credits if c.meter == meter), None)

    def addon(self, name: str) -> Addon | None:
        return next((a for a in self.addons if a.name == name), None)

    def status(self, name: str) -> Status | None:
        return next((s for s in self.statuses if s.name == name), None)

    def meter(self, name: str) -> Meter | None:
        return next((m for m in self.meters if m.name == name), None)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    @property
    def initial(self) -> Status | None:
        return next((s for s in self.statuses if s.initial), None)

    def sources_of(self, transition: Transition) -> tuple[str, ...]:
        """The statuses a transition leaves from: `any` means every status that is not terminal."""
        if transition.from_any:
            return tuple(s.name for s in self.statuses if not s.terminal)
        return transition.sources


def version_of(plan: Plan) -> str:
    """The plan's version: a hash of what the document says (not of its text: comments and layout do not
    change it). The gate records it with every subject and transition."""
    canonical = json.dumps(plan.document.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def build(doc: Document) -> Plan:
    """The model of a document that passed the schema."""
    data: Any = doc.data
    meters = tuple(
        Meter(name, m.get("description", ""), FailMode(m.get("fail_mode", "closed")),
              doc.key_location(("meters", name)), m.get("stripe_meter"))
        for name, m in data["meters"].items())
    tiers = tuple(
        Tier(name, tuple(t["prices"]), _quotas(doc, ("tiers", name, "quotas"), t.get("quotas", {})),
             doc.key_location(("tiers", name)), tuple(t.get("renamed_from", ())),
             ExistingSubscribers(t.get("existing_subscribers", "now")), tuple(t.get("features", ())),
             tuple(PeriodGrant(meter, g["amount"], g["per"], g.get("rollover", 0),
                               doc.key_location(("tiers", name, "credits", meter)))
                   for meter, g in t.get("credits", {}).items()))
        for name, t in data.get("tiers", {}).items())
    retired = data.get("retired", {})
    statuses = tuple(_status(doc, name, s) for name, s in data["statuses"].items())
    transitions = tuple(_transition(doc, i, t) for i, t in enumerate(data["transitions"]))
    link = data.get("stripe", {}).get("subject", {})
    return Plan(
        file=doc.file,
        version=data["version"],
        timezone=data.get("timezone", "UTC"),
        meters=meters,
        tiers=tiers,
        default_tier=data.get("default_tier"),
        statuses=statuses,
        transitions=transitions,
        subject_link=SubjectLink(link.get("client_reference_id", True), link.get("metadata_key")),
        document=doc,
        retired=Retired(tuple(retired.get("statuses", {}).items()), tuple(retired.get("tiers", {}).items())),
        features=tuple(Feature(name, f.get("description", ""), doc.key_location(("features", name)))
                       for name, f in data.get("features", {}).items()),
        addons=tuple(Addon(name, tuple(a["prices"]), tuple(a.get("features", ())), tuple(a.get("quotas", {}).items()),
                           doc.key_location(("addons", name)), a.get("description", ""))
                     for name, a in data.get("addons", {}).items()),
        credits=tuple(_credit(doc, meter, c) for meter, c in data.get("credits", {}).items()),
    )


def _credit(doc: Document, meter: str, c: dict) -> CreditRule:
    expires = c.get("expires_after")
    try:
        seconds = parse_duration(expires) if expires is not None else None
    except DurationError:
        seconds = None
    return CreditRule(meter, tuple(c.get("packs", {}).items()), seconds, expires,
                      c.get("priority", PURCHASE_PRIORITY), OnCancel(c.get("on_cancel", "keep")),
                      doc.key_location(("credits", meter)), c.get("description", ""))


def _quotas(doc: Document, path, raw: dict) -> tuple[Quota, ...]:
    out = []
    for meter, q in raw.items():
        where = doc.key_location(path + (meter,))
        if isinstance(q, dict):
            out.append(Quota(meter, QuotaKind.LIMIT, q["limit"], Window(q["per"]), where,
                             Anchoring(q.get("anchor", "calendar")), _per_unit(q.get("per_unit")),
                             _overage(q.get("overage"))))
        else:
            out.append(Quota(meter, QuotaKind(q), location=where))
    return tuple(out)


def _per_unit(raw) -> PerUnit | None:
    if raw is None:
        return None
    return PerUnit() if raw == "quantity" else PerUnit(raw["trait"])


def _overage(raw) -> Overage | None:
    if raw is None:
        return None
    return Overage() if raw == "unbounded" else Overage(raw["up_to"])


def _status(doc: Document, name: str, s: dict) -> Status:
    expires = s.get("expires_after")
    try:
        seconds = parse_duration(expires) if expires is not None else None
    except DurationError:
        seconds = None
    at = s.get("expires_at")
    try:
        anchor = Anchor.parse(at) if at is not None else None
    except DurationError:
        anchor = None
    return Status(
        name=name,
        description=s.get("description", ""),
        initial=s.get("initial", False),
        access=Access(s.get("access", "allow")),
        quotas=_quotas(doc, ("statuses", name, "quotas"), s.get("quotas", {})),
        expires_after=seconds,
        expires_after_text=expires,
        terminal=s.get("terminal", False),
        paying=s.get("paying", False),
        grace=s.get("grace", False),
        fail_modes=tuple((m, FailMode(v)) for m, v in s.get("fail_mode", {}).items()),
        location=doc.key_location(("statuses", name)),
        expires_at=anchor,
        expires_at_text=at,
        trial=s.get("trial", False),
        renamed_from=tuple(s.get("renamed_from", ())),
        features=tuple(s.get("features", ())),
    )


def _transition(doc: Document, index: int, t: dict) -> Transition:
    sources = t["from"]
    sources = tuple(sources) if isinstance(sources, list) else (sources,)
    conditions = _conditions.build(t.get("when", {}), ("transitions", index, "when"), doc.key_location)
    return Transition(
        index=index,
        sources=sources,
        trigger=Trigger.parse(t["on"]),
        conditions=conditions,
        target=t["to"],
        description=t.get("description", ""),
        location=doc.locate(("transitions", index)),
        subscription=SubscriptionScope(t.get("subscription", "followed")),
    )
