"""server.client against a real gate on 127.0.0.1, and against gates that cannot answer: nothing
listening, too slow, failing with 5xx or garbage."""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
from datetime import datetime, UTC

import aiohttp
import pytest
from aiohttp import web

from plangate.client import GateClient, GateDecision, GateRequestError, GateUnavailable
from plangate.server.config import Config

from .conftest import ADMIN_TOKEN, ROOT, TOKEN, free_port

SAAS = ROOT / "examples" / "saas" / "plans.yaml"      # features by tier
AI = ROOT / "examples" / "ai-api" / "plans.yaml"        # tokens: 50,000 a day, then credits
BUDGET = 0.2        # for the gates that cannot answer
PATIENT = 10.0      # for the real gate: a slow test machine must not turn into a fail-open answer


@pytest.fixture
async def client(gate):
    async with GateClient(gate.url, TOKEN, admin_token=ADMIN_TOKEN, timeout=PATIENT) as c:
        yield c


@pytest.fixture
async def fake_gate(aiohttp_server):
    """fake_gate(handler) -> base URL of a tiny aiohttp server on 127.0.0.1 answering every path with it.
    `release` ends every waiting handler at teardown, so a slow handler never outlives its test."""
    release = asyncio.Event()

    async def start(handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = await aiohttp_server(app, host="127.0.0.1")
        return str(server.make_url("")).rstrip("/")

    start.release = release
    yield start
    release.set()


def slow_handler(release: asyncio.Event, bound: float = 5.0):
    async def handler(request):
        try:
            await asyncio.wait_for(release.wait(), bound)
        except TimeoutError:
            pass
        return web.json_response({"too": "late"})
    return handler


def fixed(status: int, body: bytes, content_type: str = "application/json"):
    async def handler(request):
        return web.Response(status=status, body=body, content_type=content_type)
    return handler


async def every_decision(client: GateClient, n: int = 0) -> list[GateDecision]:
    return [await client.check("u", "requests", 2),
            await client.consume("u", "requests", 2, idempotency_key=f"c-{n}"),
            await client.usage("u", "requests", 2, f"u-{n}")]


class TestDecisions:
    async def test_an_allowed_check_is_typed(self, client):
        d = await client.check("new-user", "requests")
        assert (d.allowed, d.reason, d.status, d.meter, d.amount) == (True, "ok", "limited_free_trial", "requests", 1)
        assert (d.limit, d.used, d.remaining, d.counted, d.duplicate, d.local) == (20, 0, 20, False, False, False)
        assert d.window_start.tzinfo is not None and d.window_start <= datetime.now(UTC) < d.resets_at
        assert d.retry_after is None and "limited_free_trial" in d.rule

    async def test_consume_counts_and_then_refuses(self, client):
        got = [await client.consume("u", "requests", 9) for _ in range(3)]
        assert [(d.allowed, d.counted, d.used) for d in got] == [(True, True, 9), (True, True, 18), (False, False, 18)]
        assert got[2].reason == "quota_exhausted" and got[2].retry_after > 0 and got[2].remaining == 2
        denied = await client.check("u", "requests", 3)
        assert (denied.allowed, denied.reason, denied.local) == (False, "quota_exhausted", False)

    async def test_an_idempotent_repeat_counts_once(self, client):
        first = await client.consume("u", "requests", 4, idempotency_key="job-1")
        again = await client.consume("u", "requests", 4, idempotency_key="job-1")
        assert (first.counted, first.duplicate, again.counted, again.duplicate) == (True, False, True, True)
        assert first.used == again.used == 4
        assert (await client.check("u", "requests")).used == 4

    async def test_usage_counts_work_that_ran_past_the_limit(self, client):
        d = await client.usage("u", "requests", 25, "ran-1")
        assert (d.counted, d.used, d.remaining, d.allowed, d.local) == (True, 25, 0, False, False)
        assert (await client.usage("u", "requests", 25, "ran-1")).duplicate is True

    async def test_a_denying_status(self, client):
        moved = await client.transition("u", action="close_account", reason="abuse report 12")
        assert (moved.moved, moved.from_status, moved.to_status) == (True, "limited_free_trial", "closed")
        d = await client.consume("u", "requests")
        assert (d.allowed, d.reason, d.counted) == (False, "status_denies", False)

    async def test_enforcement_off_gives_nulls(self, start_gate):
        gate = await start_gate(SUBSCRIPTION_ENABLED="false")
        async with GateClient(gate.url, TOKEN, timeout=PATIENT) as client:
            d = await client.check("u", "requests", 10_000)
        assert (d.allowed, d.reason, d.status, d.limit, d.window_start, d.local) == (True, "disabled", None, None,
                                                                                    None, False)


class TestEntitlements:
    async def test_a_feature_check_is_typed(self, start_gate):
        gate = await start_gate(plan=SAAS)
        async with GateClient(gate.url, TOKEN, timeout=PATIENT) as client:
            d = await client.feature("ws1", "sso")
            assert (d.allowed, d.reason, d.feature, d.meter, d.status, d.local) == (False, "not_entitled", "sso", None,
                                                                                 "free", False)
            with pytest.raises(GateRequestError) as refused:
                await client.feature("ws1", "teleport")
        assert (refused.value.status, refused.value.code) == (422, "unknown_feature")

    async def test_credits_spent_past_the_allowance_are_in_the_answer(self, start_gate):
        gate = await start_gate(plan=AI)
        async with GateClient(gate.url, TOKEN, timeout=PATIENT) as client:
            assert (await client.consume("a1", "tokens", 50_000)).counted
            refused = await client.consume("a1", "tokens", 600)
            assert (refused.allowed, refused.credits, refused.credits_used) == (False, 0, 0)
            status, _ = await gate.post("/v1/subjects/a1/credits", {"meter": "tokens", "amount": 1_000,
                                                                   "reason": "support ticket 42"})
            assert status == 200
            checked = await client.check("a1", "tokens", 600)
            assert (checked.allowed, checked.credits, checked.credits_used, checked.counted) == (True, 400, 600, False)
            spent = await client.consume("a1", "tokens", 600, idempotency_key="job-1")
            assert (spent.allowed, spent.counted, spent.credits_used, spent.credits, spent.overage) == \
                (True, True, 600, 400, 0)


class TestAdmin:
    async def test_view_of_a_subject_whose_name_needs_escaping(self, client):
        name = "team/a b?x=1#100%"
        view = await client.subject(name)
        assert (view.subject, view.known, view.status, view.transitions) == (name, False, "limited_free_trial", ())
        await client.consume(name, "requests", 3)
        await client.transition(name, to="paid_trial", reason="sales call")
        view = await client.subject(name)
        assert (view.known, view.status) == (True, "paid_trial") and isinstance(view.since, datetime)
        assert view.timer_due is not None and view.timer_due > view.since
        [usage] = view.usage
        assert (usage.meter, usage.used, usage.limit) == ("requests", 3, 500)   # the same day, a larger quota
        [record] = view.transitions
        assert (record.from_status, record.to_status, record.actor) == ("limited_free_trial", "paid_trial",
                                                                          "admin-api")

    @pytest.mark.parametrize("name", [".", ".."])
    async def test_a_subject_named_like_a_dot_segment(self, gate, name):
        """"." and ".." are subject ids the API takes, but a URL's dot segments are removed: the view went to
        GET /v1/ (404), the transition to /v1/transition (404), and a local check's snapshot of "." to
        GET /v1/subjects/snapshot, a view of another subject, whose answer raised KeyError out of check()."""
        async with GateClient(gate.url, TOKEN, admin_token=ADMIN_TOKEN, timeout=PATIENT) as client, \
                GateClient(gate.url, TOKEN, timeout=PATIENT, local=True, staleness=2.0) as here:
            assert await here.local.ready()
            await here.check(name, "requests")
            local = await here.check(name, "requests")
            assert (local.evaluated_here, local.subject, local.status) == (True, name, "limited_free_trial")
            moved = await client.transition(name, action="close_account", reason="test")
            assert (moved.subject, moved.to_status) == (name, "closed")
            assert (await client.subject(name)).status == "closed"

    async def test_an_action_that_does_not_apply_is_a_no_op(self, client):
        result = await client.transition("u", action="restart_free_trial", reason="why not")
        assert (result.moved, result.from_status, result.to_status) == (False, "limited_free_trial",
                                                                         "limited_free_trial")

    async def test_exactly_one_of_to_and_action(self, client):
        with pytest.raises(ValueError):
            await client.transition("u", reason="r")
        with pytest.raises(ValueError):
            await client.transition("u", to="paid", action="close_account", reason="r")


class TestBadRequestsRaise:
    @pytest.mark.parametrize("call, status, code", [
        (lambda c: c.check("u", "tokens"), 422, "unknown_meter"),
        (lambda c: c.check("u", "requests", 0), 400, "invalid_field"),
        (lambda c: c.consume("u", "requests", -2), 400, "invalid_field"),
        (lambda c: c.consume("", "requests"), 400, "invalid_field"),
        (lambda c: c.usage("u", "requests", 10**12, "k"), 400, "invalid_field"),
        (lambda c: c.subject("x" * 201), 400, "invalid_field"),
        (lambda c: c.transition("u", to="nowhere", reason="r"), 422, "unknown_status"),
        (lambda c: c.transition("u", action="launch", reason="r"), 422, "unknown_action"),
    ])
    async def test_refused_input(self, client, call, status, code):
        with pytest.raises(GateRequestError) as caught:
            await call(client)
        assert (caught.value.status, caught.value.code) == (status, code) and caught.value.message

    async def test_an_idempotency_key_reused_for_other_work(self, client):
        await client.consume("u", "requests", 1, idempotency_key="k")
        with pytest.raises(GateRequestError) as caught:
            await client.consume("u", "requests", 2, idempotency_key="k")
        assert (caught.value.status, caught.value.code) == (409, "idempotency_key_reused")

    async def test_a_wrong_token_raises_and_is_never_shown(self, gate):
        secret = "wrong-secret-token-0123456789"
        async with GateClient(gate.url, secret, timeout=PATIENT) as client:
            with pytest.raises(GateRequestError) as caught:
                await client.check("u", "requests")
        assert (caught.value.status, caught.value.code) == (401, "unauthorized")
        assert secret not in str(caught.value) and secret not in repr(caught.value)


@pytest.mark.parametrize("fail_open", [True, False])
class TestNoAnswer:
    def assert_local(self, decisions: list[GateDecision], fail_open: bool, why: str) -> None:
        for d in decisions:
            assert (d.allowed, d.reason, d.local, d.counted) == (fail_open, "fail_open" if fail_open else
                                                                 "fail_closed", True, False)
            assert (d.subject, d.meter, d.amount, d.status, d.limit) == ("u", "requests", 2, None, None)
            assert why in d.rule and TOKEN not in d.rule

    async def test_nothing_listening(self, fail_open):
        async with GateClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2.0, fail_open=fail_open) as c:
            self.assert_local(await every_decision(c), fail_open, "Connect")
            d = await c.feature("u", "sso")
            assert (d.allowed, d.local, d.feature, d.meter, d.amount) == (fail_open, True, "sso", None, 1)
            with pytest.raises(GateUnavailable) as caught:
                await c.subject("u")
        assert TOKEN not in str(caught.value) and caught.value.__cause__ is None

    async def test_too_slow(self, fake_gate, fail_open):
        url = await fake_gate(slow_handler(fake_gate.release))
        async with GateClient(url, TOKEN, timeout=BUDGET, fail_open=fail_open) as c:
            started = time.monotonic()
            decisions = await every_decision(c)
            elapsed = time.monotonic() - started
            self.assert_local(decisions, fail_open, f"no answer within {BUDGET}s")
            assert BUDGET * 3 <= elapsed < BUDGET * 3 + 2.0      # each call within its own budget
            with pytest.raises(GateUnavailable):
                await c.transition("u", to="paid", reason="r")

    @pytest.mark.parametrize("status, body, content_type", [
        (500, b"<html>Internal Server Error</html>", "text/html"),
        (502, b"Bad Gateway", "text/plain"),
        (503, b'{"error": "store_unavailable", "message": "retry"}', "application/json"),
        (200, b"<html>a captive portal</html>", "text/html"),
        (200, b'{"allowed": true}', "application/json"),
    ])
    async def test_an_answer_that_is_no_decision(self, fake_gate, fail_open, status, body, content_type):
        url = await fake_gate(fixed(status, body, content_type))
        async with GateClient(url, TOKEN, timeout=PATIENT, fail_open=fail_open) as c:
            self.assert_local(await every_decision(c), fail_open, "")


