"""Decisions that explain themselves: allowed or not, why, and by which rule of the plan."""
from __future__ import annotations

import enum

# The most a decision says of a limit, a window's usage or a credit balance: a plan's limit scaled by a trait or a
# quantity stops here, a window counts no more, and a balance made of more (grants are each at most 10**15, but
# 9,224 of those pass 2**63 - 1) says this much while its grants are still spent one by one. With a count added it
# stays far inside the stores' 64-bit integers.
MOST = 2**62


class Reason(enum.StrEnum):
    """Why a decision went as it did. A member is its own text (a str): answers, logs and metric labels take
    it as it is, with no look-up of `.value`, which is a property (a Python call on every decision)."""

    OK = "ok"                              # within the quota (or unlimited)
    QUOTA_EXHAUSTED = "quota_exhausted"    # the amount does not fit in what is left of the window
    STATUS_DENIES = "status_denies"        # the status allows no work (access: deny)
    NO_QUOTA = "no_quota"                  # the status names no quota for this meter
    NOT_ENTITLED = "not_entitled"          # the feature is granted neither by the status, nor its tier, nor an add-on
    DISABLED = "disabled"                  # enforcement is off: every check allowed
    KILL_SWITCH = "kill_switch"            # an operator stopped all paid work
    FAIL_OPEN = "fail_open"                # the store could not be read; the plan says let work through
    FAIL_CLOSED = "fail_closed"            # the store could not be read; the plan says stop


class Decision:
    """One answer to "may this subject do this much of this meter now?".

    `rule` names what decided, e.g. "plans.yaml:59 statuses.limited_free_trial.quotas.requests".
    Times are Unix seconds; `resets_at` is None for windows that never reset. A feature's decision has
    `feature` and no meter. Past a limit: `credits` is the subject's balance after the work (None when the
    credits were not looked at), `credits_used` what the work takes of it, `overage` how much of the work is
    billed as overage.
    """

    __slots__ = ("allowed", "reason", "status", "tier", "meter", "limit", "used", "remaining",
                 "window_start", "resets_at", "retry_after", "rule", "feature", "credits", "credits_used", "overage")

    def __init__(self, allowed, reason, status, tier, meter, limit, used, remaining,
                 window_start, resets_at, retry_after, rule, feature=None, credits=None, credits_used=0, overage=0):
        self.allowed = allowed
        self.reason = reason
        self.status = status
        self.tier = tier
        self.meter = meter
        self.limit = limit
        self.used = used
        self.remaining = remaining
        self.window_start = window_start
        self.resets_at = resets_at
        self.retry_after = retry_after
        self.rule = rule
        self.feature = feature
        self.credits = credits
        self.credits_used = credits_used
        self.overage = overage

    def to_dict(self) -> dict:
        return {
            "allowed": self.allowed,
            "reason": self.reason.value,
            "status": self.status,
            "tier": self.tier,
            "meter": self.meter,
            "limit": self.limit,
            "used": self.used,
            "remaining": self.remaining,
            "window_start": self.window_start,
            "resets_at": self.resets_at,
            "retry_after": self.retry_after,
            "rule": self.rule,
            "feature": self.feature,
            "credits": self.credits,
            "credits_used": self.credits_used,
            "overage": self.overage,
        }

    def __eq__(self, other) -> bool:
        return isinstance(other, Decision) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        verdict = "allowed" if self.allowed else "denied"
        if self.feature is not None:
            return (f"<Decision {verdict} {self.reason.value} status={self.status} feature {self.feature} "
                    f"rule={self.rule}>")
        return (f"<Decision {verdict} {self.reason.value} status={self.status} {self.meter} "
                f"used={self.used}/{self.limit} rule={self.rule}>")


def override(reason: Reason, allowed: bool, status: str | None, tier: str | None, meter: str | None,
             rule: str) -> Decision:
    """A decision not made by a quota: enforcement off, kill switch, or a fail mode (meter None: a feature's)."""
    return Decision(allowed, reason, status, tier, meter, None, None, None, None, None, None, rule)
