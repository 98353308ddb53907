"""`plangate stripe-simulate`: the lifecycle corpus (scenarios/lifecycles/, the events `plangate test` replays)
signed and sent to a running gate, like `stripe trigger`; after each event it prints the gate's answer, and the
decision of POST /v1/check when the event moved the subject.

Each lifecycle is moved in time to end a minute ago and gets fresh ids and a fresh subject, so it can run against
a gate that has seen it before. The stories expect the shipped plans.yaml. Exit 0 when every request was accepted
and every lifecycle went as its story says, 1 otherwise, 2 on usage errors or when the gate cannot be reached."""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

from .lifecycles import CorpusError, Lifecycle, corpus

DAY = 86400
END_AGO = 60                        # a lifecycle's last moment, this many seconds before now
TIMEOUT = 10.0
PLAYS = 3                           # plays of a lifecycle whose timers the gate's own schedule fired early


class Unreachable(Exception):
    """The gate did not answer at all (exit 2)."""


class Refused(Exception):
    """The gate answered a request with a non-2xx status."""


class GateCalls:
    """A small HTTP client for the gate (stdlib only; proxies from the environment are ignored)."""

    def __init__(self, url: str, secret: str, token: str, admin_token: str | None = None):
        self.url, self.secret, self.token, self.admin_token = url.rstrip("/"), secret, token, admin_token
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

    def api(self, method: str, path: str, body: dict | None = None, *, admin: bool = False) -> dict:
        """A /v1/ call with the API token, or with the admin token (jobs, transitions)."""
        data = json.dumps(body).encode() if body is not None else None
        return self.call(method, path, data, {"Authorization": f"Bearer {self.admin_token if admin else self.token}",
                                              "Content-Type": "application/json"})

    def deliver(self, event: dict) -> dict:
        import stripe     # only this subcommand needs it
        payload = json.dumps(event, indent=2)
        header = stripe.WebhookSignature.generate_signature_header(payload, self.secret, int(time.time()))
        return self.call("POST", "/webhook/stripe", payload.encode(), {"Stripe-Signature": header,
                                                                       "Content-Type": "application/json"})

    def sweep(self) -> dict:
        return self.api("POST", "/v1/jobs/sweep", admin=True)

    def sweeps(self) -> float:
        """How many sweeps this gate has run (scheduled or asked for), by its /metrics; 0 when it does not say."""
        from prometheus_client.parser import text_string_to_metric_families   # with the server extra, as stripe

        try:
            with self.opener.open(self.url + "/metrics", timeout=TIMEOUT) as resp:
                text = resp.read().decode("utf-8", "replace")
            return sum(sample.value for family in text_string_to_metric_families(text)
                       if family.name == "plangate_job_runs" for sample in family.samples
                       if sample.labels.get("job") == "sweep")
        except (OSError, ValueError):
            return 0.0

    def check(self, subject: str) -> dict:
        return self.api("POST", "/v1/check", {"subject": subject, "meter": "requests", "amount": 1})

    def subject(self, subject: str) -> dict:
        return self.api("GET", f"/v1/subjects/{quote(subject, safe='')}")

    def why(self, event_id: str) -> str | None:
        """The reason the gate stored for an event it received lately (the webhook log), if it is there."""
        found = self.api("GET", "/v1/events?limit=100").get("events", [])
        return next((e.get("reason") for e in found if e.get("id") == event_id), None)


# --- a lifecycle's run: the corpus's events, moved to end a minute ago, renamed, signed and sent in order ---

class Run:
    """One lifecycle on its own subject, customer and subscription; collects what did not go as expected."""

    def __init__(self, gate: GateCalls, life: Lifecycle, subject: str, out):
        self.gate, self.life, self.subject, self.out = gate, life, subject, out
        self.now = time.time()
        self.tag = f"{life.tag}{secrets.token_hex(3)}"
        self.events = life.shifted(int(self.now - END_AGO - life.ends_at), self.tag, subject)
        self.problems: list[str] = []
        self.disturbed = False      # the gate's schedule swept while the events were sent, and a timer moved it

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def play(self) -> bool:
        """Every event in the corpus's order, what the story expects after each, then a sweep and the end."""
        swept = self.gate.sweeps()
        for event, expect in zip(self.events, self.life.expects):
            self.send(event, expect or {})
        # The events lie in the past, so a timer they set is due at once: a sweep the gate's schedule runs while
        # they are sent fires it before the story reaches it, which no real lifecycle does. (A timer the story
        # passes between two of its events moves the subject as `timer` too, but then no sweep ran meanwhile.)
        if self.gate.sweeps() > swept:
            moves = self.gate.subject(self.subject).get("transitions", ())
            self.disturbed = any(move.get("actor") == "timer" for move in moves)
        result = self.gate.sweep()
        self.say(f"  > POST /v1/jobs/sweep: {result.get('result')} timer(s) fired")
        view = self.gate.subject(self.subject)
        for key, wanted in self.life.ends.items():
            self.expect(f"final {key}", wanted, view.get(key))
        self.decision()
        return not self.problems

    def send(self, event: dict, expect: dict) -> None:
        age = self.now - event["created"]
        when = f"{age / DAY:.1f}d ago" if age >= DAY else f"{age:.0f}s ago"
        answer = self.gate.deliver(event)
        outcome = answer.get("outcome")
        self.say(f"  > {event['type']:<38} {event['id']}  created {when}")
        if outcome != "ignored":
            self.say(f"      gate:  {outcome}  status={answer.get('status')}")
        if outcome not in ("applied", "ignored", "noop"):     # stale, pending, another subscription's...: why
            why = self.gate.why(event["id"])
            if why:
                self.say(f"      why:   {why}")
        if outcome == "applied":
            self.decision()
        if "status" in expect:      # an event the gate ignores answers no status: the subject's view says it
            status = answer.get("status") if outcome != "ignored" else self.gate.subject(self.subject)["status"]
            self.expect("status", expect["status"], status)

    def decision(self) -> dict:
        d = self.gate.check(self.subject)
        self.say(f"      check: {'allowed' if d['allowed'] else 'denied'}  reason={d['reason']}"
                 f"  status={d['status']}  remaining={d['remaining']}")
        return d

    def expect(self, what: str, wanted, got) -> None:
        if wanted != got:
            self.problems.append(f"{what}: expected {wanted}, got {got}")
            self.say(f"      !! expected {what} {wanted}, got {got}")


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


