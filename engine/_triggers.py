"""What can move a subject: a Stripe event, its status's timer, or an admin action; and what it did."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._state import SubjectState


@dataclass(frozen=True, slots=True)
class StripeEvent:
    type: str
    object: Mapping = field(default_factory=dict)
    id: str = ""
    created: float = 0.0

    @property
    def key(self) -> str:
        return f"stripe:{self.type}"

    def __str__(self) -> str:
        return self.key + (f" ({self.id})" if self.id else "")


@dataclass(frozen=True, slots=True)
class TimerFired:
    key = "timer"

    def __str__(self) -> str:
        return "timer"


@dataclass(frozen=True, slots=True)
class AdminAction:
    action: str
    actor: str = ""

    @property
    def key(self) -> str:
        return f"admin:{self.action}"

    def __str__(self) -> str:
        return self.key


Trigger = StripeEvent | TimerFired | AdminAction


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a trigger did. `moved` when the status changed; `rule` names the transition of the plan
    that moved it (None for a no-op or an admin's direct override). A no-op may still update facts
    in `state` (a subscription's tier and billing period, what the gate knows of each subscription)."""

    before: SubjectState
    state: SubjectState
    trigger: str
    reason: str
    moved: bool = False
    rule: str | None = None
    other_subscription: bool = False    # about a subscription the subject's status does not follow, and it stayed

    @property
    def changed(self) -> bool:
        return self.state != self.before

    @property
    def timer_set(self) -> float | None:
        return self.state.timer_due if self.moved else None

    @property
    def timer_cleared(self) -> bool:
        return self.moved and self.before.timer_due is not None and self.state.timer_due is None
