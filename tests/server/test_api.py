"""Every endpoint of a real gate on 127.0.0.1 over a real SQLite file, and every way to call it wrong."""
from __future__ import annotations

import asyncio
import json
import time
import sqlite3

import pytest

from plangate.server.http.api import GATE

from .conftest import ADMIN_TOKEN, TOKEN


def rows(database: str, sql: str, *args):
    with sqlite3.connect(database) as db:
        return db.execute(sql, args).fetchall()


class TestCheck:
    async def test_unknown_subject_gets_the_initial_status(self, gate):
        status, body = await gate.check("new-user")
        assert status == 200
        assert body["allowed"] is True and body["reason"] == "ok"
        assert body["status"] == "limited_free_trial"
        assert (body["limit"], body["used"], body["remaining"]) == (20, 0, 20)
        assert body["window_start"].endswith("T00:00:00Z") and body["resets_at"].endswith("T00:00:00Z")
        assert "statuses.limited_free_trial.quotas.requests" in body["rule"]

    async def test_check_writes_nothing(self, gate):
        await gate.check("reader")
        assert rows(gate.database, "SELECT * FROM subscriptions") == []
        assert rows(gate.database, "SELECT * FROM quota_usage") == []

    async def test_amount_over_what_is_left_is_denied_with_retry_after(self, gate):
        await gate.consume("u", 15)
        status, body = await gate.check("u", 6)
        assert status == 200
        assert body["allowed"] is False and body["reason"] == "quota_exhausted"
        assert body["remaining"] == 5 and body["retry_after"] > 0

    async def test_disabled_enforcement_allows_everything(self, start_gate):
        gate = await start_gate(SUBSCRIPTION_ENABLED="false")
        status, body = await gate.check("u", 10_000)
        assert (status, body["allowed"], body["reason"]) == (200, True, "disabled")

    async def test_kill_switch_denies_everything(self, start_gate):
        gate = await start_gate(SUBSCRIPTION_KILL_SWITCH="true")
        for path in ("/v1/check", "/v1/consume"):
            status, body = await gate.post(path, {"subject": "u", "meter": "requests", "amount": 1})
            assert (status, body["allowed"], body["reason"]) == (200, False, "kill_switch")
        assert rows(gate.database, "SELECT * FROM quota_usage") == []

    async def test_kill_switch_wins_while_enforcement_is_off(self, start_gate):
        gate = await start_gate(SUBSCRIPTION_KILL_SWITCH="true", SUBSCRIPTION_ENABLED="false")
        for path in ("/v1/check", "/v1/consume"):
            status, body = await gate.post(path, {"subject": "u", "meter": "requests", "amount": 1})
            assert (status, body["allowed"], body["reason"]) == (200, False, "kill_switch")
        assert rows(gate.database, "SELECT * FROM quota_usage") == []