def _play(gate: GateCalls, life: Lifecycle, subject: str, out) -> bool:
    """One lifecycle; played again on a fresh subject (PLAYS times in all at the most) when it failed after the
    gate's scheduled sweep fired one of its timers."""
    for play in range(1, PLAYS + 1):
        r = Run(gate, life, subject if play == 1 else f"{subject}-{play}-{secrets.token_hex(2)}", out)
        r.say(f"== {life.name}: {life.title}\n   subject {r.subject}, {len(r.events)} events")
        try:
            passed = r.play()
        except Refused as exc:
            r.say(f"      !! {exc}")
            r.problems.append(str(exc))
            passed = False
        if passed or not r.disturbed:
            break
        early = ("the gate's scheduled sweep (PLANGATE_SWEEP_SCHEDULE) ran while the events were sent, and a timer "
                 "moved the subject: the events lie in the past, so their timers are due before the story reaches "
                 "them")
        if play < PLAYS:
            r.say(f"AGAIN {life.name}: {early}\n")
            continue
        r.problems.append(f"{early}, at each of {PLAYS} plays; run it against a gate whose sweep runs seldom "
                          "(e.g. PLANGATE_SWEEP_SCHEDULE='0 0 1 1 *': this command sweeps by itself)")
    r.say(f"{'PASS' if passed else 'FAIL'} {life.name}" + ("" if passed else f": {'; '.join(r.problems)}") + "\n")
    return passed


def run(args, out=None) -> int:
    """Play the chosen lifecycles (args as parsed by `plangate stripe-simulate`)."""
    out = out or sys.stdout
    try:
        lives = {life.name: life for life in corpus(Path(args.corpus))}
    except CorpusError as exc:
        return _usage(f"{exc} (run from the repository, or pass --corpus)")
    if args.list:
        for name, life in lives.items():
            print(f"{name:<28} {life.title}", file=out)
        return 0
    unknown = [s for s in args.scenarios if s not in lives]
    if unknown:
        return _usage(f"unknown lifecycle {unknown[0]!r}; known: {', '.join(lives)}")
    names = list(dict.fromkeys(args.scenarios)) or list(lives)
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).hostname:
        return _usage(f"--url {args.url!r} is not an http(s) URL")
    secret = _setting(args.secret, "STRIPE_WEBHOOK_SECRET", "var/webhook-secret")
    token = _setting(args.token, "PLANGATE_API_TOKEN", "var/api-token")
    if not secret:
        return _usage("no webhook secret: pass --secret, set STRIPE_WEBHOOK_SECRET or create var/webhook-secret")
    if not token:
        return _usage("no API token: pass --token, set PLANGATE_API_TOKEN or create var/api-token")
    admin_token = _setting(args.admin_token, "PLANGATE_ADMIN_TOKEN", "var/admin-token")
    if not admin_token:
        return _usage("no admin token, which each lifecycle's POST /v1/jobs/sweep needs: pass --admin-token, set "
                      "PLANGATE_ADMIN_TOKEN or create var/admin-token")
    gate = GateCalls(args.url, secret, token, admin_token)
    base = args.subject or f"sim-{secrets.token_hex(4)}"
    results: dict[str, bool] = {}
    try:
        gate.call("GET", "/healthz")
        gate.check(base)         # a wrong token is a usage error: found before any event is sent
        gate.sweep()             # the admin token too (a sweep is what the schedule runs every minute anyway)
    except (Refused, Unreachable) as exc:
        return _usage(str(exc))
    try:
        for name in names:
            subject = base if args.subject and len(names) == 1 else f"{base}-{name}"
            results[name] = _play(gate, lives[name], subject, out)
    except Unreachable as exc:
        return _usage(str(exc))
    passed = sum(results.values())
    print(f"{passed} of {len(results)} lifecycle(s) passed", file=out)
    return 0 if passed == len(results) else 1
