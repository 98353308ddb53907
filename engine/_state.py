"""A subject's state: the small value every decision and transition starts from."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Where one subject stands. Times are Unix seconds (floats)."""

    subject: str
    status: str
    tier: str | None = None
    since: float = 0.0
    timer_due: float | None = None       # when the status's expires_after runs out, if it has one
    period_start: float | None = None    # the Stripe billing period, when subscribed
    period_end: float | None = None
    plan_version: str = ""
    paid_through: float | None = None    # end of the last period Stripe reported paid: grace lasts at least until then

    def with_(self, **changes) -> "SubjectState":
        return replace(self, **changes)
