"""The HTTP API: /v1/ routes for the workflow server and operators, and the probes."""
from __future__ import annotations

import functools
import logging
from datetime import datetime, UTC

from plangate import schema as plangate_schema
from aiohttp import web

from plangate.engine import Decision
from plangate.engine._entitlements import UnknownFeature

from . import _input as inp, _json
from .. import entitlements
from ..gate import Counting, Gate, NotInPlan, StoreUnavailable, TooManyTraits
from ..jobs import JobRunning, Jobs
from ..plan_versions import PlanKeeper
from ..metrics import CONTENT_TYPE
from ..personal import ErasureUnavailable, PersonalData
from ..logs import log
from ..store import USAGE_CEILING, IdempotencyConflict, UsageCeiling
from ..store._credits import RESEND_FILTERS
from ..stripe.meter_events import RESEND_BATCH, RESEND_MARGIN, STRIPE_OLDEST

GATE = web.AppKey("gate", Gate)
PLANS = web.AppKey("plans", PlanKeeper)      # plan_api's, and /readyz's
JOBS = web.AppKey("jobs", Jobs)
PERSONAL = web.AppKey("personal", PersonalData)
OPENAPI_PATH = plangate_schema.OPENAPI
_DECISION_FIELDS = {"subject", "meter", "amount"}
_CHECK_FIELDS = _DECISION_FIELDS | {"feature"}
_COUNT_FIELDS = _DECISION_FIELDS | {"idempotency_key"}
_GRANT_FIELDS = {"meter", "amount", "reason", "actor", "idempotency_key", "expires_at", "priority"}
_OVERAGE_STATUSES = ("pending", "sent", "refused")


_LAST_SECOND = 253_402_300_799     # 9999-12-31T23:59:59Z


@functools.lru_cache(maxsize=1024)   # a window's bounds repeat on every answer in it: format them once
def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    # A time past what a date holds (a grant's expiry stored before the API refused such times) shows as the last
    # one, not a 500 on every view of its subject.
    return datetime.fromtimestamp(min(ts, _LAST_SECOND), UTC).isoformat().replace("+00:00", "Z")


def decision_body(subject: str, amount: int, d: Decision) -> dict:
    return {
        "subject": subject, "allowed": d.allowed, "reason": d.reason, "status": d.status, "tier": d.tier,
        "meter": d.meter, "amount": amount, "limit": d.limit, "used": d.used, "remaining": d.remaining,
        "window_start": iso(d.window_start), "resets_at": iso(d.resets_at), "retry_after": d.retry_after,
        "rule": d.rule, "feature": d.feature, "credits": d.credits, "credits_used": d.credits_used,
        "overage": d.overage,
    }


async def _decision_request(request: web.Request, fields: set[str], key_required: bool, body: dict | None = None):
    gate = request.app[GATE]
    if body is None:
        body = await inp.json_object(request, fields)
    subject = inp.subject(body)
    meter = inp.one_of(inp.text(body, "meter"), gate.table.meters, "unknown_meter", "meter")
    amount = inp.amount(body, gate.config.max_amount)
    key = inp.text(body, "idempotency_key", required=key_required) if "idempotency_key" in fields else None
    return gate, subject, meter, amount, key


async def check(request: web.Request) -> web.Response:
    body = await inp.json_object(request, _CHECK_FIELDS)
    if "feature" not in body:
        if "meter" not in body:
            inp.subject(body)       # a subject's problem first, as for any request
            raise inp.BadRequest(400, "missing_field", "'meter' is required (or, to ask for a feature, 'feature')")
        gate, subject, meter, amount, _ = await _decision_request(request, _DECISION_FIELDS, False, body)
        return _json.response(decision_body(subject, amount, await gate.check(subject, meter, amount)))
    gate = request.app[GATE]
    subject = inp.subject(body)
    feature = inp.text(body, "feature")
    if "meter" in body or "amount" in body:
        raise inp.BadRequest(400, "invalid_field", "a check asks for a meter (with an amount) or for a feature, "
                                                   "not both")
    inp.one_of(feature, gate.table.features.names, "unknown_feature", "feature")
    try:
        decision = await gate.feature(subject, feature)
    except UnknownFeature as exc:      # a reload took the feature away meanwhile
        raise inp.BadRequest(422, "unknown_feature", str(exc)) from None
    return _json.response(decision_body(subject, 1, decision))