async def test_decisions_made_here_are_logged_once_then_the_gate_answering_again(gate, fake_gate, caplog):
    """A wrong address fails open: the first decision the client makes itself is a warning, those after it within
    the minute add none, and the gate's next answer says how many were made here."""
    caplog.set_level(logging.INFO, logger="plangate.client")
    async with GateClient(gate.url, TOKEN, timeout=PATIENT) as real:
        answer = await real._call("POST", "/v1/check", {"subject": "u", "meter": "requests", "amount": 2})
    up = asyncio.Event()

    async def handler(request):
        if not up.is_set():
            return web.Response(status=503, text="down for maintenance")
        return web.json_response(answer)

    url = await fake_gate(handler)
    async with GateClient(url, TOKEN, timeout=PATIENT) as c:
        assert all(d.local for d in await every_decision(c) + await every_decision(c, 1))
        warned = [r for r in caplog.records if r.name == "plangate.client"]
        assert [r.levelname for r in warned] == ["WARNING"]
        assert url in warned[0].getMessage() and "fail_open" in warned[0].getMessage()
        up.set()
        assert not (await c.check("u", "requests", 2)).local
        assert not (await c.check("u", "requests", 2)).local
        told = [r.getMessage() for r in caplog.records if r.name == "plangate.client"][1:]
        assert told == [f"the gate at {url} answers again, after 6 decision(s) made here"]
        up.clear()
        assert (await c.check("u", "requests", 2)).local       # silent again: a warning again
        assert [r.levelname for r in caplog.records if r.name == "plangate.client"][-1] == "WARNING"
    assert TOKEN not in caplog.text


