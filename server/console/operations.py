"""The console's operational pages: the webhook log (the query of GET /v1/events, a keyset page at a time) and
the jobs (last run and last failure on this node, next run by the schedule)."""
from __future__ import annotations

from datetime import datetime, UTC
from urllib.parse import urlencode

from aiohttp import web
from cronsim import CronSim

from ..gate import StoreUnavailable
from ..http._input import BadRequest
from ..http.api import GATE, JOBS, iso
from ..http.console_api import STORED_OUTCOMES, cursor_of, parse_cursor
from ._html import e, link, page, subject_path, without_directories
from .pages import _refused, _session, plain

PAGE = 50


async def events(request: web.Request) -> web.Response:
    session = await _session(request)
    gate = request.app[GATE]
    outcome = request.query.get("outcome") or None
    type_ = plain(request.query.get("type") or "").strip()[:200] or None
    if outcome is not None and outcome not in STORED_OUTCOMES:
        raise _refused(400, f"Unknown outcome {outcome!r}.")
    try:
        before = parse_cursor(request.query["before"]) if request.query.get("before") else None
        rows = await gate.timed("event_log", gate.store.event_log(outcome, type_, before, PAGE + 1))
    except BadRequest as exc:
        raise _refused(400, exc.message) from None
    except StoreUnavailable:
        raise _refused(503, "The store cannot be read right now; try again.") from None
    shown = rows[:PAGE]
    options = "".join(f'<option{" selected" if o == outcome else ""}>{e(o)}</option>' for o in STORED_OUTCOMES)
    body = [f'<form method="get" action="/console/events"><label>Outcome <select name="outcome"><option value="">'
            f'any</option>{options}</select></label><label>Type <input name="type" value="{e(type_ or "")}" '
            'placeholder="invoice.paid"></label><button>Filter</button> '
            f'{link("/console/events?outcome=pending", "pending (waiting for a link)")}</form>']
    cells, plan_file = [], gate.table.plan.file
    for r in shown:
        who = link(subject_path(r.subject), r.subject) if r.subject else \
            e(" ".join(x for x in (r.stripe_customer, r.stripe_subscription, r.stripe_payment) if x))
        cells.append(f"<tr><td>{e(iso(r.created))}</td><td>{e(r.type)}<br><code>{e(r.id)}</code></td>"
                     f'<td class="outcome">{e(r.outcome)}</td><td>{who}</td>'
                     f"<td>{without_directories(e(r.reason), plan_file)}</td></tr>")
    body.append('<div class="wide"><table id="events"><tr><th>created</th><th>event</th><th>outcome</th>'
                f'<th>subject</th><th>why</th></tr>{"".join(cells) or "<tr><td colspan=5>none</td></tr>"}'
                "</table></div>")
    if len(rows) > PAGE:
        query = {k: v for k, v in (("outcome", outcome), ("type", type_)) if v}
        query["before"] = cursor_of(shown[-1].created, shown[-1].id)
        body.append(f"<p>{link('/console/events?' + urlencode(query), 'Older events →')}</p>")
    return page("Webhook log", "".join(body), csrf=session.csrf, who=session.label)


async def jobs(request: web.Request) -> web.Response:
    session = await _session(request)
    gate = request.app[GATE]
    runner = request.app.get(JOBS)
    c = gate.config
    now = datetime.fromtimestamp(gate.clock(), UTC)
    rows = []
    # What reconcile and report do without a key: nothing, and their runs say so only as "0 changed".
    keyless = {"reconcile": "asks Stripe nothing: STRIPE_SECRET_KEY is not set",
               "report": "sends nothing: STRIPE_SECRET_KEY is not set"} if not c.stripe_secret_key else {}
    for name, schedule in (("sweep", c.sweep_schedule), ("reconcile", c.reconcile_schedule),
                           ("cleanup", c.cleanup_schedule), ("report", c.report_schedule)):
        last = runner.last_runs.get(name) if runner else None
        failed = runner.last_failures.get(name) if runner else None
        upcoming = next(CronSim(schedule, now)).isoformat().replace("+00:00", "Z")
        idle = f' <span class="bad">{e(keyless[name])}</span>' if name in keyless else ""
        rows.append(f'<tr data-job="{e(name)}"><td>{e(name)}{idle}</td><td><code>{e(schedule)}</code></td>'
                    f"<td>{e(upcoming)}</td>"
                    + (f'<td>{e(iso(last.at))} <span class="{"ok" if last.ok else "bad"}">{e(last.outcome)}</span> '
                       f"({last.seconds:.3f} s)</td>" if last else "<td>not since this gate started</td>")
                    + (f'<td class="bad">{e(iso(failed.at))}: {e(failed.outcome)}</td>' if failed else "<td>none</td>")
                    + "</tr>")
    body = ('<p class="muted">Runs on this gate process since it started (a job runs on one node at a time; '
            "failures are also logged and counted in /metrics).</p><div class=\"wide\"><table id=\"jobs\"><tr><th>job"
            "</th><th>schedule</th><th>next run</th><th>last run</th><th>last failure</th></tr>"
            + "".join(rows) + "</table></div>")
    return page("Jobs", body, csrf=session.csrf, who=session.label)


ROUTES = (
    ("GET", "/console/events", events),
    ("GET", "/console/jobs", jobs),
)