async def consume(request: web.Request) -> web.Response:
    gate, subject, meter, amount, key = await _decision_request(request, _COUNT_FIELDS, False)
    return _counted(subject, amount, await _count(gate, subject, meter, amount, key, True))


async def usage(request: web.Request) -> web.Response:
    gate, subject, meter, amount, key = await _decision_request(request, _COUNT_FIELDS, True)
    try:
        result = await _count(gate, subject, meter, amount, key, False)
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "usage could not be counted now; retry with the same "
                                                       "idempotency_key") from None
    return _counted(subject, amount, result)


async def _count(gate: Gate, subject, meter, amount, key, enforce) -> Counting:
    try:
        return await gate.count(subject, meter, amount, key, enforce=enforce)
    except IdempotencyConflict as exc:
        raise inp.BadRequest(409, "idempotency_key_reused", str(exc)) from None
    except UsageCeiling as exc:
        until = f"until it resets at {iso(exc.resets_at)}" if exc.resets_at is not None else \
            "(a lifetime window: it never resets)"
        raise inp.BadRequest(422, "usage_ceiling", (
            f"counting {amount} of '{meter}' for subject {subject!r} would take the window's usage ({exc.used}) past "
            f"{USAGE_CEILING}, the most a window counts (2**62); nothing was counted, and the idempotency_key was "
            f"not kept. The window takes at most {max(USAGE_CEILING - exc.used, 0)} more {until}: count this meter "
            "in a larger unit (smaller amounts), or report the rest once the window has reset")) from None


def _counted(subject: str, amount: int, result: Counting) -> web.Response:
    body = decision_body(subject, amount, result.decision)
    body["counted"] = result.counted
    body["duplicate"] = result.duplicate
    return _json.response(body)


async def subject_view(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    subject = inp.subject({"subject": inp.in_path(request)})
    try:
        view = await gate.describe(subject)
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    for key in ("since", "tier_since", "timer_due", "period_start", "period_end"):
        view[key] = iso(view[key])
    for row in view["usage"]:
        row["window_start"], row["resets_at"] = iso(row["window_start"]), iso(row["resets_at"])
    for row in view["transitions"]:
        row["at"] = iso(row["at"])
    for row in view["subscriptions"]:
        for key in ("created", "current_period_start", "current_period_end", "trial_end", "cancel_at", "ended_at"):
            row[key] = iso(row[key])
    for meter in view["credits"]:
        for row in meter["grants"]:
            row["created"], row["expires_at"] = iso(row["created"]), iso(row["expires_at"])
            for taken in row.get("reversals", ()):
                taken["created"] = iso(taken["created"])
    view["overage"] = [_report(r) for r in view["overage"]]
    return _json.response(view)


def _report(r) -> dict:
    row = r.to_dict()
    for key in ("at", "next_attempt_at", "sent_at"):
        row[key] = iso(row[key])
    return row


async def grant_credits(request: web.Request) -> web.Response:
    """An admin grants credits of a meter to a subject: audited (the grant keeps the actor and the reason); the
    same idempotency_key grants once."""
    gate = request.app[GATE]
    subject = inp.subject({"subject": inp.in_path(request)})
    body = await inp.json_object(request, _GRANT_FIELDS)
    meter = inp.one_of(inp.text(body, "meter"), tuple(m for m in gate.table.meters if gate.table.has_credits(m)),
                       "unknown_meter", "meter with credits")
    if "amount" not in body:
        raise inp.BadRequest(400, "missing_field", "'amount' is required")
    amount = inp.amount(body, gate.config.max_amount)
    reason = inp.text(body, "reason")
    actor = inp.text(body, "actor", required=False) or "admin-api"
    key = inp.text(body, "idempotency_key", required=False)
    expires_at = inp.instant(body, "expires_at")
    priority = inp.whole(body, "priority", 0, 1000)
    try:
        grant, made = await gate.grant(subject, meter, amount, actor=actor, reason=reason, key=key,
                                       expires_at=expires_at, priority=priority)
    except entitlements.PastExpiry as exc:
        raise inp.BadRequest(400, "invalid_field", str(exc)) from None
    except IdempotencyConflict as exc:
        raise inp.BadRequest(409, "idempotency_key_reused", str(exc)) from None
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be written right now; nothing was "
                                                       "granted; try again with the same idempotency_key") from None
    row = grant.to_dict()
    row["created"], row["expires_at"] = iso(row["created"]), iso(row["expires_at"])
    return _json.response({"subject": subject, "granted": made, "grant": row})


