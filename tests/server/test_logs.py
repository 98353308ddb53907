"""Log lines as the gate writes them (one compact JSON object a line, with the request id) and their
redaction, read back through plangate.server.logs.capture_logs."""
from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime

import pytest

from plangate.engine import Reason
from plangate.server.logs import capture_logs, log, log_each, parse_lines
from tests.server import stripe_events as se
from tests.server.conftest import TOKEN


class TestLines:
    async def test_a_denial_is_one_line_with_the_request_id_and_the_rule(self, gate):
        with capture_logs("INFO") as logs:
            status, body = await gate.post("/v1/check", {"subject": "alice", "meter": "requests", "amount": 21},
                                           headers={"X-Request-Id": "req-denied-1"})
        assert (status, body["allowed"]) == (200, False)
        [denied] = logs.events("denied")
        assert denied["level"] == "info" and denied["request_id"] == "req-denied-1"
        assert (denied["subject"], denied["meter"], denied["reason"], denied["limit"]) == \
            ("alice", "requests", "quota_exhausted", 20)
        assert denied["rule"] == body["rule"]

    async def test_an_allowed_check_logs_nothing(self, gate):
        with capture_logs("INFO") as logs:
            assert (await gate.check("alice"))[1]["allowed"]
        assert logs.entries == []

    def test_lines_are_compact_json_objects_one_a_line(self):
        with capture_logs() as logs:
            log(logging.INFO, "first", n=1, share=0.5, nothing=None, flag=True)
            log_each(logging.INFO, "each", [{"k": 1}, {"k": 2}])
        lines = logs.text.splitlines()
        assert len(lines) == 3 and all(": " not in line and ", " not in line for line in lines)
        assert [(e["event"], e.get("k")) for e in logs.entries] == [("first", None), ("each", 1), ("each", 2)]
        first = logs.entries[0]
        assert (first["level"], first["n"], first["share"], first["nothing"], first["flag"]) == \
            ("info", 1, 0.5, None, True)
        assert isinstance(first["ts"], float)

    def test_values_json_has_no_type_for_are_written_as_text(self):
        at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        with capture_logs() as logs:
            log(logging.WARNING, "odd", when=at, reason=Reason.NO_QUOTA, nan=math.nan, name="Zoë", big=2**70)
        [entry] = logs.entries
        assert (entry["when"], entry["reason"], entry["name"], entry["big"]) == \
            (str(at), "no_quota", "Zoë", 2**70)
        assert entry["nan"] != entry["nan"]         # NaN stays NaN, as the standard library writes it
        assert logs.text.isascii()
        assert ": " not in logs.text and ", " not in logs.text      # compact, as every other line

    def test_a_line_logged_with_an_exception_names_the_exception(self):
        with capture_logs() as logs:
            try:
                raise ValueError("the disk is full")
            except ValueError:
                log(logging.ERROR, "internal_error", exc_info=True, path="/v1/consume")
        [entry] = logs.entries
        assert (entry["level"], entry["error"], entry["path"]) == \
            ("error", "ValueError: the disk is full", "/v1/consume")

    def test_levels_below_the_configured_one_are_not_written(self):
        with capture_logs("WARNING") as logs:
            log(logging.INFO, "chatty")
            log_each(logging.INFO, "chatty", [{"n": 1}])
            log(logging.WARNING, "kept")
        assert [e["event"] for e in logs.entries] == ["kept"]


class TestRedaction:
    @pytest.mark.parametrize("key", ["token", "api_token", "Authorization", "webhook_secret", "STRIPE_SECRET_KEY",
                                     "password", "stripe_signature"])
    def test_a_field_named_for_a_secret_is_redacted(self, key):
        with capture_logs() as logs:
            log(logging.WARNING, "settings", **{key: "s3cr3t-value", "subject": "alice"})
            log_each(logging.WARNING, "settings", [{key: "s3cr3t-value"}])
        assert [e[key] for e in logs.entries] == ["[redacted]", "[redacted]"]
        assert logs.entries[0]["subject"] == "alice"
        assert "s3cr3t-value" not in logs.text

    def test_a_line_with_an_exception_is_redacted_too(self):
        with capture_logs() as logs:
            try:
                raise RuntimeError("boom")
            except RuntimeError:
                log(logging.ERROR, "failed", exc_info=True, token="s3cr3t-value")
        assert logs.entries[0]["token"] == "[redacted]" and "s3cr3t-value" not in logs.text

    async def test_the_api_token_and_the_webhook_secret_never_reach_a_line(self, start_gate):
        """Requests that log (a denial, a refused token, refused and accepted webhooks): no line holds the
        token, a wrong token, the webhook secret or a signature."""
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)
        evt = se.event("checkout.session.completed", se.checkout("alice"), time.time())
        body = se.encode(evt)
        signature = se.sign(body)
        with capture_logs() as logs:
            await gate.post("/v1/check", {"subject": "alice", "meter": "requests", "amount": 21})
            status, answer = await gate.post("/webhook/stripe", raw=body, token=None,
                                             headers={"Stripe-Signature": signature})
            assert (status, answer["outcome"]) == (200, "applied")
            await gate.post("/v1/check", {"subject": "alice", "meter": "requests"}, token="wrong-token-value")
            await gate.post("/webhook/stripe", raw=body, token=None,
                            headers={"Stripe-Signature": "t=1,v1=" + "0" * 64})
        assert logs.events("denied") and logs.events("transition")
        for secret in (TOKEN, "wrong-token-value", se.SECRET, signature):
            assert secret not in logs.text


class TestParseLines:
    def test_an_error_line_written_by_the_gate_is_found(self):
        """What the soak test asserts on: the lines are compact, so a search for '"level": "error"' (with a
        space) finds nothing even where an error was logged; parsed, it is found."""
        with capture_logs() as logs:
            log(logging.ERROR, "internal_error", path="/v1/check")
        assert '"level": "error"' not in logs.text
        assert [e["event"] for e in parse_lines(logs.text) if e["level"] == "error"] == ["internal_error"]

    def test_a_line_that_is_no_json_object_is_named(self):
        text = json.dumps({"level": "info", "event": "started"}) + "\nTraceback (most recent call last):\n"
        with pytest.raises(ValueError, match="log line 2 is not a JSON object: 'Traceback"):
            parse_lines(text)
