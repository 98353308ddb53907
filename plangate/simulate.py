"""`plangate stripe-simulate`: realistic, signed Stripe event sequences sent to a running gate, like
`stripe trigger`; after each event it prints the gate's answer and the decision of POST /v1/check.

The scenarios expect the shipped plans.yaml (its status names, and a grace_period shorter than GRACE_BACKDATE).
Exit 0 when every request was accepted and every scenario ended as expected, 1 otherwise, 2 on usage errors or
when the gate cannot be reached."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from pathlib import Path
from urllib.parse import quote, urlsplit

DAY = 86400
MONTH = 30 * DAY
GRACE_BACKDATE = 4 * DAY            # the shipped plan's grace_period lasts 3d: a failure this old has run out
API_NEW, API_OLD = "2026-10-28", "2024-06-20"   # event api_version of the two object shapes
PRICE = "price_pro_monthly"
TIMEOUT = 10.0


class Unreachable(Exception):
    """The gate did not answer at all (exit 2)."""


class Refused(Exception):
    """The gate answered a request with a non-2xx status."""


class GateCalls:
    """A small HTTP client for the gate (stdlib only; proxies from the environment are ignored)."""

    def __init__(self, url: str, secret: str, token: str):
        self.url, self.secret, self.token = url.rstrip("/"), secret, token
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=TIMEOUT) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                answer = json.loads(text)
                text = f"{answer.get('error')}: {answer.get('message')}"
            except (ValueError, AttributeError):
                text = text.strip()[:200]
            raise Refused(f"{method} {path} answered {exc.code} {text}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(f"cannot reach the gate at {self.url}: {reason}") from None
        except ValueError:
            raise Refused(f"{method} {path} did not answer JSON") from None

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        return self.call(method, path, data, {"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})

    def deliver(self, event: dict) -> dict:
        import stripe     # only this subcommand needs it
        payload = json.dumps(event, indent=2)
        header = stripe.WebhookSignature.generate_signature_header(payload, self.secret, int(time.time()))
        return self.call("POST", "/webhook/stripe", payload.encode(), {"Stripe-Signature": header,
                                                                       "Content-Type": "application/json"})

    def check(self, subject: str) -> dict:
        return self.api("POST", "/v1/check", {"subject": subject, "meter": "requests", "amount": 1})

    def subject(self, subject: str) -> dict:
        return self.api("GET", f"/v1/subjects/{quote(subject, safe='')}")


# --- a scenario's run: Stripe objects in the new shape (API 2025-03-31 on) or the old one, sent and checked ---

class Run:
    """One scenario on its own subject, customer and subscription; collects what did not go as expected."""

    def __init__(self, gate: GateCalls, subject: str, out):
        self.gate, self.subject, self.out = gate, subject, out
        self.tag = secrets.token_hex(5)
        self.customer, self.sub_id = f"cus_sim{self.tag}", f"sub_sim{self.tag}"
        self.now = time.time()
        self.t0 = self.now - 600
        self.problems: list[str] = []
        self.steps = 0

    def event(self, type_: str, obj: dict, created: float, new: bool, previous: dict | None = None) -> dict:
        self.steps += 1
        data = {"object": obj, **({"previous_attributes": previous} if previous else {})}
        return {"id": f"evt_sim{self.tag}_{self.steps:02d}", "object": "event", "type": type_,
                "api_version": API_NEW if new else API_OLD, "created": int(created), "livemode": False,
                "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "data": data}

    def checkout(self, created: float, *, new: bool = True) -> dict:
        obj = {"id": f"cs_test_{self.tag}", "object": "checkout.session", "mode": "subscription",
               "status": "complete", "payment_status": "paid", "client_reference_id": self.subject,
               "customer": self.customer, "subscription": self.sub_id, "metadata": {"plangate_subject": self.subject}}
        return self.event("checkout.session.completed", obj, created, new)

    def sub(self, type_: str, status: str, start: float, end: float, created: float, *, new: bool,
            linked: bool = True, previous: dict | None = None, **extra) -> dict:
        item = {"id": f"si_{self.tag}", "object": "subscription_item", "quantity": 1,
                "price": {"id": PRICE, "object": "price", "recurring": {"interval": "month"}}}
        obj = {"id": self.sub_id, "object": "subscription", "status": status, "customer": self.customer,
               "created": int(self.t0), "cancel_at_period_end": False, "livemode": False,
               "metadata": {"plangate_subject": self.subject} if linked else {},
               "items": {"object": "list", "data": [item]}, **extra}
        (item if new else obj).update(current_period_start=int(start), current_period_end=int(end))
        return self.event(type_, obj, created, new, previous)

    def inv(self, type_: str, n: int, start: float, end: float, created: float, *, new: bool, reason: str) -> dict:
        paid, amount = type_ == "invoice.paid", 2000
        obj: dict[str, Any] = {"id": f"in_sim{self.tag}{n}", "object": "invoice", "status": "paid" if paid else "open",
               "customer": self.customer, "currency": "usd", "amount_due": amount, "amount_paid": amount * paid,
               "billing_reason": reason, "lines": {"object": "list", "data": [
                   {"id": f"il_sim{self.tag}{n}", "object": "line_item", "amount": amount,
                    "period": {"start": int(start), "end": int(end)}}]}}
        details = {"metadata": {"plangate_subject": self.subject}}
        if new:
            obj["parent"] = {"type": "subscription_details",
                             "subscription_details": {**details, "subscription": self.sub_id}}
        else:
            obj.update(subscription=self.sub_id, subscription_details=details)
        return self.event(type_, obj, created, new)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def send(self, event: dict, outcome: str, status: str | None, note: str = "") -> None:
        """Deliver, signed now; print the gate's answer and the decision; compare with what is expected."""
        age = self.now - event["created"]
        when = f"{age / DAY:.1f}d ago" if age >= DAY else f"{age:.0f}s ago"
        self.say(f"  > {event['type']:<32} {event['id']}  created {when}" + (f"  ({note})" if note else ""))
        answer = self.gate.deliver(event)
        self.say(f"      gate:  {answer.get('outcome')}  status={answer.get('status')}")
        self.expect("outcome", outcome, answer.get("outcome"))
        self.expect("status", status, answer.get("status"))
        self.decision()

    def decision(self) -> dict:
        d = self.gate.check(self.subject)
        self.say(f"      check: {'allowed' if d['allowed'] else 'denied'}  reason={d['reason']}"
                 f"  status={d['status']}  remaining={d['remaining']}")
        return d

    def sweep(self, status: str) -> None:
        result = self.gate.api("POST", "/v1/jobs/sweep")
        self.say(f"  > POST /v1/jobs/sweep: {result.get('result')} timer(s) fired")
        self.expect("status after the sweep", status, self.decision()["status"])

    def expect(self, what: str, wanted, got) -> None:
        if wanted != got:
            self.problems.append(f"{what}: expected {wanted}, got {got}")
            self.say(f"      !! expected {what} {wanted}, got {got}")

    def finish(self, status: str, allowed: bool) -> bool:
        view, d = self.gate.subject(self.subject), self.gate.check(self.subject)
        self.expect("final status", status, view.get("status"))
        self.expect("stripe subscription", self.sub_id, view.get("stripe_subscription"))
        self.expect("decision", "allowed" if allowed else "denied", "allowed" if d["allowed"] else "denied")
        return not self.problems