class TestConsume:
    async def test_counts_and_refuses_instead_of_overshooting(self, gate):
        answers = [await gate.consume("u", 7) for _ in range(3)]
        assert [b["allowed"] for _, b in answers] == [True, True, False]
        assert [b["used"] for _, b in answers] == [7, 14, 14]
        assert answers[2][1]["counted"] is False and answers[2][1]["reason"] == "quota_exhausted"
        assert rows(gate.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(14,)]

    async def test_same_idempotency_key_counts_once(self, gate):
        first = await gate.consume("u", 3, key="job-1")
        again = await gate.consume("u", 3, key="job-1")
        assert first[1]["counted"] is True and first[1]["duplicate"] is False
        assert again[1]["counted"] is True and again[1]["duplicate"] is True
        assert again[1]["used"] == 3
        assert rows(gate.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(3,)]

    async def test_a_key_repeated_in_a_later_window_leaves_that_windows_usage_alone(self, gate):
        from plangate.server.http.api import GATE
        core = gate.app[GATE]
        day = time.time()
        core.clock = lambda: day
        await gate.consume("u", 1)                          # stored, cached
        assert (await gate.consume("u", 9, key="job-1"))[1]["used"] == 10
        core.clock = lambda: day + 86400                   # the next day: a new window, nothing used in it
        _, again = await gate.consume("u", 9, key="job-1")
        assert again["duplicate"] is True
        _, check = await gate.check("u", 15)
        assert (check["allowed"], check["used"]) == (True, 0), check
        assert rows(gate.database, "SELECT SUM(used) FROM quota_usage WHERE subject = 'u'") == [(10,)]

    async def test_key_reused_for_other_work_is_a_conflict(self, gate):
        await gate.consume("u", 3, key="job-1")
        status, body = await gate.consume("u", 4, key="job-1")
        assert status == 409 and body["error"] == "idempotency_key_reused"
        assert rows(gate.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(3,)]

    async def test_first_consume_stores_the_subject_in_its_initial_status(self, gate):
        await gate.consume("fresh", 1)
        assert rows(gate.database, "SELECT status, version FROM subscriptions WHERE subject = 'fresh'") == [
            ("limited_free_trial", 1)]

    async def test_denying_status_counts_nothing(self, gate):
        await gate.post("/v1/subjects/u/transition", {"action": "close_account", "reason": "fraud"})
        status, body = await gate.consume("u", 1)
        assert (status, body["allowed"], body["reason"], body["counted"]) == (200, False, "status_denies", False)
        assert rows(gate.database, "SELECT * FROM quota_usage") == []

    async def test_a_counted_key_replayed_after_the_status_denies_is_a_duplicate(self, gate):
        first = await gate.consume("u", 3, key="job-1")
        assert first[1]["counted"] is True
        await gate.post("/v1/subjects/u/transition", {"action": "close_account", "reason": "fraud"})
        status, again = await gate.consume("u", 3, key="job-1")
        assert status == 200 and (again["counted"], again["duplicate"]) == (True, True)
        assert again["used"] == 3
        assert (again["allowed"], again["reason"]) == (False, "status_denies")     # the operator's stop wins
        status, other = await gate.consume("u", 4, key="job-1")
        assert (status, other["error"]) == (409, "idempotency_key_reused")
        assert rows(gate.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(3,)]

    async def test_a_repeat_of_a_counted_consume_is_admitted_after_the_quota_fell(self, start_gate, each_database):
        """A consume counted (and billed), its answer lost, retried after the subject moved to a status with a
        lower limit: the repeat said `allowed: false` (quota_exhausted) with `counted: true`, and a caller that
        trusts `allowed` refused work it had paid for. It was admitted when it was counted."""
        gate = await start_gate(database=each_database)
        status, first = await gate.consume("u", 10, key="job-1")
        assert (status, first["allowed"], first["counted"]) == (200, True, True)
        status, _ = await gate.post("/v1/subjects/u/transition", {"to": "billing_problem", "reason": "test"})
        assert status == 200
        status, again = await gate.consume("u", 10, key="job-1")
        assert status == 200 and (again["counted"], again["duplicate"]) == (True, True)
        assert (again["allowed"], again["reason"], again["retry_after"]) == (True, "ok", None), again
        assert (again["status"], again["limit"], again["used"]) == ("billing_problem", 5, 10)   # today's figures
        status, fresh = await gate.consume("u", 1, key="job-2")
        assert (fresh["allowed"], fresh["counted"]) == (False, False)           # new work: today's quota

    async def test_a_repeat_of_a_consume_that_spent_credits_is_admitted_after_the_quota_fell(self, start_gate,
                                                                                          entitled_plan):
        """The same through credits: 25 with 20 left in the window, 5 of them from credits; the limit falls to 5."""
        gate = await start_gate(plan=entitled_plan)
        status, _ = await gate.post("/v1/subjects/u/credits", {"meter": "requests", "amount": 50, "reason": "test",
                                                               "idempotency_key": "grant-1"})
        assert status == 200
        status, first = await gate.consume("u", 25, key="job-1")
        assert (first["allowed"], first["counted"], first["credits_used"]) == (True, True, 5), first
        await gate.post("/v1/subjects/u/transition", {"to": "billing_problem", "reason": "test"})
        status, again = await gate.consume("u", 25, key="job-1")
        assert (again["duplicate"], again["allowed"], again["reason"]) == (True, True, "ok"), again

    async def test_a_refused_first_consume_stores_no_subject(self, gate):
        status, body = await gate.consume("fresh", 21, key="too-much")
        assert (status, body["allowed"], body["counted"]) == (200, False, False)
        assert rows(gate.database, "SELECT * FROM subscriptions") == []
        assert rows(gate.database, "SELECT * FROM usage_keys") == []
        assert (await gate.get("/v1/subjects/fresh"))[1]["known"] is False


