"""The console's pages: login, find a subject, the subject (usage, timeline, an admin transition with a
confirmation step), the plan (diagram, statuses in words, who is where) and the gate's health. Every read is a
store query the API makes too; every action goes through Gate.admin, the door of POST /v1/.../transition."""
from __future__ import annotations

import asyncio
import logging
import secrets
from ipaddress import ip_address, ip_network
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from plangate.policy import explain_plan

from ..gate import NotInPlan, StoreUnavailable
from ..logs import log
from ..http._auth import matches
from ..http import _input as inp
from ..http._input import BadRequest, in_path, subject as subject_id, text
from ..http.api import GATE, iso
from ..http.console_api import CENSUS
from ._html import csrf_field, e, link, page, subject_path, without_directories
from ..store import ConsoleSession
from ._session import COOKIE, LOGIN_COOKIE, FailedLogins, Sessions, same
from ._svg import plan_diagram, transitions_table, usage_bars, usage_history

SESSIONS = web.AppKey("console_sessions", Sessions)
FAILED = web.AppKey("console_failed_logins", FailedLogins)
TOKENS = web.AppKey("console_tokens", tuple)      # (API Authorization values, admin Authorization values)
_MAX_FORM = 4096
_LABEL_MAX = 64
PAST_WINDOWS = 5        # the usage chart's windows before the current one


