"""What can move a subject: a Stripe event, its status's timer, or an admin action; and what it did."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from plangate.policy import PREVIOUS

from ._state import SubjectState


@dataclass(frozen=True, slots=True)
class StripeEvent:
    type: str
    object: Mapping = field(default_factory=dict)
    id: str = ""
    created: float = 0.0
    # Stripe's data.previous_attributes (on *.updated events): what the fields that changed said before.
    previous: Mapping | None = None

    @classmethod
    def of(cls, body: Mapping, created: float | None = None) -> StripeEvent:
        """The event of a Stripe event body (type, id, created, data.object and data.previous_attributes)."""
        data = body["data"]
        obj = data["object"]
        previous = data.get(PREVIOUS) if isinstance(data, Mapping) else None
        return cls(body["type"], obj, body["id"], float(body["created"] if created is None else created),
                   previous if isinstance(previous, Mapping) else None)

    def matched(self) -> Mapping:
        """What a transition's `when:` reads: the object, and the previous attributes under PREVIOUS."""
        obj = self.object if isinstance(self.object, Mapping) else {}
        return obj if self.previous is None else _WithPrevious(obj, self.previous)

    @property
    def key(self) -> str:
        return f"stripe:{self.type}"

    @property
    def previous_status(self) -> str | None:
        """The status an update changed (None: it changed no status, or does not say)."""
        status = self.previous.get("status") if isinstance(self.previous, Mapping) else None
        return status if isinstance(status, str) else None

    def __str__(self) -> str:
        return self.key + (f" ({self.id})" if self.id else "")


class _WithPrevious(Mapping):
    """An event's object, with its previous attributes under PREVIOUS (no Stripe object has such a field)."""

    __slots__ = ("_obj", "_previous")

    def __init__(self, obj: Mapping, previous: Mapping):
        self._obj, self._previous = obj, previous

    def __getitem__(self, key):
        return self._previous if key == PREVIOUS else self._obj[key]

    def get(self, key, default=None):
        return self._previous if key == PREVIOUS else self._obj.get(key, default)

    def __contains__(self, key) -> bool:
        return key == PREVIOUS or key in self._obj

    def __iter__(self):
        yield from self._obj
        yield PREVIOUS

    def __len__(self) -> int:
        return len(self._obj) + 1


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
    ended_subscription: bool = False    # of a subscription that had ended (an invoice paid late), and it stayed

    @property
    def changed(self) -> bool:
        return self.state != self.before

    @property
    def timer_set(self) -> float | None:
        return self.state.timer_due if self.moved else None

    @property
    def timer_cleared(self) -> bool:
        return self.moved and self.before.timer_due is not None and self.state.timer_due is None
