"""The console's preview of a proposed plan: checked as `plangate lint` would, its differences from the active
plan (`plangate diff`), and their impact on the subjects stored now (`plangate diff --database`, the same code
on the gate's own store). A preview only: nothing is deployed (that is POST /v1/plan/reload, on the plan file)."""
from __future__ import annotations

import asyncio
from dataclasses import replace

from aiohttp import web

from plangate.policy import check_text, diff_plans

from ..gate import StoreUnavailable
from ..http.api import GATE
from ..plan_impact import impact_in
from ..store import StoreError
from ._html import csrf_field, e, page
from ..store import ConsoleSession
from .pages import _posted, _refused, _session

MAX_PLAN = 256 * 1024
PROPOSED = "proposed.yaml"
# One preview at a time per process: each compiles a plan and reads every stored subject for its impact, and
# the read-only token opens previews too, so many at once must not take the store from the decisions.
PREVIEWING = web.AppKey("console_previewing", asyncio.Lock)
BUSY_RETRY = 5      # seconds a refused preview is told to wait


def proposal_form(csrf: str, text: str = "") -> str:
    return ('<section><h2>Preview a proposed plan</h2><form method="post" action="/console/plan/proposal">'
            f'{csrf_field(csrf)}<label>The whole proposed plans.yaml <textarea name="plan" rows="12" '
            f'style="width:100%;font-family:monospace" required>{e(text)}</textarea></label>'
            "<button>Show the diff and its impact</button></form></section>")


async def preview(request: web.Request) -> web.Response:
    session, form = await _posted(request, limit=MAX_PLAN)
    previewing = request.app[PREVIEWING]
    if previewing.locked():
        refused = _refused(503, f"Another preview is being computed on this gate: try again in {BUSY_RETRY} "
                                "seconds.")
        refused.response.headers["Retry-After"] = str(BUSY_RETRY)
        raise refused
    async with previewing:
        return await _preview(session, form, request)


async def _preview(session: ConsoleSession, form: dict[str, str], request: web.Request) -> web.Response:
    text = form.get("plan", "")
    gate = request.app[GATE]
    # Lint and diff in a thread: a plan of hundreds of transitions takes seconds to check (each pair of them is
    # compared), and on the loop a read-only console user held every decision meanwhile.
    checked = await asyncio.to_thread(check_text, text, PROPOSED)
    findings = "".join(f"<li class=\"{'bad' if f.is_error else ''}\">{e(f)}</li>" for f in checked.findings)
    parts = [f"<h2>Findings</h2><ul id=\"findings\">{findings or '<li>none</li>'}</ul>"]
    if checked.ok and checked.plan is not None:
        result = await asyncio.to_thread(diff_plans, gate.table.plan, checked.plan)
        try:
            impact = await gate.timed("impact", impact_in(gate.store, result, gate.clock()), timeout=30.0)
            result = replace(result, impact=tuple(impact))
        except (StoreUnavailable, StoreError):
            parts.append('<p class="bad">The store could not be read: the impact is not shown.</p>')
        changes = "".join(f"<li>{'<strong>strands</strong> ' if c.strands else ''}"
                          f"{'<strong>lowered</strong> ' if c.lowered else ''}{e(c.message)} "
                          f"<span class=muted>({e(PROPOSED)}:{c.location.line})</span></li>" for c in result.changes)
        parts.append(f"<h2>Changes</h2><ul id=\"changes\">{changes or '<li>no change in meaning</li>'}</ul>")
        if result.impact is not None:
            rows = "".join(f"<tr><td>{i.subjects}</td><td class=\"{'bad' if i.strands else ''}\">{e(i.message)}"
                           "</td></tr>" for i in result.impact)
            parts.append(f"<h2>Impact on stored subjects</h2><table id=\"impact\"><tr><th>subjects</th><th>what"
                         f"</th></tr>{rows}</table>")
        verdict = "would strand stored subjects" if result.strands else "strands no subject"
        parts.append(f"<p><strong>The proposed plan {verdict}.</strong></p>")
    else:
        parts.append('<p class="bad">The proposed plan has errors: fix them to see its diff.</p>')
    parts.append(proposal_form(session.csrf, text))
    return page("Proposed plan", "".join(parts), csrf=session.csrf, who=session.label)


async def form_page(request: web.Request) -> web.Response:
    session = await _session(request)
    return page("Proposed plan", proposal_form(session.csrf), csrf=session.csrf, who=session.label)


ROUTES = (
    ("GET", "/console/plan/proposal", form_page),
    ("POST", "/console/plan/proposal", preview),
)