class TestClientItself:
    def test_a_local_decision_is_a_gate_decision_like_any_other(self):
        """The local check's maker (no dataclass __init__, for speed) gives an equal, hashable, frozen value."""
        from dataclasses import FrozenInstanceError, astuple, fields

        from plangate.client import _local_decision

        values = ("u", True, "ok", "paid", "pro", "requests", 1, 20, 3, 17, datetime(2026, 12, 5, tzinfo=UTC),
                  datetime(2026, 12, 6, tzinfo=UTC), None, "plans.yaml:10", False, False, False, True, None, 5, 0, 2)
        assert len(values) == len(fields(GateDecision))
        made = _local_decision(*values)
        assert type(made) is GateDecision and made == GateDecision(*values) and astuple(made) == values
        assert hash(made) == hash(GateDecision(*values))
        with pytest.raises(FrozenInstanceError):
            made.allowed = False        # type: ignore[misc]

    async def test_the_token_is_not_in_the_repr(self, gate):
        client = GateClient(gate.url, TOKEN)
        assert TOKEN not in repr(client) and TOKEN not in str(client)
        assert repr(client) == f"GateClient({gate.url!r}, timeout=0.5, fail_open=True)"
        await client.close()

    def test_the_default_budget_outlasts_the_gates_own(self):
        """By default the client waits longer than the gate waits for its store: it hears the gate's fail-mode
        answer (which knows what was counted) rather than making one up at the same moment."""
        budget = inspect.signature(GateClient).parameters["timeout"].default
        assert budget >= 2 * Config.__dataclass_fields__["store_timeout"].default

    async def test_a_given_session_is_used_and_left_open(self, gate):
        async with aiohttp.ClientSession() as session:
            async with GateClient(gate.url, TOKEN, timeout=PATIENT, session=session) as client:
                assert (await client.check("u", "requests")).allowed
            assert not session.closed
            assert "Authorization" not in session.headers

    async def test_a_given_session_that_raises_for_status_still_gets_the_gates_refusals(self, gate):
        """aiohttp's raise_for_status=True (a common session setting) turned every 4xx into a ClientResponseError,
        which the client took for no answer: a wrong token or bad input answered fail_open, allowed, unseen."""
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            async with GateClient(gate.url, "not-the-token-0123456789", timeout=PATIENT, session=session) as wrong:
                with pytest.raises(GateRequestError) as refused:
                    await wrong.check("u", "requests")
                assert refused.value.status == 401
            async with GateClient(gate.url, TOKEN, timeout=PATIENT, session=session, local=True) as client:
                with pytest.raises(GateRequestError) as refused:
                    await client.check("u", "no-such-meter")
                assert (refused.value.status, refused.value.code) == (422, "unknown_meter")

    async def test_its_own_session_is_closed(self, gate):
        async with GateClient(gate.url, TOKEN, timeout=PATIENT) as client:
            session = client._session
            await client.check("u", "requests")
        assert session.closed

    async def test_transitions_go_with_the_admin_token_and_the_rest_with_the_api_token(self, gate):
        async with GateClient(gate.url, TOKEN, timeout=PATIENT) as client:
            with pytest.raises(GateRequestError) as caught:
                await client.transition("u", to="paid", reason="r")
            assert (caught.value.status, caught.value.code) == (403, "forbidden")
        async with GateClient(gate.url, "wrong-api-token-0123456789", admin_token=ADMIN_TOKEN,
                              timeout=PATIENT) as client:
            assert (await client.transition("u", to="paid", reason="r")).to_status == "paid"
            with pytest.raises(GateRequestError) as caught:
                await client.check("u", "requests")
            assert caught.value.status == 401

    @pytest.mark.parametrize("token", [TOKEN + " ", " " + TOKEN, TOKEN + "\t", "", "two words-0123456789"])
    def test_a_token_with_spaces_is_refused_at_once(self, token):
        for kwargs in ({"token": token}, {"token": TOKEN, "admin_token": token}):
            with pytest.raises(ValueError) as caught:
                GateClient("http://127.0.0.1:1", **kwargs)
            assert token.strip() not in str(caught.value) or not token.strip()

    def test_a_budget_must_be_positive(self):
        with pytest.raises(ValueError):
            GateClient("http://127.0.0.1:1", TOKEN, timeout=0)

    async def test_against_plangate_serve(self, gate_process):
        proc = gate_process()
        async with GateClient(proc.url, TOKEN, timeout=PATIENT) as client:
            assert (await client.consume("u", "requests", 5, idempotency_key="p-1")).used == 5
            assert (await client.subject("u")).usage[0].used == 5
