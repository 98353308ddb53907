"""The plan's routes: the active plan and its history, a reload of the plan file, and the upgrade of subjects
kept on older plan versions. Reload and upgrade change what the gate decides on a person's word: admin routes."""
from __future__ import annotations

import hashlib

from aiohttp import web

from . import _input as inp, _json
from ..gate import StoreUnavailable
from .api import PLANS, iso
MAX_SUBJECTS = 50      # a body of 50 subjects of 200 characters fits in PLANGATE_MAX_BODY_BYTES
_REFUSAL_STATUS = {"plan_invalid": 422, "plan_unreadable": 422, "plan_strands_subjects": 409,
                   "stripe_key_needed": 409, "store_unavailable": 503}


async def plan_view(request: web.Request) -> web.Response:
    keeper = request.app[PLANS]
    try:
        active, record, deploys = await keeper.history()
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store cannot be read right now; try again") from None
    table = keeper.gate.table
    # The text this node runs, which a client deciding locally compiles to give the same rules (lines and file):
    # the one recorded under the version first may differ in comments, layout or path, not in what it says.
    running = keeper.running
    file, document = (running[1], running[2]) if running is not None and running[0] == table.version else \
        ((record.file, record.document) if record else (table.plan.file, None))
    return _json.response({
        "version": table.version,
        "file": file,
        "sha256": hashlib.sha256(document.encode()).hexdigest() if document is not None else None,
        "deployed_at": iso(active.at) if active else None,
        "kept_versions": list(table.kept_versions),
        # Meters credits may pay past a limit: those of this version, and of older ones some tier's subscribers
        # keep (a client compiling this document alone would not know of those).
        "credit_meters": [m for m in table.meters if table.has_credits(m)],
        "node": keeper.node,
        "document": document,
        "history": [{**d.to_dict(), "at": iso(d.at)} for d in deploys],
    })


async def reload(request: web.Request) -> web.Response:
    """Read the plan file again: lint it, check what it would strand, deploy it or keep the running plan."""
    keeper = request.app[PLANS]
    body = await inp.json_object(request, {"actor"}) if request.can_read_body else {}
    actor = inp.text(body, "actor", required=False) or "admin-api"
    done = await keeper.reload(f"reload:{actor}")
    if done.refused is not None:
        return _json.response(done.refused.to_dict(), status=_REFUSAL_STATUS.get(done.refused.code, 409))
    return _json.response(done.to_dict())


async def upgrade(request: web.Request) -> web.Response:
    """Move subjects kept on older plan versions (existing_subscribers: never or at_renewal) to the active one."""
    keeper = request.app[PLANS]
    body = await inp.json_object(request, {"tier", "subjects", "reason", "actor"})
    reason = inp.text(body, "reason")
    actor = inp.text(body, "actor", required=False) or "admin-api"
    tier = inp.text(body, "tier", required=False)
    if tier is not None:
        inp.one_of(tier, tuple(t.name for t in keeper.gate.table.plan.tiers), "unknown_tier", "tier")
    subjects = body.get("subjects")
    if tier is not None and "subjects" in body:
        raise inp.BadRequest(400, "invalid_field", "give 'subjects' (those named) or 'tier' (those on it), not "
                                                   "both; neither: every subject kept on an older plan version")
    if "subjects" in body:
        if not isinstance(subjects, list) or not 1 <= len(subjects) <= MAX_SUBJECTS:
            raise inp.BadRequest(400, "invalid_field", f"'subjects' must be a list of 1 to {MAX_SUBJECTS} subjects")
        subjects = [inp.subject({"subjects": s}, "subjects") for s in subjects]
    try:
        moved = await keeper.upgrade(tier=tier, subjects=subjects, why=reason, actor=actor)
    except StoreUnavailable:
        raise inp.BadRequest(503, "store_unavailable", "the store failed while upgrading; subjects moved so far "
                                                       "stay moved; try again") from None
    return _json.response({"moved": moved, "version": keeper.gate.table.version})


# Reload and upgrade: PLANGATE_ADMIN_TOKEN only (server/http/_auth.py).
ADMIN_PATHS = frozenset({"/v1/plan/reload", "/v1/plan/upgrade"})
ROUTES = (
    ("GET", "/v1/plan", plan_view),
    ("POST", "/v1/plan/reload", reload),
    ("POST", "/v1/plan/upgrade", upgrade),
)