# --- the scenarios: each returns (final status, decision allowed?) -----------------------------------------

def checkout_to_paid(r: Run):
    """checkout -> trial -> invoice.paid -> active (new shapes)"""
    t, trial_end = r.t0, r.t0 + 7 * DAY
    r.send(r.checkout(t), "applied", "paid_trial")
    r.send(r.sub("customer.subscription.created", "trialing", t, trial_end, t + 1, new=True,
                 trial_start=int(t), trial_end=int(trial_end)), "noop", "paid_trial")
    r.send(r.inv("invoice.paid", 1, t + 2, t + 2 + MONTH, t + 2, new=True, reason="subscription_cycle"),
           "applied", "paid", "the customer ended the trial early")
    r.send(r.sub("customer.subscription.updated", "active", t + 2, t + 2 + MONTH, t + 3, new=True,
                 previous={"status": "trialing"}), "noop", "paid")
    return "paid", True


def payment_failure_and_recovery(r: Run):
    """renewal fails into grace_period; the retry is paid (old shapes)"""
    renewal = r.now - 300
    t, end = renewal - MONTH, renewal + MONTH
    r.send(r.sub("customer.subscription.created", "active", t, renewal, t, new=False), "applied", "paid")
    r.send(r.inv("invoice.paid", 1, t, renewal, t + 1, new=False, reason="subscription_create"), "noop", "paid")
    r.send(r.inv("invoice.payment_failed", 2, renewal, end, renewal, new=False, reason="subscription_cycle"),
           "applied", "grace_period", "renewal declined")
    r.send(r.sub("customer.subscription.updated", "past_due", renewal, end, renewal + 1, new=False,
                 previous={"status": "active"}), "noop", "grace_period")
    r.send(r.inv("invoice.paid", 2, renewal, end, renewal + 120, new=False, reason="subscription_cycle"),
           "applied", "paid", "Stripe's retry went through")
    r.send(r.sub("customer.subscription.updated", "active", renewal, end, renewal + 121, new=False,
                 previous={"status": "past_due"}), "noop", "paid")
    return "paid", True