class TestUsage:
    async def test_counts_work_that_ran_even_past_the_limit(self, gate):
        body = {"subject": "u", "meter": "requests", "amount": 25, "idempotency_key": "done-1"}
        status, answer = await gate.post("/v1/usage", body)
        assert status == 200 and answer["counted"] is True and answer["used"] == 25
        assert answer["remaining"] == 0 and answer["allowed"] is False
        status, again = await gate.post("/v1/usage", body)
        assert again["duplicate"] is True
        assert rows(gate.database, "SELECT used FROM quota_usage WHERE subject = 'u'") == [(25,)]

    async def test_a_check_without_a_meter_names_both_things_it_may_ask_for(self, gate):
        status, body = await gate.post("/v1/check", {"subject": "u"})
        assert (status, body["error"]) == (400, "missing_field") and "'feature'" in body["message"], body
        status, body = await gate.post("/v1/check", {"subject": ""})
        assert (status, body["error"]) == (400, "invalid_field"), body

    async def test_idempotency_key_is_required(self, gate):
        status, body = await gate.post("/v1/usage", {"subject": "u", "meter": "requests", "amount": 1})
        assert (status, body["error"]) == (400, "missing_field")


class TestSubjectsAndAdmin:
    async def test_view_of_an_unknown_subject(self, gate):
        status, body = await gate.get("/v1/subjects/nobody")
        assert status == 200 and body["known"] is False and body["status"] == "limited_free_trial"
        assert body["usage"][0]["meter"] == "requests" and body["transitions"] == []

    async def test_action_moves_and_is_audited(self, gate):
        await gate.consume("u", 2)
        status, body = await gate.post("/v1/subjects/u/transition",
                                       {"action": "close_account", "reason": "chargeback", "actor": "ops@x"})
        assert status == 200 and body["moved"] is True
        assert (body["from"], body["to"]) == ("limited_free_trial", "closed")
        status, view = await gate.get("/v1/subjects/u")
        assert view["status"] == "closed" and view["known"] is True
        audit = view["transitions"][0]
        assert (audit["from"], audit["to"], audit["trigger"], audit["actor"]) == (
            "limited_free_trial", "closed", "admin:close_account", "ops@x")
        assert "chargeback" in audit["reason"]
        status, check = await gate.check("u")
        assert check["allowed"] is False and check["reason"] == "status_denies"

    async def test_direct_override_to_a_status(self, gate):
        status, body = await gate.post("/v1/subjects/u/transition", {"to": "billing_problem", "reason": "support"})
        assert status == 200 and body["moved"] is True and body["to"] == "billing_problem"
        assert rows(gate.database, "SELECT from_status, to_status, trigger FROM transitions") == [
            ("limited_free_trial", "billing_problem", "admin:override")]

    async def test_action_that_does_not_apply_is_a_recorded_no_op(self, gate):
        status, body = await gate.post("/v1/subjects/u/transition",
                                       {"action": "restart_free_trial", "reason": "support"})
        assert status == 200 and body["moved"] is False and "no transition" in body["reason"]
        assert rows(gate.database, "SELECT * FROM transitions") == []

    @pytest.mark.parametrize("body, code, status", [
        ({"to": "nowhere", "reason": "x"}, "unknown_status", 422),
        ({"action": "launch_rockets", "reason": "x"}, "unknown_action", 422),
        ({"to": "paid", "action": "close_account", "reason": "x"}, "invalid_field", 400),
        ({"reason": "x"}, "invalid_field", 400),
        ({"to": "paid"}, "missing_field", 400),
        ({"to": "paid", "reason": ""}, "invalid_field", 400),
    ])
    async def test_bad_transitions_change_nothing(self, gate, body, code, status):
        got_status, got = await gate.post("/v1/subjects/u/transition", body)
        assert (got_status, got["error"]) == (status, code) and got["message"]
        assert rows(gate.database, "SELECT * FROM subscriptions") == []