async def set_traits(request: web.Request) -> web.Response:
    """Set numbers on a subject that its quotas may be per unit of (`per_unit: {trait: NAME}`)."""
    gate = request.app[GATE]
    subject = inp.subject({"subject": inp.in_path(request)})
    body = await inp.json_object(request, {"traits", "actor", "reason"})
    traits = inp.traits(body)
    actor = inp.text(body, "actor", required=False) or "admin-api"
    reason = inp.text(body, "reason", required=False) or ""
    try:
        state = await gate.set_traits(subject, traits, actor, reason)
    except TooManyTraits as exc:
        raise inp.BadRequest(422, "too_many_traits", str(exc)) from None
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be written right now; nothing "
                                                       "changed; try again") from None
    return _json.response({"subject": subject, "traits": dict(state.traits)})


async def overage(request: web.Request) -> web.Response:
    """Overage reports: how many per status, and the newest of one status (default refused) or of one subject."""
    gate = request.app[GATE]
    status = request.query.get("status", "refused")
    if status not in _OVERAGE_STATUSES:
        raise inp.BadRequest(400, "invalid_field", f"'status' must be one of {', '.join(_OVERAGE_STATUSES)}")
    subject = request.query.get("subject")
    if subject is not None:
        subject = inp.text({"subject": subject}, "subject")
    try:
        counts = await gate.timed("overage", gate.store.overage_counts())
        reports = await gate.timed("overage", gate.store.overage_reports(subject, None if subject else status))
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    return _json.response({
        "counts": {s: {"reports": counts.get(s, (0, 0))[0], "value": counts.get(s, (0, 0))[1]}
                   for s in _OVERAGE_STATUSES},
        "reports": [_report(r) for r in reports], "reconciliation": _last_check(request)})


async def resend_overage(request: web.Request) -> web.Response:
    """A person's word that refused overage reports go to Stripe again (the meter they lacked exists now, say):
    those Stripe would still take (counted within its 35 days, less an hour to send them in), narrowed by subject,
    event name or identifier, RESEND_BATCH a transaction. Older ones, and those refused for an idempotency key
    Stripe had seen with other parameters (that request may have been recorded), stay refused and are counted."""
    gate = request.app[GATE]
    body = await inp.json_object(request, {"actor", "reason", *RESEND_FILTERS})
    actor = inp.text(body, "actor")
    reason = inp.text(body, "reason", required=False) or ""
    filters = {name: value for name in RESEND_FILTERS if (value := inp.text(body, name, required=False))}
    now = gate.clock()
    since = now - STRIPE_OLDEST + RESEND_MARGIN
    note = f"resent by {actor}" + (f": {reason}" if reason else "")
    resent = 0
    try:
        while True:
            batch = await gate.timed("overage", gate.store.resend_refused(filters, since, now, note, RESEND_BATCH),
                                     shield=True, timeout=30.0)
            resent += batch
            if batch < RESEND_BATCH:
                break
        too_old, conflicts = await gate.timed("overage", gate.store.refused_kept(filters, since), timeout=30.0)
    except StoreUnavailable:
        log(logging.ERROR, "overage_resend_failed", actor=actor, reason=reason, resent=resent, filters=filters)
        raise inp.BadRequest(503, "store_unavailable", f"the store failed after {resent} report(s) were resent (the "
                             "last batch may have been written too); run it again: only refused reports go") from None
    log(logging.INFO, "overage_resent", actor=actor, reason=reason, resent=resent, too_old=too_old,
        key_conflicts=conflicts, filters=filters)
    return _json.response({"resent": resent, "too_old": too_old, "key_conflicts": conflicts, "oldest": iso(since)})


def _last_check(request: web.Request) -> dict | None:
    jobs = request.app.get(JOBS)
    checked = getattr(getattr(jobs, "meter_events", None), "last_check", None)
    if checked is None:
        return None
    row = checked.to_dict()
    for key in ("at", "start", "end"):
        row[key] = iso(row[key])
    return row