def grace_runs_out(r: Run):
    """a failure older than the grace window; the sweep moves to billing_problem; then paid (new shapes)"""
    renewal = r.now - GRACE_BACKDATE
    t, end = renewal - MONTH, renewal + MONTH
    r.send(r.sub("customer.subscription.created", "active", t, renewal, t, new=True), "applied", "paid")
    r.send(r.inv("invoice.paid", 1, t, renewal, t + 1, new=True, reason="subscription_create"), "noop", "paid")
    r.send(r.inv("invoice.payment_failed", 2, renewal, end, renewal, new=True, reason="subscription_cycle"),
           "applied", "grace_period", "backdated past the grace window")
    r.sweep("billing_problem")
    r.send(r.inv("invoice.paid", 2, renewal, end, r.now - 60, new=True, reason="subscription_cycle"),
           "applied", "paid", "the customer fixed the card")
    return "paid", True


def cancellation(r: Run):
    """paid, cancel at period end, customer.subscription.deleted (old shapes)"""
    t, end = r.t0, r.t0 + MONTH
    r.send(r.checkout(t, new=False), "applied", "paid_trial")
    r.send(r.sub("customer.subscription.created", "active", t, end, t + 1, new=False), "applied", "paid")
    r.send(r.inv("invoice.paid", 1, t, end, t + 2, new=False, reason="subscription_create"), "noop", "paid")
    r.send(r.sub("customer.subscription.updated", "active", t, end, t + 3, new=False, cancel_at_period_end=True,
                 previous={"cancel_at_period_end": False}), "noop", "paid")
    r.send(r.sub("customer.subscription.deleted", "canceled", t, end, t + 4, new=False, ended_at=int(t + 4)),
           "applied", "canceled")
    return "canceled", False


