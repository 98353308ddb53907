"""An async client for the workflow server: ask the gate before paid work, count after, with a time budget.

    async with GateClient("http://127.0.0.1:8080", token) as gate:     # admin_token=...: for transition()
        decision = await gate.consume(user_id, "requests", idempotency_key=job_id)
        if decision.allowed:
            ...

When the gate cannot answer in time (timeout, connection error, 5xx), a decision call returns a decision the
client made itself (`local=True`, reason `fail_open` or `fail_closed`), which does not know whether the gate
counted (repeat a count with its idempotency_key to find out, counted once); bad input (a 4xx) raises, because
it is a bug in the caller that must not be silently allowed. The first such decision after an answer from the
gate is logged as a warning (logger `plangate.client`, then once a minute while the gate stays silent), and the
gate's next answer after them as information: a wrong address fails open, and must not pass unseen.

Exception tree:

    GateError           anything this client raises
    GateRequestError    the gate refused the request (4xx): status, code, message
    GateUnavailable     no usable answer in time, for calls that have no fail mode (subject, transition)
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from .local_decisions import LocalDecisions, subject_path, utc

__all__ = ["GateClient", "GateDecision", "GateError", "GateRequestError", "GateUnavailable", "MeterUsage",
           "StripeSubscription", "SubjectView", "TransitionRecord", "TransitionResult"]

FAIL_OPEN = "fail_open"
FAIL_CLOSED = "fail_closed"
WARN_EVERY = 60.0       # seconds between warnings while the gate gives no answer
SNAPSHOT_SHARE = 0.25   # of a check's timeout, waited for a subject's first snapshot (local=True)
_log = logging.getLogger("plangate.client")


class GateError(Exception):
    """Anything this client raises."""


class GateRequestError(GateError):
    """The gate refused the request (4xx): fix the call; `code` is the gate's stable error code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class GateUnavailable(GateError):
    """The gate gave no usable answer within the time budget (timeout, connection error, 5xx)."""


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _moment(value: str) -> datetime:
    """A time the gate always sends."""
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The gate's answer to "may this subject do this much of this meter now?" (and, on consume and usage,
    whether it was counted), or to "is this subject entitled to this feature?" (`feature` set, `meter` None).
    `local`: the client made it up because the gate did not answer."""

    subject: str
    allowed: bool
    reason: str
    status: str | None
    tier: str | None
    meter: str | None
    amount: int
    limit: int | None
    used: int | None
    remaining: int | None
    window_start: datetime | None
    resets_at: datetime | None
    retry_after: int | None
    rule: str
    counted: bool = False
    duplicate: bool = False
    local: bool = False
    evaluated_here: bool = False    # local evaluation (GateClient(local=True)): decided in this process by the
                                    # gate's engine from a copy the gate's stream keeps current
    feature: str | None = None      # a feature check's feature (then meter is None)
    credits: int | None = None      # past the limit: the subject's credits of the meter left after this work
                                    # (None: credits were not looked at)
    credits_used: int = 0           # what this work takes of the credits
    overage: int = 0                # what this work bills as overage (past the limit and the credits, up to the cap)

    @classmethod
    def from_json(cls, body: dict) -> GateDecision:
        return cls(
            subject=body["subject"], allowed=body["allowed"], reason=body["reason"], status=body["status"],
            tier=body["tier"], meter=body["meter"], amount=body["amount"], limit=body["limit"], used=body["used"],
            remaining=body["remaining"], window_start=_time(body["window_start"]),
            resets_at=_time(body["resets_at"]), retry_after=body["retry_after"], rule=body["rule"],
            counted=body.get("counted", False), duplicate=body.get("duplicate", False),
            feature=body.get("feature"), credits=body.get("credits"), credits_used=body.get("credits_used", 0),
            overage=body.get("overage", 0))

    @classmethod
    def unanswered(cls, subject: str, meter: str | None, amount: int, fail_open: bool, why: str,
                   feature: str | None = None) -> GateDecision:
        return cls(subject=subject, allowed=fail_open, reason=FAIL_OPEN if fail_open else FAIL_CLOSED,
                   status=None, tier=None, meter=meter, amount=amount, limit=None, used=None, remaining=None,
                   window_start=None, resets_at=None, retry_after=None, rule=f"client: {why}", local=True,
                   feature=feature)


def _maker(cls):
    """cls(value, ...) with every field given in order, without the frozen dataclass's __init__: that sets each
    field through object.__setattr__ (3 µs for GateDecision's 22 fields, more than deciding locally takes); this
    sets each slot through its own descriptor, in a function written out for cls (twice as fast)."""
    names = [f.name for f in fields(cls)]
    scope = {"_new": object.__new__, "_cls": cls, **{f"_set_{n}": cls.__dict__[n].__set__ for n in names}}
    body = "".join(f"    _set_{n}(_o, {n})\n" for n in names)
    exec(f"def make({', '.join(names)}):\n    _o = _new(_cls)\n{body}    return _o\n", scope)
    return scope["make"]


_local_decision = _maker(GateDecision)


@dataclass(frozen=True, slots=True)
class MeterUsage:
    meter: str
    used: int
    limit: int | None
    remaining: int | None
    allowed: bool
    reason: str
    window_start: datetime | None
    resets_at: datetime | None
    rule: str


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    from_status: str | None
    to_status: str
    trigger: str
    reason: str
    at: datetime
    plan_version: str
    cause_id: str | None
    actor: str | None


@dataclass(frozen=True, slots=True)
class StripeSubscription:
    """One of the subject's Stripe subscriptions; `followed`: the subject's status follows it."""

    id: str
    status: str | None
    followed: bool
    tier: str | None
    created: datetime | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    trial_end: datetime | None
    cancel_at: datetime | None
    ended_at: datetime | None

    @classmethod
    def from_json(cls, body: dict) -> StripeSubscription:
        values: dict[str, Any] = {name: _time(body[name]) if name in _SUBSCRIPTION_TIMES else body[name]
                                  for name in cls.__slots__}
        return cls(**values)


_SUBSCRIPTION_TIMES = frozenset({"created", "current_period_start", "current_period_end", "trial_end", "cancel_at",
                                 "ended_at"})


@dataclass(frozen=True, slots=True)
class SubjectView:
    subject: str
    known: bool
    status: str
    tier: str | None
    since: datetime
    timer_due: datetime | None
    period_start: datetime | None
    period_end: datetime | None
    plan_version: str
    stripe_customer: str | None
    stripe_subscription: str | None
    usage: tuple[MeterUsage, ...]
    transitions: tuple[TransitionRecord, ...]
    subscriptions: tuple[StripeSubscription, ...] = ()

    @classmethod
    def from_json(cls, body: dict) -> SubjectView:
        usage = tuple(MeterUsage(**{**u, "window_start": _time(u["window_start"]),
                                    "resets_at": _time(u["resets_at"])}) for u in body["usage"])
        history = tuple(TransitionRecord(
            from_status=t["from"], to_status=t["to"], trigger=t["trigger"], reason=t["reason"], at=_moment(t["at"]),
            plan_version=t["plan_version"], cause_id=t["cause_id"], actor=t["actor"]) for t in body["transitions"])
        return cls(
            subject=body["subject"], known=body["known"], status=body["status"], tier=body["tier"],
            since=_moment(body["since"]), timer_due=_time(body["timer_due"]),
            period_start=_time(body["period_start"]), period_end=_time(body["period_end"]),
            plan_version=body["plan_version"], stripe_customer=body["stripe_customer"],
            stripe_subscription=body["stripe_subscription"], usage=usage, transitions=history,
            subscriptions=tuple(StripeSubscription.from_json(b) for b in body.get("subscriptions", ())))


@dataclass(frozen=True, slots=True)
class TransitionResult:
    subject: str
    moved: bool
    from_status: str
    to_status: str
    trigger: str
    reason: str
    rule: str | None

    @classmethod
    def from_json(cls, body: dict) -> TransitionResult:
        return cls(subject=body["subject"], moved=body["moved"], from_status=body["from"], to_status=body["to"],
                   trigger=body["trigger"], reason=body["reason"], rule=body["rule"])


class _NoAnswer(Exception):
    """Internal: the gate gave no usable answer; the message says why (never the token)."""


class GateClient:
    """The gate's HTTP API as typed calls. `timeout` is the budget, in seconds, for a whole call (connect,
    send, wait, read). With `session`, the caller's aiohttp session is used and left open."""

    def __init__(self, base_url: str, token: str, *, admin_token: str | None = None, timeout: float = 0.5,
                 fail_open: bool = True, session: aiohttp.ClientSession | None = None, local: bool = False,
                 staleness: float = 1.0):
        """local: decide `check` in this process (plangate/local_decisions.py), from copies no staler than
        `staleness` seconds by the gate's stream; else (and whenever the copy cannot decide) the gate does."""
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        for name, value in (("token", token), ("admin_token", admin_token)):
            # HTTP drops spaces at a header's end: the gate would see another token than the one given.
            if value is not None and (not value or value != value.strip() or " " in value):
                raise ValueError(f"{name} must be the token alone, without spaces around or in it")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.fail_open = fail_open
        self._auth = {"Authorization": f"Bearer {token}"}
        # Transitions need the admin token (PLANGATE_ADMIN_TOKEN); without one the gate refuses them (403).
        self._admin_auth = {"Authorization": f"Bearer {admin_token}"} if admin_token else self._auth
        self._session = session
        self._owns_session = session is None
        if local and staleness <= 0:
            raise ValueError(f"staleness must be a positive number of seconds, not {staleness!r}")
        self.local = LocalDecisions(self.base_url, self._auth, staleness) if local else None
        self._unanswered = 0            # decisions made here since the gate last answered one
        self._warned_at: float | None = None

    def __repr__(self) -> str:
        return f"GateClient({self.base_url!r}, timeout={self.timeout}, fail_open={self.fail_open})"

    async def __aenter__(self) -> GateClient:
        self._open()
        if self.local is not None:      # listening at once: `await client.local.ready()` then waits for it
            self.local.start(self._open)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self.local is not None:
            await self.local.stop()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    # --- decisions: fail mode on no answer ------------------------------------------------------

    async def check(self, subject: str, meter: str, amount: int = 1) -> GateDecision:
        """May `subject` do `amount` of `meter` now? Counts nothing. With local=True, decided in this process
        when the copy can (`evaluated_here`)."""
        local = self.local
        budget = None
        if local is not None:
            local.start(self._open)
            d = local.decide(subject, meter, amount)
            if d is None and subject not in local.copies:
                # One budget for the whole call: a snapshot is waited for a quarter of it, the gate's answer has
                # the rest (a snapshot still on its way is kept for the next check).
                started = time.monotonic()
                try:
                    if await asyncio.wait_for(local.fetch(subject, self.timeout), self.timeout * SNAPSHOT_SHARE):
                        d = local.decide(subject, meter, amount)
                except TimeoutError:        # the gate is slow to give snapshots: the next checks do not wait on one
                    local.pause_snapshots()
                    local.snapshot_fallbacks += 1
                budget = self.timeout - (time.monotonic() - started)
            if d is not None:       # the gate's answer, field by field
                return _local_decision(subject, d.allowed, d.reason.value, d.status, d.tier, d.meter, amount, d.limit,
                                       d.used, d.remaining, utc(d.window_start), utc(d.resets_at), d.retry_after,
                                       d.rule, False, False, False, True, d.feature, d.credits, d.credits_used,
                                       d.overage)
        return await self._decide("/v1/check", {"subject": subject, "meter": meter, "amount": amount}, budget)

    async def feature(self, subject: str, feature: str) -> GateDecision:
        """Is `subject` entitled to `feature` now (the plan's features of its status and tier)? Always the
        gate's answer (`feature` set, `meter` None); the client's fail mode when the gate gives none."""
        return await self._decide("/v1/check", {"subject": subject, "feature": feature})

    async def consume(self, subject: str, meter: str, amount: int = 1,
                      idempotency_key: str | None = None) -> GateDecision:
        """Check and count in one step: `counted` says whether the amount was counted. With a key, a repeat
        (say, a retry after a local decision) counts at most once and answers `duplicate=True`."""
        body = {"subject": subject, "meter": meter, "amount": amount}
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return self._heard(await self._decide("/v1/consume", body))

    async def usage(self, subject: str, meter: str, amount: int, idempotency_key: str) -> GateDecision:
        """Count work that already ran. A local decision means nothing was counted: retry later with the
        same key."""
        return self._heard(await self._decide("/v1/usage", {"subject": subject, "meter": meter, "amount": amount,
                                                            "idempotency_key": idempotency_key}))

    def _heard(self, decision: GateDecision) -> GateDecision:
        """A count's answer: into the local copy at once (the stream tells the same, later)."""
        if self.local is not None and decision.counted and not decision.duplicate and decision.meter is not None:
            self.local.counted(decision.subject, decision.meter, decision.window_start, decision.used)
        return decision

    async def _decide(self, path: str, body: dict, timeout: float | None = None) -> GateDecision:
        try:
            answer = await self._call("POST", path, body, timeout=timeout)
            try:
                decision = GateDecision.from_json(answer)
            except (KeyError, TypeError, ValueError) as exc:
                raise _NoAnswer(f"the gate's answer is not a decision ({type(exc).__name__}: {exc})") from None
        except _NoAnswer as exc:
            self._no_answer(path, str(exc))
            return GateDecision.unanswered(body["subject"], body.get("meter"), body.get("amount", 1), self.fail_open,
                                           str(exc), body.get("feature"))
        if self._unanswered:
            _log.info("the gate at %s answers again, after %d decision(s) made here", self.base_url,
                      self._unanswered)
            self._unanswered, self._warned_at = 0, None
        return decision

    def _no_answer(self, path: str, why: str) -> None:
        """A decision made here: a warning for the first since the gate answered, then once every WARN_EVERY."""
        self._unanswered += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            _log.warning("no answer from the gate at %s (%s %s); %d decision(s) made here with %s since it last "
                         "answered", self.base_url, path, why, self._unanswered,
                         FAIL_OPEN if self.fail_open else FAIL_CLOSED)

    # --- operator calls: no fail mode, GateUnavailable on no answer ------------------------------

    async def subject(self, subject: str) -> SubjectView:
        """The subject's status, timers, usage per meter and recent transitions."""
        return SubjectView.from_json(await self._strict("GET", subject_path(self.base_url, subject)))

    async def transition(self, subject: str, *, to: str | None = None, action: str | None = None,
                         reason: str) -> TransitionResult:
        """An admin override: `to` a status, or a named admin `action` of the plan (exactly one)."""
        if (to is None) == (action is None):
            raise ValueError("give exactly one of to= (a status) or action= (an admin action)")
        body = {"reason": reason, **({"to": to} if to is not None else {"action": action})}
        url = subject_path(self.base_url, subject, "/transition")
        return TransitionResult.from_json(await self._strict("POST", url, body, admin=True))

    async def _strict(self, method: str, path: str | URL, body: dict | None = None, *, admin: bool = False) -> dict:
        try:
            return await self._call(method, path, body, self._admin_auth if admin else self._auth)
        except _NoAnswer as exc:
            where = path if isinstance(path, URL) else f"{self.base_url}{path}"
            raise GateUnavailable(f"{method} {where}: {exc}") from None

    # --- the wire ---------------------------------------------------------------------------------

    async def _call(self, method: str, path: str | URL, body: dict | None, auth: dict | None = None, *,
                    timeout: float | None = None) -> dict:
        """The gate's JSON answer (2xx) within `timeout` (the client's by default); GateRequestError for a 4xx;
        _NoAnswer for everything else. `path`: one under base_url, or a whole URL (subject_path)."""
        session = self._open()
        timeout = self.timeout if timeout is None else max(timeout, 0.0)
        try:
            async with asyncio.timeout(timeout):
                url = path if isinstance(path, URL) else self.base_url + path
                # raise_for_status=False: a caller's session may raise for a 4xx, which would read as no answer (a
                # wrong token or bad input answered by the fail mode, allowed) instead of the gate's refusal.
                async with session.request(method, url, json=body, headers=auth or self._auth,
                                           raise_for_status=False) as resp:
                    status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise _NoAnswer(f"no answer within {timeout:.3g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            # The exception's text names the address, never the headers; do not chain it (its
            # request_info holds the Authorization header).
            raise _NoAnswer(f"{type(exc).__name__}: {exc}") from None
        if status >= 500:
            raise _NoAnswer(f"the gate answered {status}")
        answer = _json(raw)
        if status >= 400:
            code = answer.get("error") if isinstance(answer, dict) else None
            message = answer.get("message") if isinstance(answer, dict) else None
            raise GateRequestError(status, code or "http_error", message or raw[:200].decode("utf-8", "replace"))
        if not isinstance(answer, dict):
            raise _NoAnswer(f"the gate answered {status} without a JSON object")
        return answer


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
