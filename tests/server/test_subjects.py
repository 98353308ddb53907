"""One rule for subject ids at every door: what the API refuses, a Stripe object cannot name either, and what
the API accepts, a Stripe object links."""
from __future__ import annotations

import json
import logging
import time
from urllib.parse import quote

import pytest

from . import stripe_events as se
from .conftest import ROOT
from .test_api import rows
from .test_webhook import deliver, q

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
REFUSED = ["ali\u200bce", "\u202eecila", "ali\u0085ce", "ali\u2028ce", "a\u00a0b", " alice", "alice ", "de\u0301",
           "\ufeffalice"]
ACCEPTED = ["alice", "d\u00e9", "team/a b?x=1#100%", "\u6f22\u5b57 \U0001F600"]


@pytest.fixture
async def hook(start_gate):
    return await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET)


class TestTheApi:
    @pytest.mark.parametrize("subject", REFUSED)
    @pytest.mark.parametrize("path", ["/v1/check", "/v1/consume", "/v1/usage"])
    async def test_refuses_what_is_no_subject_id_and_writes_nothing(self, gate, subject, path):
        status, body = await gate.post(path, {"subject": subject, "meter": "requests", "idempotency_key": "k"}
                                       if path == "/v1/usage" else {"subject": subject, "meter": "requests"})
        assert (status, body["error"]) == (400, "invalid_field") and "'subject'" in body["message"]
        assert rows(gate.database, "SELECT * FROM subscriptions") == []

    @pytest.mark.parametrize("subject", REFUSED)
    async def test_a_feature_check_refuses_it_too(self, start_gate, subject):
        gate = await start_gate(plan=ROOT / "examples" / "saas" / "plans.yaml")
        assert (await gate.post("/v1/check", {"subject": "alice", "feature": "sso"}))[0] == 200
        status, body = await gate.post("/v1/check", {"subject": subject, "feature": "sso"})
        assert (status, body["error"]) == (400, "invalid_field") and "'subject'" in body["message"]

    @pytest.mark.parametrize("subject", REFUSED)
    async def test_refuses_it_in_the_path_too(self, gate, subject):
        for method, path, body in (("GET", "", None), ("POST", "/transition", {"to": "paid", "reason": "r"})):
            status, answer = await gate.call(method, f"/v1/subjects/{quote(subject, safe='')}{path}", body)
            assert (status, answer["error"]) == (400, "invalid_field"), (method, path)
        assert rows(gate.database, "SELECT * FROM subscriptions") == []


class TestStripeLinking:
    @pytest.mark.parametrize("subject", ACCEPTED)
    async def test_links_every_id_the_api_accepts(self, hook, subject):
        assert (await hook.consume(subject, 2))[0] == 200
        status, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout(subject),
                                                      time.time()))
        assert (status, answer["outcome"], answer["status"]) == (200, "applied", "paid_trial")
        _, view = await hook.get(f"/v1/subjects/{quote(subject, safe='')}")
        assert (view["status"], view["usage"][0]["used"]) == ("paid_trial", 2)

    @pytest.mark.parametrize("subject", REFUSED)
    async def test_an_object_naming_an_id_the_api_refuses_links_no_one_and_says_why(self, hook, subject, caplog):
        caplog.set_level(logging.WARNING, logger="plangate")
        status, answer = await deliver(hook, se.event("checkout.session.completed", se.checkout(subject),
                                                      time.time()))
        assert (status, answer["outcome"]) == (200, "pending")
        assert q(hook.database, "SELECT * FROM subscriptions") == []
        refused = [r for r in caplog.records if r.getMessage() == "stripe_subject_refused"]
        assert refused and "the subject must" in json.dumps(refused[0].fields)
