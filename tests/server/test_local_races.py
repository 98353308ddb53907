"""Local decisions under races a review found: two first checks of one subject at once, a client cut off past its
subject limit while a snapshot was under way, a plan reload heard while the plan was being fetched. A slow network
is made by holding responses in the client's own aiohttp session (its trace hooks), nothing of plangate's."""
from __future__ import annotations

import asyncio
import time

import aiohttp

from plangate import local_decisions
from plangate.client import GateClient
from plangate.server import changes
from plangate.server.http.api import GATE

from .conftest import ADMIN_TOKEN, TOKEN
from .test_local_decisions import PATIENT, STALENESS, _caught_up, _greeted, _on_the_gates_plan


def _holding_session(path_part: str):
    """An aiohttp session (the caller's own, passed with session=) whose first response to a URL containing
    `path_part` is held after the gate answered it, until `release` is set: a slow network, nothing else."""
    held, release = asyncio.Event(), asyncio.Event()
    state = {"done": False}

    async def on_request_end(session, ctx, params):
        if path_part in str(params.url) and not state["done"]:
            state["done"] = True
            held.set()
            await release.wait()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return aiohttp.ClientSession(trace_configs=[trace]), held, release


async def _both_refuse_past_the_bound(here: GateClient, there: GateClient, subject: str) -> None:
    """Past the staleness bound (under the gate's 5 s cache TTL), the local copy refuses a closed account as the
    gate does."""
    await asyncio.sleep(STALENESS * 1.5)
    remote = await there.check(subject, "requests")
    local = await here.check(subject, "requests")
    assert remote.reason == "status_denies"
    assert (local.allowed, local.reason) == (remote.allowed, remote.reason), \
        f"local {local.reason}/{local.status} (evaluated_here={local.evaluated_here}) vs gate {remote.reason}"


async def test_two_concurrent_first_checks_of_a_subject_never_keep_a_copy_that_missed_a_transition(gate):
    """Two checks of a subject not yet held run at once (any async server's burst). Each fetched a snapshot: the
    second finished first and took the subject's race marker; the account was then closed; the first's snapshot,
    read before the close, landed after it and was kept (nothing said it raced), deciding `ok` until max_age
    (the gate's cache TTL: 5 s by default, up to an hour) while the gate said `status_denies`. Now the second
    check waits for the first one's fetch."""
    session, held, release = _holding_session("/snapshot")
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here, \
            GateClient(gate.url, TOKEN, admin_token=ADMIN_TOKEN, timeout=PATIENT) as there:
        await there.consume("racer", "requests", 1, idempotency_key="stored")
        assert await here.local.ready()
        first = asyncio.ensure_future(here.check("racer", "requests"))
        await asyncio.wait_for(held.wait(), PATIENT)            # its snapshot was read; its answer is on the way
        second = asyncio.ensure_future(here.check("racer", "requests"))     # a concurrent check of it
        await asyncio.wait([second], timeout=1.0)       # (its own fetch landed first, and took the race marker)
        await there.transition("racer", action="close_account", reason="test")
        await _caught_up(here, gate)                            # the client heard the close: copy dropped
        release.set()
        await asyncio.gather(first, second)
        await _both_refuse_past_the_bound(here, there, "racer")


async def test_a_client_cut_off_past_its_subject_limit_resets_though_a_snapshot_came_in_between(
        gate, monkeypatch):
    """Past MAX_SUBJECTS the gate drops the client's subjects and cuts its stream so that it resumes with
    `reset`. A snapshot in flight at that moment (a concurrent check) watched again, the reconnect found the
    client known and resumed without `reset`, and the copies of every dropped subject were never told of a
    change again (kept until max_age)."""
    monkeypatch.setattr(changes, "MAX_SUBJECTS", 3)
    async with GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS) as here, \
            GateClient(gate.url, TOKEN, admin_token=ADMIN_TOKEN, timeout=PATIENT) as there:
        assert await here.local.ready()
        for subject in ("held-a", "held-b", "held-c"):
            assert (await here.check(subject, "requests")).evaluated_here
        reconnects = here.local.reconnects
        await asyncio.gather(here.check("held-d", "requests"), here.check("held-e", "requests"))
        for _ in range(500):                            # cut off, reconnected, resumed
            if here.local.reconnects > reconnects and here.local.fresh:
                break
            await asyncio.sleep(0.01)
        assert here.local.reconnects > reconnects and here.local.fresh
        await asyncio.sleep(0.2)
        # (without a reset, the copy of held-a would still decide here, and nobody at the gate watches it)
        await there.transition("held-a", action="close_account", reason="test")
        await _both_refuse_past_the_bound(here, there, "held-a")