class TestAuth:
    @pytest.mark.parametrize("token", [None, "", "wrong-token-0123456789", TOKEN + "x", TOKEN[:-1]])
    @pytest.mark.parametrize("method, path", [
        ("POST", "/v1/check"), ("POST", "/v1/consume"), ("POST", "/v1/usage"), ("GET", "/v1/subjects/u"),
        ("POST", "/v1/subjects/u/transition")])
    async def test_v1_needs_the_token(self, gate, token, method, path):
        status, body = await gate.call(method, path, {"subject": "u", "meter": "requests"}, token=token)
        assert status == 401 and body["error"] == "unauthorized"

    @pytest.mark.parametrize("value", [f"bearer {TOKEN}", f"BEARER {TOKEN}", f"bEaReR {TOKEN}",
                                       f"Bearer   {TOKEN}"])
    async def test_the_scheme_is_case_insensitive(self, gate, value):
        status, body = await gate.call(
            "POST", "/v1/check", {"subject": "u", "meter": "requests"}, token=None, headers={"Authorization": value})
        assert status == 200 and body["allowed"] is True

    @pytest.mark.parametrize("values", [[TOKEN, TOKEN], [TOKEN, "wrong-token-0123456789"],
                                        ["wrong-token-0123456789", TOKEN]])
    async def test_two_authorization_headers_are_refused(self, gate, values):
        headers = [("Authorization", f"Bearer {v}") for v in values]
        async with gate.session.post(gate.url + "/v1/check", json={"subject": "u", "meter": "requests"},
                                     headers=headers) as r:
            assert r.status == 401 and (await r.json())["error"] == "unauthorized"

    @pytest.mark.parametrize("value", [b"Bearer " + TOKEN.encode() + b"\xff", b"\xff\xfe", b"Bearer \xc3\xa9",
                                       b"Bearer " + TOKEN.encode() + b"\xc2\xa0", b"Bearer\xa0" + TOKEN.encode()])
    async def test_bytes_that_are_not_ascii_are_refused_not_a_500(self, gate, value, caplog):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(gate.url.rsplit(":", 1)[1]))
        body = b'{"subject": "u", "meter": "requests"}'
        writer.write(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value +
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b'"unauthorized"' in answer
        assert not [r for r in caplog.records if r.levelname == "ERROR"]

    async def test_a_token_with_whitespace_around_it_is_not_the_token(self, gate):
        for value in (f"Bearer {TOKEN}\u00a0", f"Bearer {TOKEN} x", f"Bearer {TOKEN},{TOKEN}"):
            status, body = await gate.call("POST", "/v1/check", {"subject": "u", "meter": "requests"}, token=None,
                                           headers={"Authorization": value})
            assert status == 401, value

    @pytest.mark.parametrize("path, body", [("/v1/subjects/u/transition", {"to": "paid", "reason": "r"}),
                                            ("/v1/subjects/u/erase", {"actor": "dpo"}), ("/v1/jobs/sweep", None),
                                            ("/v1/plan/reload", {"actor": "ops"}),
                                            ("/v1/plan/upgrade", {"subjects": ["u"], "reason": "r"})])
    async def test_the_api_token_cannot_change_state_on_a_persons_word(self, gate, path, body):
        status, answer = await gate.post(path, body, token=TOKEN)
        assert (status, answer["error"]) == (403, "forbidden") and "PLANGATE_ADMIN_TOKEN" in answer["message"]
        assert rows(gate.database, "SELECT * FROM subscriptions") == []
        assert (await gate.post(path, body, token=ADMIN_TOKEN))[0] == 200

    @pytest.mark.parametrize("path, body", [("/v1/subjects/u/credits", {"meter": "requests", "amount": 5,
                                                                         "reason": "r"}),
                                            ("/v1/subjects/u/traits", {"traits": {"members": 1000}})])
    async def test_the_api_token_cannot_raise_what_a_subject_may_do(self, gate, path, body):
        status, answer = await gate.post(path, body, token=TOKEN)
        assert (status, answer["error"]) == (403, "forbidden")
        assert rows(gate.database, "SELECT * FROM subscriptions") == []

    async def test_credits_on_a_plan_without_them_say_so(self, gate):
        status, answer = await gate.post("/v1/subjects/u/credits", {"meter": "requests", "amount": 5, "reason": "r"},
                                         token=ADMIN_TOKEN)
        assert (status, answer["error"]) == (422, "unknown_meter")
        assert answer["message"].endswith("the plan has no meter with credits"), answer

    async def test_the_admin_token_also_reads_and_decides(self, gate):
        assert (await gate.post(
            "/v1/check", {"subject": "u", "meter": "requests"}, token=ADMIN_TOKEN))[0] == 200
        assert (await gate.get("/v1/subjects/u", token=ADMIN_TOKEN))[0] == 200

    async def test_without_an_admin_token_the_admin_routes_refuse_everyone(self, start_gate):
        gate = await start_gate(PLANGATE_ADMIN_TOKEN="")
        status, answer = await gate.post("/v1/jobs/sweep", token=TOKEN)
        assert status == 403 and "set PLANGATE_ADMIN_TOKEN" in answer["message"]
        assert (await gate.post("/v1/jobs/sweep", token=ADMIN_TOKEN))[0] == 401

    async def test_several_tokens_of_a_scope_are_valid_at_once(self, start_gate):
        old, new, admin_old, admin_new = ("old-api-token-0123456789", "new-api-token-0123456789",
                                          "old-admin-token-0123456789", "new-admin-token-0123456789")
        gate = await start_gate(PLANGATE_API_TOKEN=f"{old}, {new}", PLANGATE_ADMIN_TOKEN=f"{admin_old},{admin_new}")
        for token in (old, new, admin_old, admin_new):
            assert (await gate.post("/v1/check", {"subject": "u", "meter": "requests"}, token=token))[0] == 200
        for token in (admin_old, admin_new):
            assert (await gate.post("/v1/jobs/sweep", token=token))[0] == 200
        for token in (old, new):
            assert (await gate.post("/v1/jobs/sweep", token=token))[0] == 403
        assert (await gate.post("/v1/check", {"subject": "u", "meter": "requests"}, token=TOKEN))[0] == 401

    @pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
    async def test_probes_are_open(self, gate, path):
        status, _ = await gate.get(path, token=None)
        assert status == 200


BAD_BODIES = [
    (b"not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"meter": "requests"}', 400, "missing_field"),
    (b'{"subject": 5, "meter": "requests"}', 400, "invalid_field"),
    (b'{"subject": "", "meter": "requests"}', 400, "invalid_field"),
    (b'{"subject": "a\\u0000b", "meter": "requests"}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 0}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": -3}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 1.5}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": "2"}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": true}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "requests", "amount": 100000000000}', 400, "invalid_field"),
    (b'{"subject": "u", "meter": "tokens", "amount": 1}', 422, "unknown_meter"),
    (b'{"subject": "u", "meter": "requests", "colour": "red"}', 400, "unknown_field"),
    # A field named twice: which one counts would be the parser's choice, so neither does.
    (b'{"subject":"u","meter":"requests","amount":1,"amount":1000}', 400, "duplicate_field"),
    (b'{"subject":"u","meter":"requests","amount":1000,"amount":1}', 400, "duplicate_field"),
    (b'{"subject": "u", "meter" : "requests", "meter":"requests"}', 400, "duplicate_field"),
    (b'{"subject": "a,b", "subject": "c", "meter": "requests"}', 400, "duplicate_field"),
]


class TestBadInput:
    @pytest.mark.parametrize("path", ["/v1/check", "/v1/consume"])
    @pytest.mark.parametrize("raw, status, code", BAD_BODIES)
    async def test_rejected_with_a_clear_error_and_nothing_written(self, gate, path, raw, status, code):
        got_status, body = await gate.post(path, raw=raw)
        assert (got_status, body["error"]) == (status, code)
        assert isinstance(body["message"], str) and body["message"]
        assert rows(gate.database, "SELECT * FROM subscriptions") == []
        assert rows(gate.database, "SELECT * FROM quota_usage") == []

    async def test_a_field_named_twice_is_named_in_the_answer(self, gate):
        status, body = await gate.post("/v1/consume", raw=b'{"subject": "u", "amount": 1, "meter": "requests", '
                                                          b'"amount": 1000}')
        assert (status, body["error"]) == (400, "duplicate_field") and "'amount'" in body["message"]
        assert rows(gate.database, "SELECT * FROM quota_usage") == []

    async def test_a_trait_named_twice_is_refused_and_nothing_written(self, gate):
        raw = b'{"traits": {"members": 1, "members": 40}, "reason": "r"}'
        status, body = await gate.post("/v1/subjects/u/traits", raw=raw, token=ADMIN_TOKEN)
        assert (status, body["error"]) == (400, "duplicate_field") and "'members'" in body["message"]
        assert rows(gate.database, "SELECT * FROM subscriptions") == []
        status, _ = await gate.post("/v1/subjects/u/traits", raw=raw.replace(b'"members": 1, ', b""),
                                    token=ADMIN_TOKEN)
        assert status == 200

    async def test_traits_past_what_a_subject_may_hold_are_refused_and_nothing_written(self, gate):
        """A request sets at most 32 names, and the others a subject holds stay: three requests of 32 new names
        each held 96."""
        first = {"traits": {f"t{i}": i for i in range(32)}, "reason": "r"}
        assert (await gate.post("/v1/subjects/u/traits", first, token=ADMIN_TOKEN))[0] == 200
        status, body = await gate.post("/v1/subjects/u/traits", {"traits": {"t31": 5, "extra": 1}},
                                       token=ADMIN_TOKEN)
        assert (status, body["error"]) == (422, "too_many_traits"), body
        assert "holds 32 traits" in body["message"] and "would hold 33" in body["message"]
        status, view = await gate.get("/v1/subjects/u")
        assert view["traits"] == {f"t{i}": i for i in range(32)}         # t31 not set either
        # those it holds can still be set
        status, body = await gate.post("/v1/subjects/u/traits", {"traits": {"t31": 5}}, token=ADMIN_TOKEN)
        assert status == 200 and body["traits"]["t31"] == 5 and len(body["traits"]) == 32

    async def test_a_subject_stored_with_more_traits_than_the_rule_allows_can_still_set_those_it_holds(self, gate):
        assert (await gate.post("/v1/subjects/v/traits", {"traits": {"a": 1}}, token=ADMIN_TOKEN))[0] == 200
        with sqlite3.connect(gate.database) as db:      # as a gate before the rule could leave it
            db.execute("UPDATE subscriptions SET traits = ? WHERE subject = 'v'",
                       (json.dumps([[f"t{i}", i] for i in range(40)]),))
        gate.app[GATE].invalidate("v")
        status, body = await gate.post("/v1/subjects/v/traits", {"traits": {"t3": 30}}, token=ADMIN_TOKEN)
        assert status == 200 and body["traits"]["t3"] == 30 and len(body["traits"]) == 40, body
        status, body = await gate.post("/v1/subjects/v/traits", {"traits": {"new": 1}}, token=ADMIN_TOKEN)
        assert (status, body["error"]) == (422, "too_many_traits")

    async def test_body_over_the_limit(self, gate):
        raw = b'{"subject": "' + b"a" * 20_000 + b'", "meter": "requests"}'
        status, body = await gate.post("/v1/consume", raw=raw)
        assert (status, body["error"]) == (413, "body_too_large")

    async def test_a_chunked_body_over_the_apis_limit_is_413_naming_it(self, start_gate):
        """No Content-Length: the body is read up to the API's limit and refused past it, the answer naming that
        limit (not the application's, the larger of the API's and the webhook's), whether the body came in whole
        or is still coming."""
        gate = await start_gate(PLANGATE_MAX_BODY_BYTES="1024", PLANGATE_WEBHOOK_MAX_BYTES="4096")

        async def chunks():
            yield b'{"subject": "'
            for _ in range(10):
                yield b"a" * 1000
            yield b'", "meter": "requests"}'

        status, body = await gate.post("/v1/consume", raw=chunks())
        assert (status, body["error"]) == (413, "body_too_large")
        assert body["message"] == "the body is larger than 1024 bytes"

        async def endless():
            yield b'{"subject": "'
            for _ in range(200):                # 10 s, 60 KB: refused at the limit, not read to its end
                await asyncio.sleep(0.05)
                yield b"a" * 300

        started = time.monotonic()
        status, body = await gate.post("/v1/consume", raw=endless())
        assert (status, body["error"], body["message"]) == (413, "body_too_large", "the body is larger than 1024 bytes")
        assert time.monotonic() - started < 2

        async def slow_but_small():
            yield b'{"subject": "u1", '
            await asyncio.sleep(0.02)
            yield b'"meter": "requests"}'

        status, body = await gate.post("/v1/consume", raw=slow_but_small())
        assert (status, body["counted"]) == (200, True)

    async def test_unknown_route_and_method(self, gate):
        assert (await gate.get("/v1/nothing-here"))[1]["error"] == "not_found"
        status, body = await gate.get("/v1/check")
        assert (status, body["error"]) == (405, "method_not_allowed")

    async def test_request_id_is_echoed(self, gate):
        async with gate.session.post(gate.url + "/v1/check", json={"subject": "u", "meter": "requests"},
                                     headers={"Authorization": f"Bearer {TOKEN}", "X-Request-Id": "abc-123"}) as r:
            assert r.headers["X-Request-Id"] == "abc-123"


class TestProbes:
    async def test_health_and_readiness(self, gate):
        assert (await gate.get("/healthz")) == (200, {"status": "alive"})
        status, body = await gate.get("/readyz")
        assert status == 200 and body["ready"] is True
        assert body["checks"]["store"]["ok"] is True and body["checks"]["plan"]["version"]

    async def test_metrics_count_decisions_denials_and_usage(self, gate):
        for _ in range(3):
            await gate.consume("u", 9)
        await gate.check("u")
        status, text = await gate.get("/metrics")
        assert status == 200
        assert 'plangate_decisions_total{endpoint="consume",reason="ok"} 2.0' in text
        assert 'plangate_denials_total{reason="quota_exhausted"} 1.0' in text
        assert 'plangate_usage_counted_total{meter="requests"} 18.0' in text
        assert "plangate_cache_hit_ratio" in text and "plangate_request_seconds_bucket" in text


class TestExpect:
    """An Expect header: 100-continue gets its interim answer, then the request is decided; any other expectation
    is bad input answered in JSON (aiohttp answered it with a text 417 no route documents)."""

    @staticmethod
    async def _raw(gate, head: str, body: bytes = b"", wait_for_continue: bool = False) -> tuple[bytes, bytes]:
        """(the interim answer, if one was awaited; the final answer) of a request written by hand."""
        host, port = gate.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head.encode() + b"\r\n")
            interim = b""
            if wait_for_continue:
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(body)
            await writer.drain()
            return interim, await asyncio.wait_for(reader.read(65536), 5)
        finally:
            writer.close()

    def _head(self, gate, expect: str, length: int) -> str:
        return (f"POST /v1/check HTTP/1.1\r\nHost: {gate.url.removeprefix('http://')}\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nExpect: {expect}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n")

    async def test_an_unknown_expectation_is_a_json_400(self, gate):
        body = b'{"subject": "alice", "meter": "requests"}'
        _, answer = await self._raw(gate, self._head(gate, '"t', len(body)), body)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 400"), answer
        assert b"application/json" in rest and b'"error":"invalid_header"' in rest, answer

    async def test_100_continue_is_answered_and_the_check_decided(self, gate):
        body = b'{"subject": "alice", "meter": "requests"}'
        interim, answer = await self._raw(gate, self._head(gate, "100-continue", len(body)), body,
                                          wait_for_continue=True)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        assert answer.startswith(b"HTTP/1.1 200") and b'"allowed":true' in answer, answer