def duplicates_and_reordering(r: Run):
    """pending until its checkout, a repeat delivery, an older event after a newer one (mixed shapes)"""
    t, end = r.t0, r.t0 + MONTH
    early = r.sub("customer.subscription.created", "active", t, end, t + 1, new=True, linked=False)
    r.send(early, "pending", None, "before the checkout that links it")
    r.send(r.checkout(t), "applied", "paid")
    caused = [x for x in r.gate.subject(r.subject)["transitions"] if x.get("cause_id") == early["id"]]
    r.say(f"      the pending {early['id']} was applied: "
          + (f"{caused[0]['from']} -> {caused[0]['to']}" if caused else "NOT FOUND"))
    r.expect("transition caused by the pending event", "paid", caused[0]["to"] if caused else None)
    paid = r.inv("invoice.paid", 1, t, end, t + 2, new=True, reason="subscription_create")
    r.send(paid, "noop", "paid")
    r.send(paid, "duplicate", None, "the same event again")
    r.send(r.inv("invoice.payment_failed", 2, t, end, t + 20, new=False, reason="subscription_update"),
           "applied", "grace_period")
    late = r.sub("customer.subscription.updated", "past_due", t, end, t + 21, new=False, previous={"status": "active"})
    r.send(r.inv("invoice.paid", 2, t, end, t + 30, new=False, reason="subscription_update"), "applied", "paid")
    r.send(late, "stale", "paid", "delivered late: older than the invoice.paid before it")
    return "paid", True


SCENARIOS = {f.__name__.replace("_", "-"): f for f in (checkout_to_paid, payment_failure_and_recovery,
                                                       grace_runs_out, cancellation, duplicates_and_reordering)}


# --- the command -------------------------------------------------------------------------------------------

def _setting(given: str | None, env: str, file: str) -> str | None:
    if given:
        return given
    if os.environ.get(env, "").strip():
        return os.environ[env].split(",")[0].strip()      # several secrets (rotation): the first signs
    try:
        return Path(file).read_text().strip() or None
    except OSError:
        return None


def _usage(message: str) -> int:
    print(f"plangate stripe-simulate: {message}", file=sys.stderr)
    return 2


def run(args, out=None) -> int:
    """Run the chosen scenarios (args as parsed by `plangate stripe-simulate`)."""
    out = out or sys.stdout
    if args.list:
        for name, fn in SCENARIOS.items():
            print(f"{name:<28} {fn.__doc__}", file=out)
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        return _usage(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    names = list(dict.fromkeys(args.scenarios)) or list(SCENARIOS)
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).hostname:
        return _usage(f"--url {args.url!r} is not an http(s) URL")
    secret = _setting(args.secret, "STRIPE_WEBHOOK_SECRET", "var/webhook-secret")
    token = _setting(args.token, "PLANGATE_API_TOKEN", "var/api-token")
    if not secret:
        return _usage("no webhook secret: pass --secret, set STRIPE_WEBHOOK_SECRET or create var/webhook-secret")
    if not token:
        return _usage("no API token: pass --token, set PLANGATE_API_TOKEN or create var/api-token")
    gate = GateCalls(args.url, secret, token)
    base = args.subject or f"sim-{secrets.token_hex(4)}"
    results: dict[str, bool] = {}
    try:
        gate.call("GET", "/healthz")
        gate.check(base)         # a wrong token is a usage error: found before any event is sent
    except (Refused, Unreachable) as exc:
        return _usage(str(exc))
    try:
        for name in names:
            subject = base if args.subject and len(names) == 1 else f"{base}-{name}"
            r = Run(gate, subject, out)
            r.say(f"== {name}: {SCENARIOS[name].__doc__}\n   subject {subject}, customer {r.customer}, "
                  f"subscription {r.sub_id}")
            try:
                status, allowed = SCENARIOS[name](r)
                results[name] = r.finish(status, allowed)
            except Refused as exc:
                r.say(f"      !! {exc}")
                r.problems.append(str(exc))
                results[name] = False
            r.say(f"{'PASS' if results[name] else 'FAIL'} {name}" +
                  ("" if results[name] else f": {'; '.join(r.problems)}") + "\n")
    except Unreachable as exc:
        return _usage(str(exc))
    passed = sum(results.values())
    print(f"{passed} of {len(results)} scenario(s) passed", file=out)
    return 0 if passed == len(results) else 1