def _over_tls(request: web.Request) -> bool:
    """Whether the browser reached the console over TLS: to the gate itself, or to a proxy that says so
    (X-Forwarded-Proto). Trusting the header costs nothing: it can only make a cookie stricter."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def _cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, path="/console", httponly=True, samesite="Strict", secure=_over_tls(request),
                        max_age=max_age)


async def _form(request: web.Request, limit: int = _MAX_FORM) -> dict[str, str]:
    if request.content_length is None or request.content_length > limit:
        raise _refused(413, f"The form must say its length and be at most {limit} bytes.")
    if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
        # No browser compresses a form; the app decodes no body it is not asked to (_input.decoded).
        raise _refused(415, "The form must be sent as it is, without a Content-Encoding.")
    try:
        if request.content.is_eof():
            form = await request.post()
        else:               # a form trickled in holds a connection (the login form needs no token)
            async with asyncio.timeout(inp.BODY_TIMEOUT):
                form = await request.post()
    except TimeoutError:
        raise _refused(408, f"The form did not arrive within {inp.BODY_TIMEOUT:g} seconds.") from None
    except (ValueError, LookupError):   # a form that is not UTF-8; a charset Python does not know (LookupError)
        raise _refused(400, "The form could not be read: send it as UTF-8, URL-encoded.") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    for value in fields.values():
        plain(value)
    return fields


def plain(value: str) -> str:
    """value, refused (400) when it holds a NUL, which no field takes (PostgreSQL stores none: it failed as a
    store error, a 503 and a false alarm)."""
    if "\x00" in value:
        raise _refused(400, "A NUL character is in what was sent: no field takes one.")
    return value


async def _session(request: web.Request) -> ConsoleSession:
    try:
        session = await request.app[SESSIONS].get(request.cookies.get(COOKIE))
    except StoreUnavailable:
        raise _refused(503, "The store cannot be read right now, so your session cannot be checked: try again "
                            "shortly.") from None
    if session is None:
        raise web.HTTPSeeOther("/console/login")
    return session


async def _posted(request: web.Request, *, admin: bool = False, limit: int = _MAX_FORM
                  ) -> tuple[ConsoleSession, dict[str, str]]:
    """The session and form of a POST, its CSRF token checked (and the admin scope, for an action)."""
    session = await _session(request)
    form = await _form(request, limit)
    if not same(form.get("csrf"), session.csrf):
        raise _refused(403, "The form's CSRF token is missing or wrong: reload the page and try again.")
    if admin and not session.admin:
        raise _refused(403, "This console was opened with the read-only API token: actions need the admin token.")
    return session, form


def _refused(status: int, why: str) -> Refused:
    return Refused(page("Refused", f'<p class="bad">{e(why)}</p><p>{link("/console/", "Back")}</p>',
                        status=status))


class Refused(Exception):
    """A page that refuses the request, raised from deep in a handler (setup's wrapper answers with it)."""

    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


# --- login / logout -----------------------------------------------------------------------------------

def _login_page(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    nonce = secrets.token_urlsafe(24)
    body = (f'{f"<p class=bad>{e(message)}</p>" if message else ""}'
            '<form method="post" action="/console/login">'
            f'<input type="hidden" name="csrf" value="{nonce}">'
            '<label>Your name (recorded with what you do) <input name="label" required maxlength="64" '
            'autocomplete="username"></label>'
            '<label>Token (PLANGATE_ADMIN_TOKEN; PLANGATE_API_TOKEN for a read-only console) '
            '<input name="token" type="password" required autocomplete="current-password"></label>'
            '<button>Log in</button></form>')
    response = page("Log in", body, status=status)
    _cookie(response, request, LOGIN_COOKIE, nonce, 3600)
    return response


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request)


def client_address(request: web.Request, trusted: tuple) -> str:
    """Who is logging in: the connection's address, or, when that is a trusted proxy (PLANGATE_TRUSTED_PROXIES),
    the right-most X-Forwarded-For address that is not one: what the nearest untrusted hop was seen as (the
    addresses left of it are whatever the client wrote). A hop with a port (`203.0.113.9:41000`, `[::1]:80`)
    counts by its address; one that is no address at all leaves the connection's (a proxy's) address."""
    remote = _ip(request.remote or "")
    if not trusted or remote is None or not any(remote in network for network in trusted):
        return request.remote or ""
    address = remote
    hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
    for hop in reversed(hops):
        ip = _ip(hop)
        if ip is None:
            break
        address = ip
        if not any(ip in network for network in trusted):
            break
    return str(address)


def limited_as(address: str) -> str:
    """What the login limit counts an address by: an IPv6 address by its /64 (one household or host holds a
    whole /64, and would get ten tries an address), any other as it is."""
    ip = _ip(address)
    return str(ip_network(f"{ip}/64", strict=False)) if ip is not None and ip.version == 6 else address


def _ip(text: str):
    """The address of a forwarded hop or a peer (its port, brackets and IPv4-mapped form left out), or None."""
    text = text.strip()
    if text.startswith("["):                        # [v6]:port or [v6]
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:                      # v4:port
        text = text.partition(":")[0]
    text = text.partition("%")[0]                   # a v6 scope id names the proxy's interface, not the client
    try:
        ip = ip_address(text)
    except ValueError:
        return None
    return getattr(ip, "ipv4_mapped", None) or ip


async def login(request: web.Request) -> web.Response:
    form = await _form(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not same(form.get("csrf"), nonce):
        log(logging.WARNING, "console_login_refused", address=client_address(
            request, request.app[GATE].config.trusted_proxies), why="csrf")
        return _login_page(request, "The form's CSRF token is missing or wrong: try again.", 403)
    label = " ".join(form.get("label", "").split())[:_LABEL_MAX]
    if not label:
        return _login_page(request, "Give your name: it is recorded with what you do.", 400)
    if not label.isprintable():     # the audit's actor: the API's rule (no control or direction characters)
        return _login_page(request, "Your name may hold no control or formatting characters.", 400)
    failed, address = request.app[FAILED], client_address(request, request.app[GATE].config.trusted_proxies)
    counted = limited_as(address)
    wait = failed.wait(counted)
    if wait:        # before the token is compared: a limited address learns nothing from its guesses
        log(logging.WARNING, "console_login_refused", address=address, why="rate_limited", wait=wait)
        response = _login_page(request, f"Too many wrong tokens from your address: try again in {wait} seconds.",
                               429)
        response.headers["Retry-After"] = str(wait)
        return response
    api, admin = request.app[TOKENS]
    given = "Bearer " + form.get("token", "")
    is_admin = matches(given, admin)
    if not is_admin and not matches(given, api):
        failed.failed(counted)
        log(logging.WARNING, "console_login_refused", address=address, why="wrong_token")
        return _login_page(request, "Wrong token.", 401)
    try:
        sid, session = await request.app[SESSIONS].open(label, is_admin, given, replacing=request.cookies.get(COOKIE))
    except StoreUnavailable:
        return _login_page(request, "The store cannot be written right now, so no session can open: try again "
                                    "shortly.", 503)
    log(logging.INFO, "console_login", label=label, scope="admin" if is_admin else "read-only", address=address,
        session=session.id_hash[:8])
    response = web.HTTPSeeOther("/console/")
    _cookie(response, request, COOKIE, sid, 8 * 3600)
    response.del_cookie(LOGIN_COOKIE, path="/console")
    raise response


async def logout(request: web.Request) -> web.Response:
    session, _ = await _posted(request)
    try:
        await request.app[SESSIONS].close(request.cookies.get(COOKIE))
    except StoreUnavailable:
        raise _refused(503, "The store cannot be written right now, so your session could not end: try again "
                            "shortly.") from None
    log(logging.INFO, "console_logout", label=session.label, session=session.id_hash[:8])
    response = web.HTTPSeeOther("/console/login")
    response.del_cookie(COOKIE, path="/console")
    raise response


# --- find ------------------------------------------------------------------------------------------------

async def home(request: web.Request) -> web.Response:
    session = await _session(request)
    mode = "admin" if session.admin else "read-only"
    body = ('<form method="get" action="/console/find"><label>Subject id, Stripe customer (cus_…) or '
            'subscription (sub_…) <input name="q" required maxlength="200"></label><button>Find</button></form>'
            f'<p class="muted">You are {e(session.label)} ({mode}).</p>')
    return page("Find a subject", body, csrf=session.csrf, who=session.label)


async def find(request: web.Request) -> web.Response:
    session = await _session(request)
    q = plain(request.query.get("q", "")).strip()[:200]
    gate = request.app[GATE]
    subject: str | None = q
    if q.startswith(("cus_", "sub_")):     # a Stripe id: the subject its webhook events linked to it
        try:
            subject = await gate.timed("find", gate.store.find_subject(q, q))
        except StoreUnavailable:
            raise _refused(503, "The store cannot be read right now; try again.") from None
    if not subject:
        return page("Find a subject", f"<p class=bad>No subject is linked to {e(q) or 'that'}.</p>"
                    + link("/console/", "Search again"), csrf=session.csrf, who=session.label, status=404)
    raise web.HTTPSeeOther(subject_path(subject))


def _subject(request: web.Request) -> str:
    """The subject a page is about: in its path, or (`.` and `..`: subject_path) in its query's `id`."""
    try:
        return subject_id({"subject": in_path(request) if "subject" in request.match_info else
                           request.query.get("id", "")})
    except BadRequest as exc:
        raise _refused(400, exc.message) from None


# --- a subject ---------------------------------------------------------------------------------------------

async def subject(request: web.Request) -> web.Response:
    session = await _session(request)
    gate = request.app[GATE]
    name = _subject(request)
    try:
        view = await gate.describe(name)
        events = await gate.timed("events", gate.store.events(name, 50)) if view["known"] else []
        history = await gate.timed("transitions", gate.store.transitions(name, 50)) if view["known"] else []
        past = await _past_windows(gate, name) if view["known"] else {}
    except StoreUnavailable:
        raise _refused(503, "The store cannot be read right now; try again.") from None
    usage = [(start, meter, used) for meter, rows in past.items() for start, used in rows if used]
    usage += [(u["window_start"], u["meter"], u["used"]) for u in view["usage"] if u["used"]]
    parts = [_summary(view), _usage(view, past), _credits(view), _timeline(events, history, usage)]
    if session.admin:
        parts.append(_action_form(request, name, session))
    else:
        parts.append('<p class="muted">Read-only console: actions need the admin token.</p>')
    return page(f"Subject {name}", without_directories("".join(parts), gate.table.plan.file), csrf=session.csrf,
                who=session.label)


def _day(start: int) -> str:
    return (iso(start) or "")[5:16].replace("T00:00", "")


def _rows(pairs) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in pairs) + "</table>"


def _summary(view: dict) -> str:
    known = "" if view["known"] else '<p class="muted">Not stored yet: what the plan gives a new subject.</p>'
    return known + "<section>" + _rows([
        ("status", f'<strong id="status">{e(view["status"])}</strong>'), ("tier", e(view["tier"])),
        ("since", e(iso(view["since"]))), ("timer due", e(iso(view["timer_due"]))),
        ("billing period", f'{e(iso(view["period_start"]))} → {e(iso(view["period_end"]))}'),
        ("plan version", e(view["plan_version"])),
        ("Stripe customer", e(view["stripe_customer"])), ("Stripe subscription", e(view["stripe_subscription"])),
        ("features", e(", ".join(view["features"]) if view["features"] else "none")),
    ]) + "</section>"


async def _past_windows(gate, name: str) -> dict[str, list[tuple[int, int]]]:
    """Per meter, (window start, used) of up to PAST_WINDOWS windows before the current one, oldest first: the
    windows just before each other as the plan draws them now (a window of the billing period, or one whose
    bounds moved with the subject's state, stops the walk). One store read for all of them."""
    stored = await gate.timed("load", gate.store.load(name))
    if stored is None:
        return {}
    table, now = gate.table, gate.clock()
    state = table.named(stored.state, now)
    pairs = []
    for meter in table.meters:
        span = table.window(state, meter, now)
        for _ in range(PAST_WINDOWS):
            before = table.window(state, meter, span.start - 1)
            if before.start >= span.start or before.end != span.start:
                break
            pairs.append((meter, before.start))
            span = before
    used = await gate.timed("usage", gate.store.used(name, pairs)) if pairs else {}
    out: dict[str, list[tuple[int, int]]] = {}
    for meter, start in reversed(pairs):
        out.setdefault(meter, []).append((start, used.get((meter, start), 0)))
    return out


def _usage(view: dict, past: dict[str, list[tuple[int, int]]]) -> str:
    rows = "".join(f'<tr><td>{e(u["meter"])}</td><td>{e(u["used"])}</td><td>{e(u["limit"])}</td>'
                   f'<td class="{"ok" if u["allowed"] else "bad"}">{e(u["reason"])}</td>'
                   f'<td>{e(iso(u["window_start"]))} → {e(iso(u["resets_at"]))}</td><td>{e(u["rule"])}</td></tr>'
                   for u in view["usage"])
    charts = "".join(usage_history(u["meter"], u["limit"], [
        *((_day(start), used) for start, used in past.get(u["meter"], ())), ("now", u["used"] or 0)])
        for u in view["usage"] if past.get(u["meter"]))
    return ("<section><h2>Usage in the current window</h2>" + usage_bars(view["usage"])
            + (f"<h3>Past windows</h3>{charts}" if charts else "")
            + '<div class="wide"><table><tr><th>meter</th><th>used</th><th>limit</th><th>answer</th><th>window</th>'
            + f"<th>plan rule</th></tr>{rows}</table></div></section>")


def _credits(view: dict) -> str:
    if not view["credits"]:
        return ""
    rows = "".join(f'<tr><td>{e(c.get("meter"))}</td><td>{e(c.get("balance", ""))}</td></tr>' for c in view["credits"])
    return f"<section><h2>Credits</h2><table><tr><th>meter</th><th>balance</th></tr>{rows}</table></section>"


def _timeline(events, history, usage=()) -> str:
    """Stripe events (with what they did), transitions (with their cause, and who for an admin's) and usage per
    window (at the window's start), newest first."""
    lines = [(ev.created, "stripe", f"{e(ev.type)} <code>{e(ev.id)}</code>",
              f'<span class="outcome">{e(ev.outcome)}</span> {e(ev.reason)}') for ev in events]
    for a in history:
        who = f" by <strong>{e(a.actor)}</strong>" if a.actor else ""
        lines.append((a.at, "transition", f"{e(a.from_status)} → <strong>{e(a.to_status)}</strong>",
                      f"{e(a.trigger)}{who}: {e(a.reason)} <span class=muted>(plan {e(a.plan_version)}"
                      f"{', cause ' + e(a.cause_id) if a.cause_id else ''})</span>"))
    lines += [(start, "usage", f"{e(used)} {e(meter)}", "in the window that starts here")
              for start, meter, used in usage]
    lines.sort(key=lambda line: line[0], reverse=True)
    rows = "".join(f'<tr class="{kind}"><td>{e(iso(at))}</td><td>{kind}</td><td>{what}</td><td>{why}</td></tr>'
                   for at, kind, what, why in lines)
    return ('<section><h2>Timeline</h2><div class="wide"><table id="timeline"><tr><th>when</th><th>kind</th>'
            f"<th>what</th><th>outcome / why</th></tr>{rows or '<tr><td colspan=4>nothing yet</td></tr>'}"
            "</table></div></section>")


def _action_form(request: web.Request, name: str, session: ConsoleSession) -> str:
    table = request.app[GATE].table
    options = "".join(f'<option value="to:{e(s)}">move to {e(s)}</option>' for s in table.statuses)
    options += "".join(f'<option value="action:{e(a)}">action {e(a)}</option>' for a in table.actions)
    return (f'<section><h2>Act</h2><form method="post" action="{e(subject_path(name, "/transition"))}">'
            f'{csrf_field(session.csrf)}<label>What <select name="what">{options}</select></label>'
            '<label>Why (recorded) <input name="reason" required maxlength="200"></label>'
            "<button>Review</button></form></section>")


async def act(request: web.Request) -> web.Response:
    """An admin transition or action: the first POST shows what would happen; the second (confirm=yes) does it,
    through Gate.admin with the console user's label as the actor."""
    session, form = await _posted(request, admin=True)
    gate = request.app[GATE]
    name = _subject(request)
    kind, _, target = form.get("what", "").partition(":")
    reason = form.get("reason", "").strip()
    allowed = gate.table.statuses if kind == "to" else gate.table.actions if kind == "action" else ()
    if target not in allowed:
        raise _refused(400, f"Choose a status or an action of the plan (not {form.get('what', '')!r}).")
    if not reason:
        raise _refused(400, "Give a reason: it is recorded with the transition.")
    try:
        text({"reason": reason}, "reason")      # the API's rule for a reason
    except BadRequest as exc:
        raise _refused(400, exc.message) from None
    back = subject_path(name)
    if form.get("confirm") != "yes":
        what = f"move {name} to {target}" if kind == "to" else f"apply the action {target} to {name}"
        body = (f"<p>You are about to <strong>{e(what)}</strong> because “{e(reason)}”, as "
                f"<strong>{e(session.label)}</strong>.</p>"
                f'<form method="post" action="{e(subject_path(name, "/transition"))}">{csrf_field(session.csrf)}'
                f'<input type="hidden" name="what" value="{e(kind)}:{e(target)}">'
                f'<input type="hidden" name="reason" value="{e(reason)}">'
                '<input type="hidden" name="confirm" value="yes"><button id="confirm">Confirm</button> '
                f'{link(back, "Cancel")}</form>')
        return page("Confirm", body, csrf=session.csrf, who=session.label)
    try:
        await gate.admin(name, to=target if kind == "to" else None, action=target if kind == "action" else None,
                         why=reason, actor=f"console:{session.label}")
    except NotInPlan:       # a reload swapped the plan since the check above
        raise _refused(400, f"Choose a status or an action of the plan (not {form.get('what', '')!r}).") from None
    except StoreUnavailable:
        raise _refused(503, "The store cannot be written right now; nothing changed; try again.") from None
    raise web.HTTPSeeOther(back)


# --- the plan, health ---------------------------------------------------------------------------------------

async def plan(request: web.Request) -> web.Response:
    session = await _session(request)
    gate = request.app[GATE]
    try:
        counts = (await request.app[CENSUS].get(gate)).statuses
    except StoreUnavailable:
        counts = None
    table = gate.table
    file = Path(table.plan.file).name      # not the gate's directories
    rows = "".join(f"<tr><td>{link('/console/plan#' + quote(s), s)}</td><td>{e((counts or {}).get(s, 0))}</td></tr>"
                   for s in table.statuses)
    body = (f"<p>Version <code>{e(table.version)}</code> from {e(file)}.</p>"
            f'<section class="wide">{plan_diagram(table.plan, counts)}</section>'
            f'<section class="wide"><h2>Transitions</h2>{transitions_table(table.plan)}</section>'
            f"<section><h2>Subjects per status</h2><table><tr><th>status</th><th>subjects</th></tr>{rows}</table>"
            f"</section><section><h2>Each status in words</h2>"
            f"<pre>{e(explain_plan(table.plan).replace(table.plan.file, file))}</pre></section>"
            '<p><a href="/console/plan/proposal">Preview a proposed plan: its diff and impact</a></p>')
    return page("The plan", body, csrf=session.csrf, who=session.label)


async def health(request: web.Request) -> web.Response:
    session = await _session(request)
    gate = request.app[GATE]
    try:
        await gate.timed("ping", gate.store.ping())
        store = '<span class="ok">answers</span>'
    except StoreUnavailable:
        store = '<span class="bad">does not answer</span>'
    c = gate.config
    body = _rows([("store", store), ("plan version", e(gate.table.version)),
                  ("enforcement", e("on" if c.enabled else "off")),
                  ("kill switch", e("on" if c.kill_switch else "off")),
                  ("fail mode when the store fails", e(c.fail_mode)),
                  ("cache", e(f"{c.cache_ttl}s, up to {c.cache_size} subjects")),
                  ("jobs", e(f"sweep {c.sweep_schedule}; reconcile {c.reconcile_schedule}; "
                             f"cleanup {c.cleanup_schedule}; report {c.report_schedule}")),
                  *((title, f'<span id="{name}">{e(_counted(counter))}</span>') for name, title, counter in (
                      ("fail-mode-answers", "fail-mode answers since start", gate.metrics.fail_mode),
                      ("cache-lookups", "cache lookups since start", gate.metrics.cache),
                      ("store-errors", "store failures since start", gate.metrics.store_errors)))])
    return page("Health", body, csrf=session.csrf, who=session.label)


def _counted(counter) -> str:
    counts = counter.counts()
    return ", ".join(f"{'/'.join(k)}: {v:.0f}" for k, v in sorted(counts.items())) or "none"


ROUTES = (
    ("GET", "/console/login", login_form),
    ("POST", "/console/login", login),
    ("POST", "/console/logout", logout),
    ("GET", "/console/", home),
    ("GET", "/console/find", find),
    ("GET", "/console/subjects/{subject}", subject),
    ("POST", "/console/subjects/{subject}/transition", act),
    ("GET", "/console/subject", subject),       # ?id=. or ?id=.. (subject_path)
    ("POST", "/console/subject/transition", act),
    ("GET", "/console/plan", plan),
    ("GET", "/console/health", health),
)