async def transition(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    subject = inp.subject({"subject": inp.in_path(request)})
    body = await inp.json_object(request, {"to", "action", "reason", "actor"})
    to, action = inp.text(body, "to", required=False), inp.text(body, "action", required=False)
    if (to is None) == (action is None):
        raise inp.BadRequest(400, "invalid_field", "give exactly one of 'to' (a status) or 'action' (a named "
                                                   "admin action of the plan)")
    if to is not None:
        inp.one_of(to, gate.table.statuses, "unknown_status", "status")
    elif action is not None:
        inp.one_of(action, gate.table.actions, "unknown_action", "admin action")
    reason = inp.text(body, "reason")
    actor = inp.text(body, "actor", required=False) or "admin-api"
    try:
        outcome = await gate.admin(subject, to=to, action=action, why=reason, actor=actor)
    except NotInPlan as exc:        # a reload swapped the plan since the checks above: decided under the new one
        raise inp.BadRequest(422, exc.code, str(exc)) from None
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be written right now; nothing "
                                                       "changed; try again") from None
    return _json.response({
        "subject": subject, "moved": outcome.moved, "from": outcome.before.status, "to": outcome.state.status,
        "trigger": outcome.trigger, "reason": outcome.reason, "rule": outcome.rule,
    })


async def erase(request: web.Request) -> web.Response:
    """Erase a subject's personal data: its rows kept under a pseudonym (usage, audit), its Stripe payloads
    reduced, its Stripe ids dropped unless a subscription is live. Idempotent. Any text names the subject, not
    only an id by the subject rule (inp.subject): one stored before that rule may still need erasing."""
    subject = inp.text({"subject": inp.in_path(request)}, "subject")
    body = await inp.json_object(request, {"actor"})
    actor = inp.text(body, "actor", required=False) or "admin-api"
    try:
        erased = await request.app[PERSONAL].erase(subject, actor)
    except ErasureUnavailable as exc:
        raise inp.BadRequest(503, "erasure_not_configured", str(exc)) from None
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store failed or did not answer in time: the "
                                                       "erasure may not have been written; try again (erasure "
                                                       "is idempotent)") from None
    return _json.response(erased.to_dict())


async def run_job(request: web.Request) -> web.Response:
    """Run a job now (operators, the simulator, tests): sweep, reconcile, cleanup or report."""
    name = request.match_info["job"]
    inp.one_of(name, ("sweep", "reconcile", "cleanup", "report"), "unknown_job", "job")
    try:
        result = await request.app[JOBS].run(name, wait=True)      # after a run under way here, if any
    except JobRunning:
        raise inp.BadRequest(409, "job_running", f"another node is running the {name} job now; nothing was done "
                                                 "here: ask again once it ends", headers={"Retry-After": "1"}) \
            from None
    if result is None:
        raise inp.BadRequest(503, "job_failed", f"the {name} job failed; see the gate's log")
    return _json.response({"job": name, "result": list(result) if isinstance(result, tuple) else result})


async def healthz(request: web.Request) -> web.Response:
    return _json.response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    gate = request.app[GATE]
    plans = request.app.get(PLANS)
    checks = {"plan": plans.readiness() if plans is not None else {"ok": True, "version": gate.table.version}}
    try:
        await gate.timed("ping", gate.store.ping())
        failed = gate.write_failure()
        checks["store"] = {"ok": True} if failed is None else \
            {"ok": False, "error": f"the store reads but a write failed just now: {failed}"}
    except StoreUnavailable:
        checks["store"] = {"ok": False, "error": "the store did not answer in time or failed"}
    ready = all(c["ok"] for c in checks.values())
    return _json.response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI_PATH.read_bytes(), content_type="application/json")


# Routes that change state on a person's word: PLANGATE_ADMIN_TOKEN only. Every other /v1/ route takes either token.
# Credits and traits raise what a subject may do, as a move to a paying status would.
ADMIN_PATHS = frozenset({"/v1/subjects/{subject}/transition", "/v1/subjects/{subject}/erase",
                         "/v1/subjects/{subject}/credits", "/v1/subjects/{subject}/traits", "/v1/jobs/{job}",
                         "/v1/overage/resend"})
# (method, path, handler) of every route but the webhook's (webhook.receive); GET routes answer HEAD too.
ROUTES = (
    ("POST", "/v1/check", check),
    ("POST", "/v1/consume", consume),
    ("POST", "/v1/usage", usage),
    ("GET", "/v1/subjects/{subject}", subject_view),
    ("POST", "/v1/subjects/{subject}/transition", transition),
    ("POST", "/v1/subjects/{subject}/erase", erase),
    ("POST", "/v1/subjects/{subject}/credits", grant_credits),
    ("POST", "/v1/subjects/{subject}/traits", set_traits),
    ("GET", "/v1/overage", overage),
    ("POST", "/v1/overage/resend", resend_overage),
    ("POST", "/v1/jobs/{job}", run_job),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
)
