"""What a plan grants beyond a status's quotas, as frozen values: features, add-ons, credits and overage.

Names that refer to other parts (a feature a tier lists, a meter credits are in) are kept as written; the rules
in _entitlement_rules report those that do not resolve.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ._findings import Location

# The entry of a status's `features` that stands for the tier's features (and its live add-ons').
TIER_FEATURES = "tier"


class Anchoring(enum.Enum):
    """Where a day, week or month window starts."""

    CALENDAR = "calendar"      # midnight in the plan's time zone (weeks on Monday, months on the 1st)
    BILLING = "billing"        # the subscription's billing anniversary


class OnCancel(enum.Enum):
    KEEP = "keep"              # credits outlive the subscription
    FORFEIT = "forfeit"        # credits granted before the subscription ended cannot be spent


@dataclass(frozen=True, slots=True)
class Overage:
    """Work past a quota's limit (and the subject's credits) is allowed and billed: up to `up_to` more a window,
    or without bound (None)."""

    up_to: int | None = None

    def describe(self) -> str:
        return "unbounded overage" if self.up_to is None else f"overage up to {self.up_to} more"


@dataclass(frozen=True, slots=True)
class PerUnit:
    """A limit multiplied by a number of units: the subscription item's quantity (seats), or a trait set on the
    subject through the API."""

    trait: str | None = None   # None: the subscription item's quantity

    def describe(self) -> str:
        return "per seat (the subscription's quantity)" if self.trait is None else f"per unit of trait '{self.trait}'"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    description: str
    location: Location = field(compare=False)


@dataclass(frozen=True, slots=True)
class Addon:
    """A price bought beside a tier: its features, and per meter what it adds to the tier's limit (per unit of
    its quantity)."""

    name: str
    prices: tuple[str, ...]
    features: tuple[str, ...]
    quotas: tuple[tuple[str, int], ...]
    location: Location = field(compare=False)
    description: str = ""

    def adds(self, meter: str) -> int:
        return dict(self.quotas).get(meter, 0)


@dataclass(frozen=True, slots=True)
class PeriodGrant:
    """Credits a tier grants for each window, the unspent part carried into the next up to `rollover`."""

    meter: str
    amount: int
    window: str                # a policy Window's value: day, week, month, billing_period
    rollover: int
    location: Location = field(compare=False)

    def describe(self) -> str:
        carry = f", up to {self.rollover} unspent carried over" if self.rollover else ", unspent ones lapse"
        return f"{self.amount} credits per {self.window.replace('_', ' ')}{carry}"


@dataclass(frozen=True, slots=True)
class CreditRule:
    """The credits of one meter: the Checkout prices that buy them, how long bought credits last, their
    priority, and whether they outlive the subscription."""

    meter: str
    packs: tuple[tuple[str, int], ...]     # (price, credits per unit)
    expires_after: int | None              # seconds; None: never (or unparsable: reported by the rules)
    expires_after_text: str | None
    priority: int
    on_cancel: OnCancel
    location: Location = field(compare=False)
    description: str = ""

    def pack(self, price: str) -> int | None:
        return dict(self.packs).get(price)


# Default priorities (a lower number is spent first): a tier's grants lapse at their window's end, so they go
# first; an admin's next; bought credits last, as they are what the customer paid for.
PERIOD_PRIORITY = 1
ADMIN_PRIORITY = 5
PURCHASE_PRIORITY = 10