async def test_after_a_plan_reload_subjects_stored_before_it_are_decided_here_again(start_gate, tmp_path):
    """Every stored state carries the plan version it was written under: after any deploy, a copy of a subject
    stored before it was never decided here (and no fallback was counted), though the gate decides it by the
    new plan (no tier keeps the old quotas). Only a version the gate keeps subscribers on is the gate's."""
    from .conftest import PLAN
    plan = tmp_path / "plans.yaml"
    text = PLAN.read_text(encoding="utf-8")
    assert text.count("requests: {limit: 20, per: day}") == 1
    plan.write_text(text, encoding="utf-8")
    gate = await start_gate(plan=plan)
    async with GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS) as here, \
            GateClient(gate.url, TOKEN, timeout=PATIENT) as there:
        await there.consume("before-deploy", "requests", 1, idempotency_key="stored")
        assert await here.local.ready()
        assert (await here.check("before-deploy", "requests")).evaluated_here
        plan.write_text(text.replace("requests: {limit: 20, per: day}", "requests: {limit: 25, per: day}"),
                        encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert status == 200, answer
        assert await here.local.ready()
        await _on_the_gates_plan(here, gate)
        remote = await there.check("before-deploy", "requests")
        assert remote.limit == 25
        decided_here = [(await here.check("before-deploy", "requests")).evaluated_here for _ in range(5)]
        assert all(decided_here), "a subject stored before the deploy is never decided here again"


async def test_a_plan_reload_heard_while_the_plan_is_being_fetched_is_not_left_at_the_older_plan(
        start_gate, tmp_path):
    """A `plan` event while GET /v1/plan is in flight: _refetch_plan starts no new task (one runs), and the
    running one installs the plan it read, the older one. The client then holds a table of another version
    than the gate's: ready() says True, every snapshot is refused (plan_version differs), and every check goes
    to the gate until the stream reconnects (PLANGATE_STREAM_MAX_SECONDS, 300 s by default)."""
    from .conftest import PLAN
    plan = tmp_path / "plans.yaml"
    text = PLAN.read_text(encoding="utf-8")
    plan.write_text(text, encoding="utf-8")
    gate = await start_gate(plan=plan)
    session, held, release = _holding_session("/v1/plan")
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here:
        await asyncio.wait_for(held.wait(), PATIENT)            # the first plan fetch read the plan
        plan.write_text(text.replace("requests: {limit: 20, per: day}", "requests: {limit: 25, per: day}"),
                        encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert status == 200, answer
        await _caught_up(here, gate)                            # the `plan` event was heard
        release.set()
        assert await here.local.ready()
        await asyncio.sleep(1.0)
        assert here.local.table.version == gate.app[GATE].table.version, "the client kept the older plan"
        assert (await here.check("after-reload", "requests")).evaluated_here


async def test_a_check_never_raises_when_a_plan_reload_lands_during_concurrent_first_fetches(start_gate, tmp_path):
    """The same lost race marker (touched popped by a concurrent fetch) with a `plan` event: the held fetch
    finds nothing raced and reads self.table.version while the new plan is still being fetched (table None):
    AttributeError out of GateClient.check, which promises a decision (or GateRequestError) and nothing else."""
    from .conftest import PLAN
    plan = tmp_path / "plans.yaml"
    text = PLAN.read_text(encoding="utf-8")
    plan.write_text(text, encoding="utf-8")
    gate = await start_gate(plan=plan)
    calls = {"/snapshot": 0, "/v1/plan": 0}
    hold = {("/snapshot", 1): asyncio.Event(), ("/v1/plan", 2): asyncio.Event()}    # (path, nth) -> release
    reached = {key: asyncio.Event() for key in hold}

    async def on_request_end(session, ctx, params):
        for part in calls:
            if str(params.url).split("?")[0].endswith(part) or (part == "/snapshot" and part in str(params.url)):
                calls[part] += 1
                key = (part, calls[part])
                if key in hold:
                    reached[key].set()
                    await hold[key].wait()

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    session = aiohttp.ClientSession(trace_configs=[trace])
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await here.local.ready()
        first = asyncio.ensure_future(here.check("reloaded", "requests"))
        await asyncio.wait_for(reached[("/snapshot", 1)].wait(), PATIENT)
        second = asyncio.ensure_future(here.check("reloaded", "requests"))  # a concurrent check of it
        await asyncio.wait([second], timeout=1.0)       # (its own fetch landed first, and took the race marker)
        plan.write_text(text.replace("requests: {limit: 20, per: day}", "requests: {limit: 25, per: day}"),
                        encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert status == 200, answer
        await asyncio.wait_for(reached[("/v1/plan", 2)].wait(), PATIENT)    # the new plan is being fetched
        assert here.local.table is None
        hold[("/snapshot", 1)].set()
        try:
            decisions = await asyncio.gather(first, second)
        finally:
            hold[("/v1/plan", 2)].set()
        assert [d.reason for d in decisions] == ["ok", "ok"]


async def test_a_subscriber_kept_on_an_older_plan_version_is_still_the_gates_to_decide(start_gate, tmp_path):
    """Pro lowered to 3000 with existing_subscribers: at_renewal: a subscriber stored before the deploy keeps 5000
    until renewal, which the client's copy of the plan (the active version alone) cannot say."""
    from . import stripe_events as se
    from .conftest import ROOT
    from .test_webhook import deliver
    plan = tmp_path / "plans.yaml"
    plan.write_text((ROOT / "plans.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    gate = await start_gate(plan=plan, STRIPE_WEBHOOK_SECRET=se.SECRET)
    now = time.time()
    created = se.subscription("active", "kept", start=now - 86400, end=now + 29 * 86400)
    await deliver(gate, se.event("customer.subscription.created", created, now - 60))
    plan.write_text((ROOT / "scenarios" / "plans" / "pro-3000-at-renewal.yaml").read_text(encoding="utf-8"),
                    encoding="utf-8")
    status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
    assert status == 200 and answer["outcome"] == "applied", answer
    async with GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS) as here:
        assert await here.local.ready()
        for _ in range(200):
            if here.local.table is not None and here.local.kept:
                break
            await asyncio.sleep(0.01)
        decisions = [await here.check("kept", "requests") for _ in range(3)]
        assert [(d.limit, d.status, d.evaluated_here) for d in decisions] == [(5000, "paid", False)] * 3
        fresh = await here.check("new-after-deploy", "requests")
        assert fresh.evaluated_here and fresh.status == "limited_free_trial"


async def test_a_head_request_for_a_clients_stream_leaves_its_live_stream_alone(gate):
    """HEAD goes wherever GET goes; on /v1/stream?client=X it registered a listener named X, which cut X's live
    stream off (X reconnected and resumed; a monitor probing the route would cut every client it named)."""
    import aiohttp
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{gate.url}/v1/stream?max_seconds=3&client=probed-client", headers=auth) as live:
            await live.content.readuntil(b"event: hello")
            listener = gate.app[GATE].feed.named["probed-client"]
            async with s.head(f"{gate.url}/v1/stream?client=probed-client", headers=auth) as probe:
                assert probe.status == 200 and probe.headers["Content-Type"].startswith("text/event-stream")
            assert gate.app[GATE].feed.named.get("probed-client") is listener and not listener.cut


async def test_a_subject_counted_while_its_snapshot_was_on_the_way_is_kept_with_those_counts(gate):
    """A count heard during a fetch made the client refuse the snapshot: a subject others consume all the time
    was never decided here. A count says its window's whole figure, so it is merged into the snapshot instead;
    a change of the subject's state still makes the snapshot be refused (the first test)."""
    session, held, release = _holding_session("/snapshot")
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here, \
            GateClient(gate.url, TOKEN, timeout=PATIENT) as there:
        await there.consume("busy", "requests", 1, idempotency_key="first")
        assert await here.local.ready()
        first = asyncio.ensure_future(here.check("busy", "requests"))
        await asyncio.wait_for(held.wait(), PATIENT)            # its snapshot was read: used 1
        counted = await there.consume("busy", "requests", 2, idempotency_key="meanwhile")
        await _caught_up(here, gate)                            # the client heard that count
        release.set()
        await first
        assert "busy" in here.local.copies
        local = await here.check("busy", "requests")
        remote = await there.check("busy", "requests")
        assert local.evaluated_here and not remote.evaluated_here
        assert local.used == remote.used == counted.used == 3


def _slow_snapshots(seconds: float, checks: float = 0.0):
    """The caller's own session: each snapshot's answer held `seconds` after the gate gave it (a slow network),
    each check's `checks`, and the snapshots asked for counted."""
    asked = {"snapshots": 0}

    async def on_request_end(session, ctx, params):
        if params.url.path.endswith("/snapshot"):
            asked["snapshots"] += 1
            await asyncio.sleep(seconds)
        elif params.url.path == "/v1/check":
            await asyncio.sleep(checks)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return aiohttp.ClientSession(trace_configs=[trace]), asked


async def test_a_gate_that_decides_itself_is_asked_without_a_snapshot_first(start_gate):
    """With the kill switch on (or enforcement off) the gate says `local: false`, yet every check of a subject not
    held fetched a snapshot first (a store read at the gate, whose kill switch is often on because its store is in
    trouble) and waited for it before asking: up to twice the client's timeout a check."""
    gate = await start_gate(SUBSCRIPTION_KILL_SWITCH="true")
    timeout = 0.5
    session, asked = _slow_snapshots(timeout * 2)
    async with session, GateClient(gate.url, TOKEN, timeout=timeout, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await _greeted(here) and here.local.allowed is False and not await here.local.ready(0.1)
        started = time.monotonic()
        decisions = [await here.check(f"killed-{i}", "requests") for i in range(5)]
        assert [d.reason for d in decisions] == ["kill_switch"] * 5
        assert asked["snapshots"] == 0 and time.monotonic() - started < 5 * timeout


async def test_a_gate_without_a_cache_decides_itself(start_gate):
    """PLANGATE_CACHE_TTL=0 (no staleness from writes behind the gate's back): a snapshot's max_age is 0, so every
    local check fetched a snapshot (a heavier request than the check) and decided once from it. Such a gate says
    `local: false`: its checks are asked of it, without snapshots."""
    gate = await start_gate(PLANGATE_CACHE_TTL="0")
    session, asked = _slow_snapshots(0)
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await _greeted(here) and here.local.allowed is False and not await here.local.ready(0.1)
        decisions = [await here.check("uncached", "requests") for _ in range(5)]
        assert [(d.allowed, d.evaluated_here) for d in decisions] == [(True, False)] * 5
        assert asked["snapshots"] == 0


async def test_a_first_local_check_keeps_within_the_clients_timeout(gate):
    """A snapshot slow to come took the whole timeout, and the gate's answer then had a whole one of its own: a
    first check could take twice the client's timeout. The snapshot is now waited for a quarter of it, the gate
    answers in the rest, and the snapshot, still on its way, is kept for the next check."""
    timeout = 2.0
    session, asked = _slow_snapshots(timeout * 0.6, checks=timeout / 2)
    async with session, GateClient(gate.url, TOKEN, timeout=timeout, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await here.local.ready() and here.local.allowed
        started = time.monotonic()
        decision = await here.check("slow-first", "requests")
        took = time.monotonic() - started
        assert asked["snapshots"] == 1 and not decision.evaluated_here and decision.reason == "ok", decision
        assert took < timeout, took
        for _ in range(300):
            if "slow-first" in here.local.copies:
                break
            await asyncio.sleep(0.01)
        assert (await here.check("slow-first", "requests")).evaluated_here


async def test_a_gate_that_decides_itself_is_asked_again_once_a_period(start_gate, monkeypatch):
    """While the gate says `local: false`, a snapshot asks again once a period, not on every check after it: one
    that never comes (a slow store, the reason the kill switch is on) did not count as asked."""
    monkeypatch.setattr(local_decisions, "ASK_LOCAL_AGAIN", 0.3)
    gate = await start_gate(SUBSCRIPTION_KILL_SWITCH="true")
    session, asked = _slow_snapshots(1.0)
    async with session, GateClient(gate.url, TOKEN, timeout=0.4, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await _greeted(here) and here.local.allowed is False and not await here.local.ready(0.1)
        await asyncio.sleep(0.35)
        for i in range(5):
            assert (await here.check(f"killed-{i}", "requests")).reason == "kill_switch"
        assert asked["snapshots"] == 1


async def test_a_plan_fetch_that_never_answers_is_asked_again(gate, monkeypatch):
    """GET /v1/plan had no time limit of its own (the stream and snapshots have): one lost on a dead connection
    left the client without a plan, every check asked of the gate, until the session's own timeout (aiohttp's
    default: 5 minutes; none for a caller's session without one), since no other fetch starts while it runs."""
    monkeypatch.setattr(local_decisions, "PLAN_TIMEOUT", 0.5, raising=False)
    session, held, release = _holding_session("/v1/plan")      # the first answer never reaches the client
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here:
        await asyncio.wait_for(held.wait(), PATIENT)
        try:
            assert await here.local.ready(5.0), "no plan: the client waits for an answer that never comes"
            assert (await here.check("patient", "requests")).evaluated_here
        finally:
            release.set()


async def test_a_plan_fetch_that_fails_for_a_while_is_not_given_up(gate):
    """Twenty failed plan fetches 0.2 s apart (a gate restarting, a store slow to answer /v1/plan) and the client
    stopped asking: with its stream up it had no plan, and every check went to the gate, until the stream next
    reconnected (PLANGATE_STREAM_MAX_SECONDS, 5 minutes by default). It keeps asking now, less often as it fails."""
    failing_until = time.monotonic() + 5.0

    async def on_request_start(session, ctx, params):
        if params.url.path == "/v1/plan" and time.monotonic() < failing_until:
            raise aiohttp.ClientConnectionError("the gate cannot be reached")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_request_start)
    session = aiohttp.ClientSession(trace_configs=[trace])
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here:
        assert await here.local.ready(15.0), "the client gave the plan up while its stream was up"
        assert (await here.check("persistent", "requests")).evaluated_here


async def test_a_plan_fetch_answered_before_a_reload_of_the_same_version_is_not_installed(start_gate, tmp_path):
    """A reload that changed only comments keeps the version but moves the rules' lines, and the stream says
    `plan`. A GET /v1/plan the gate answered just before it, still on its way, was installed once it arrived (its
    version is the one wanted): the client's rules named the old lines, for good, until its next reconnect to
    another process."""
    from .conftest import PLAN
    plan = tmp_path / "plans.yaml"
    text = PLAN.read_text(encoding="utf-8")
    plan.write_text(text, encoding="utf-8")
    gate = await start_gate(plan=plan)
    session, held, release = _holding_session("/v1/plan")      # the first plan's answer is slow to arrive
    async with session, GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=STALENESS,
                                   session=session) as here, GateClient(gate.url, TOKEN, timeout=PATIENT) as there:
        await asyncio.wait_for(held.wait(), PATIENT)
        plan.write_text("# Reviewed by ops.\n# Nothing but comments changed.\n" + text, encoding="utf-8")
        status, answer = await gate.post("/v1/plan/reload", {"actor": "ops"})
        assert status == 200 and answer["outcome"] == "unchanged", answer
        for _ in range(500):                # the stream's `plan` reached the client
            if here.local.resets:
                break
            await asyncio.sleep(0.01)
        assert here.local.resets
        release.set()
        assert await here.local.ready(PATIENT)
        await here.check("relined", "requests")
        remote = await there.check("relined", "requests")
        local = await here.check("relined", "requests")
        assert local.evaluated_here and local.rule == remote.rule, (local.rule, remote.rule)
