"""A subject's state: the small value every decision and transition starts from."""
from __future__ import annotations

from dataclasses import dataclass

from ._subscriptions import Subscription, followed


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Where one subject stands. Times are Unix seconds (floats)."""

    subject: str
    status: str
    tier: str | None = None
    since: float = 0.0
    timer_due: float | None = None       # when the status's timer (expires_after or expires_at) runs out
    period_start: float | None = None    # the Stripe billing period, when subscribed
    period_end: float | None = None
    plan_version: str = ""
    paid_through: float | None = None    # end of the last period Stripe reported paid: grace lasts at least until then
    trial_end: float | None = None       # the followed subscription's dates a status timer may be anchored to
    cancel_at: float | None = None
    subscriptions: tuple[Subscription, ...] = ()   # every Stripe subscription of the subject the fold has seen
    quantity: int | None = None          # the followed subscription's quantity of its tier's item (seats)
    addons: tuple[tuple[str, int], ...] = ()   # add-ons its live subscriptions buy: (name, quantity), by name
    traits: tuple[tuple[str, int], ...] = ()   # numbers set on the subject through the API (a quota per_unit)

    def trait(self, name: str) -> int | None:
        for key, value in self.traits:
            if key == name:
                return value
        return None

    @property
    def follows(self) -> Subscription | None:
        """The subscription the status follows (engine._subscriptions says which)."""
        return followed(self.subscriptions)

    def with_(self, **changes) -> SubjectState:
        """A copy with some fields changed, as dataclasses.replace, which looks the fields up on every call
        (3.8 us a copy; this 2.5, of which the frozen __init__ is 1.8). Each transition makes one or two."""
        get = changes.pop
        new = SubjectState(get("subject", self.subject), get("status", self.status), get("tier", self.tier),
                           get("since", self.since), get("timer_due", self.timer_due),
                           get("period_start", self.period_start), get("period_end", self.period_end),
                           get("plan_version", self.plan_version), get("paid_through", self.paid_through),
                           get("trial_end", self.trial_end), get("cancel_at", self.cancel_at),
                           get("subscriptions", self.subscriptions), get("quantity", self.quantity),
                           get("addons", self.addons), get("traits", self.traits))
        if changes:
            raise TypeError(f"SubjectState has no field {', '.join(map(repr, changes))}")
        return new
