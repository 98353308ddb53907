"""schemathesis drives every route of schema/openapi.json against a real `plangate serve` process.

Generated requests (valid for the schema) and malformed ones (negative mode: wrong types, missing fields, bad
headers, undeclared methods, no or wrong token) go to a real gate over HTTP on 127.0.0.1 with the API token given;
every answer must not be a 5xx and must match the spec (schemathesis' response checks: status documented, content
type, body schema, headers, 401 without the token, 405 with Allow, valid data accepted, invalid data refused).

The spec is narrowed to the shipped plan before it is fuzzed: a meter is one of the plan's meters, a status, a tier
and an admin action the plan's, and a webhook event's type one the gate uses (or one it ignores). The spec cannot know
these names (they come from plans.yaml, and the gate answers any other one 422 as documented); without the
narrowing, valid-looking requests would stop at that 422 and never reach counting, transitions or the Stripe fold.
Webhook bodies are signed with the gate's secret, so that generated events get past the signature into the fold.

Bounded: a few dozen examples per operation and phase; the whole module takes well under a minute.
"""
from __future__ import annotations

import copy
import json
import os
import time
import urllib.request

import tempfile
from pathlib import Path

import pytest
import schemathesis

import stripe
from hypothesis import HealthCheck, settings

from plangate.engine import compile_file
from plangate.server.stripe.objects import FACT_EVENTS
from tests.server import stripe_events as se
from tests.server.conftest import ADMIN_TOKEN, BASE_ENV, ENTITLED, PLAN, GateProcess
from tests.server.stripe_meters import KEY, FakeStripe, serving

from ._local import deliver, q

SPEC_PATH = PLAN.parent / "schema" / "openapi.json"
SECRET = "whsec_fuzz_0123456789abcdef"
MAX_EXAMPLES = int(os.environ.get("PLANGATE_FUZZ_EXAMPLES", "25"))
# The shipped plan with a feature and credits (tests/server/conftest.ENTITLED), so that feature checks and credit
# grants have names to reach.
FUZZ_PLAN = Path(tempfile.mkdtemp(prefix="plangate-fuzz-plan-")) / "plans.yaml"
FUZZ_PLAN.write_text(PLAN.read_text(encoding="utf-8") + ENTITLED, encoding="utf-8")
TABLE = compile_file(str(FUZZ_PLAN))
WEBHOOK = ("POST", "/webhook/stripe")
MAX_AMOUNT = 1_000_000


INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
# Stripe's API refuses a NUL in any string, so no event holds one (a signed body with one is a documented 400).
NO_NUL = {"pattern": "^[^\\u0000]*$"}
# Any JSON two levels deep whose integers are 64-bit ones (the generator's own integers may be 128-bit).
_LEAF = {"anyOf": [{"type": "string", **NO_NUL}, {"type": ["boolean", "null"]}, INT64,
                   {"type": "number", "minimum": -1e300, "maximum": 1e300}]}
_NESTED = {"anyOf": [_LEAF, {"type": "array", "items": _LEAF},
                     {"type": "object", "additionalProperties": _LEAF, "propertyNames": NO_NUL}]}
JSON64 = {"anyOf": [_LEAF, {"type": "array", "items": _NESTED},
                    {"type": "object", "additionalProperties": _NESTED, "propertyNames": NO_NUL}]}


def plan_spec() -> dict:
    """schema/openapi.json with the plan's names where the spec can only say 'a string'."""
    spec = copy.deepcopy(json.loads(SPEC_PATH.read_text(encoding="utf-8")))
    schemas = spec["components"]["schemas"]
    # Subjects: a few names, so that generated requests meet the same subjects again (counts, transitions); the
    # Subject schema's pattern says only part of the rule (NFC, printable), which a generated string may break.
    names = {"type": "string", "enum": ["alice", "bob", "carol d", "d\u00e9"]}
    for request in ("CheckRequest", "ConsumeRequest", "UsageRequest"):
        schemas[request]["properties"]["meter"] = {"type": "string", "enum": list(TABLE.meters)}
        schemas[request]["properties"]["subject"] = names
    schemas["CheckRequest"]["properties"]["feature"] = {"type": "string", "enum": list(TABLE.features.names)}
    schemas["CreditGrantRequest"]["properties"]["meter"] = {
        "type": "string", "enum": [m for m in TABLE.meters if TABLE.has_credits(m)]}
    # An expiry in the past is a documented 400: a grant expires in the future.
    schemas["CreditGrantRequest"]["properties"]["expires_at"] = {"type": "string", "enum": ["2099-01-01T00:00:00Z"]}
    transition = schemas["TransitionRequest"]["properties"]
    transition["to"] = {"type": "string", "enum": list(TABLE.statuses)}
    transition["action"] = {"type": "string", "enum": list(TABLE.actions)}
    schemas["UpgradeRequest"]["properties"]["tier"] = {"type": "string", "enum": [t.name for t in TABLE.plan.tiers]}
    schemas["SubjectList"]["items"] = names
    for place in (spec["paths"]["/v1/subjects/{subject}"], spec["paths"]["/v1/subjects/{subject}/transition"],
                  spec["paths"]["/v1/subjects/{subject}/credits"], spec["paths"]["/v1/subjects/{subject}/traits"],
                  spec["paths"]["/v1/subjects/{subject}/snapshot"]):
        place["parameters"][0]["schema"] = names
    # The gate's configured bound (PLANGATE_MAX_AMOUNT, default here); above it the answer is a documented 400.
    schemas["Amount"]["maximum"] = MAX_AMOUNT
    event = spec["paths"]["/webhook/stripe"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    event["properties"]["type"] = {"type": "string", "enum": sorted(FACT_EVENTS | {"customer.created", "ping"})}
    ids = {"type": ["string", "null"], "enum": ["cus_1", "sub_1", "cus_2", None]}
    event["properties"]["data"]["properties"]["object"] = {
        "type": "object",
        "properties": {
            "object": {"enum": ["subscription", "invoice", "checkout.session", "customer", "charge"]},
            "id": ids, "customer": ids, "subscription": ids, "client_reference_id": {"enum": ["alice", "bob", None]},
            "status": {"enum": ["active", "trialing", "past_due", "canceled", "paid", "open", "unpaid"]},
            # Stripe's metadata values are strings; any 64-bit JSON is taken too (the gate reads only its own key).
            "metadata": {"type": "object", "properties": {"plangate_subject": {"enum": ["alice", "bob", ""]}},
                         "additionalProperties": JSON64},
            "current_period_start": INT64, "current_period_end": INT64,
            "items": JSON64, "lines": JSON64, "parent": JSON64,
        },
        "additionalProperties": JSON64,
    }
    # The gate refuses a signed event holding an integer beyond 64 bits (400, documented): a valid one has none,
    # wherever it is (extra fields too).
    event["additionalProperties"] = JSON64
    event["properties"]["data"]["additionalProperties"] = JSON64
    for where in (event, event["properties"]["data"], event["properties"]["data"]["properties"]["object"],
                  event["properties"]["data"]["properties"]["object"]["properties"]["metadata"]):
        where["propertyNames"] = NO_NUL
    return spec


@pytest.fixture(scope="module")
def fuzz_gate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    # The plan sells credit packs, which need a key, and a generated event may name a payment the gate then looks
    # up: a Stripe-shaped API on 127.0.0.1 answers (it knows none of the generated ids: 404, as Stripe would).
    with serving(FakeStripe()) as stripe_api:
        yield from _gate(folder, stripe_api)


def _gate(folder: Path, stripe_api: str):
    gate = GateProcess({**BASE_ENV, "PLANGATE_DATABASE": str(folder / "fuzz.sqlite3"), "PLANGATE_PLANS": str(FUZZ_PLAN),
                        "STRIPE_WEBHOOK_SECRET": SECRET, "PLANGATE_LOG_LEVEL": "WARNING",
                        "PLANGATE_SWEEP_SCHEDULE": "0 0 1 1 *", "PLANGATE_RECONCILE_SCHEDULE": "0 0 1 1 *",
                        # GET /v1/stream ends within a second: a fuzzed call reads it to the end, never hangs
                        "PLANGATE_STREAM_MAX_SECONDS": "1",
                        "STRIPE_SECRET_KEY": KEY, "STRIPE_API_BASE": stripe_api},
                       folder)
    yield gate
    code, out, err = gate.stop()
    assert code == 0, err
    assert "internal_error" not in err, err


def config(mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "generation": {"mode": mode, "max-examples": MAX_EXAMPLES},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": False}},
        # A malformed body may also be too large (50 subjects of 200 characters, escaped): 413 refuses it too.
        "checks": {"enabled": True, "negative_data_rejection": {"expected-statuses": [
            "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]}},
        "request-timeout": 10,
    })


# Valid requests come from the spec narrowed to the plan (they reach counting, transitions, the fold); malformed
# ones from the spec as it is (a meter the plan lacks is a valid string there, answered 422 as documented).
valid = schemathesis.openapi.from_dict(plan_spec(), config=config("positive"))
# The probes, GET /v1/plan and GET /v1/statuses take no input at all: nothing to make malformed (the valid run
# sends them wrong methods too).
malformed = schemathesis.openapi.from_dict(json.loads(SPEC_PATH.read_text(encoding="utf-8")),
                                           config=config("negative")).exclude(tag="probes").exclude(
                                               operation_id=["getPlan", "statusCounts"])


def signed(case, positive: bool) -> dict:
    """A webhook case as the exact bytes Stripe would send, signed with the gate's secret. A malformed case
    whose signature header is missing or empty is left so: that header is what it is about."""
    if (case.method, case.path) != WEBHOOK or case.body is None:
        return {}
    signature = (case.headers or {}).get("Stripe-Signature")
    if not positive and not (isinstance(signature, str) and signature):
        return {}
    try:
        payload = case.body.decode() if isinstance(case.body, bytes) else json.dumps(case.body)
    except (UnicodeDecodeError, TypeError):
        return {}                      # not text: no signature can make it an event; sent as generated
    return {"data": payload.encode(), "headers": {"Stripe-Signature": stripe.WebhookSignature.generate_signature_header(
        payload, SECRET, int(time.time()))}}


def call(case, gate: GateProcess, positive: bool):
    for name in ("amount", "priority"):
        if positive and isinstance(case.body, dict) and isinstance(case.body.get(name), float):
            # JSON Schema calls 2.0 an integer; the gate refuses it as documented ("1.0 is refused").
            case.body[name] = int(case.body[name])
    if positive and isinstance(case.body, dict) and isinstance(case.body.get("traits"), dict):
        case.body["traits"] = {k: int(v) if isinstance(v, float) else v for k, v in case.body["traits"].items()}
    extra = signed(case, positive)
    headers = extra.pop("headers", None)
    response = case.call_and_validate(base_url=gate.url, headers=headers, **extra)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])


@valid.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_valid_requests_are_answered_as_documented(case, fuzz_gate):
    call(case, fuzz_gate, True)


@malformed.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_malformed_requests_are_refused_as_documented(case, fuzz_gate):
    call(case, fuzz_gate, False)


# --- what the fuzzing found, kept as plain tests -------------------------------------------------------

class TestFoundByFuzzing:
    def test_a_payment_event_naming_only_an_unknown_charge_waits_for_its_customer(self, fuzz_gate):
        """A charge event without a customer makes the gate ask Stripe for the charge; Stripe's 404 leaves the
        event pending (a 503 here meant the test's Stripe did not answer, which fuzzing once met as a 5xx)."""
        charge = {"id": "ch_fuzz_unknown", "object": "charge", "customer": None, "payment_intent": None,
                  "amount": 2000, "status": "succeeded"}
        body = json.dumps(se.event("charge.succeeded", charge, time.time())).encode()
        request = urllib.request.Request(fuzz_gate.url + "/webhook/stripe", data=body, method="POST", headers={
            "Content-Type": "application/json", "Stripe-Signature": se.sign(body, SECRET)})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert (r.status, json.loads(r.read())["outcome"]) == (200, "pending")

    async def test_405_names_the_allowed_methods(self, local_gate, tmp_path):
        gate = await local_gate(str(tmp_path / "gate.sqlite3"))
        for method, path, allowed in (("TRACE", "/v1/check", "POST"), ("DELETE", "/v1/subjects/u", "GET"),
                                      ("PUT", "/webhook/stripe", "POST")):
            async with gate.session.request(method, gate.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
                body = await r.json()
                assert (r.status, body["error"]) == (405, "method_not_allowed")
                assert allowed in r.headers["Allow"], r.headers

    @pytest.mark.parametrize("path, body", [
        ("/v1/consume", {"subject": "u", "meter": "requests", "idempotency_key": None}),
        ("/v1/subjects/u/transition", {"to": "paid", "reason": "r", "actor": None}),
        ("/v1/subjects/u/transition", {"to": None, "action": "close_account", "reason": "r"}),
    ])
    async def test_null_for_an_optional_text_field_is_refused(self, local_gate, tmp_path, path, body):
        gate = await local_gate(str(tmp_path / "gate.sqlite3"))
        status, answer = await gate.post(path, body)
        assert (status, answer["error"]) == (400, "invalid_field")
        assert (await gate.get("/v1/subjects/u"))[1]["known"] is False       # nothing counted, nothing moved

    async def test_an_event_waiting_for_its_subject_after_an_admin_change_is_adopted_not_a_500(
            self, local_gate, tmp_path):
        gate = await local_gate(str(tmp_path / "gate.sqlite3"))
        assert (await gate.post("/v1/subjects/alice/transition", {"to": "paid", "reason": "support"}))[0] == 200
        now = time.time()
        waiting = se.event("invoice.paid", se.invoice("paid", customer="cus_x", sub_id="sub_x"), now - 1000)
        linking = se.event("customer.subscription.updated",
                           se.subscription("active", "alice", customer="cus_x", sub_id="sub_x"), now - 500)
        assert (await deliver(gate.session, gate.url, waiting))[1]["outcome"] == "pending"
        status, answer = await deliver(gate.session, gate.url, linking)
        assert status == 200, answer
        rows = q(gate.database, "SELECT event_id, subject, outcome FROM subscription_events ORDER BY created")
        assert rows[0] == (waiting["id"], "alice", "stale")               # adopted, older than the admin's move
        assert rows[1][:2] == (linking["id"], "alice")
        assert (await gate.get("/v1/subjects/alice"))[1]["status"] == "paid"     # the person's decision stands

    @pytest.mark.parametrize("created", ["1.5", "NaN", "Infinity", "1e300", "-1", "99999999999999999999", "true"])
    async def test_created_must_be_whole_unix_seconds(self, local_gate, tmp_path, created):
        gate = await local_gate(str(tmp_path / "gate.sqlite3"))
        text = json.dumps(se.event("checkout.session.completed", se.checkout("u"), 0)).replace(
            '"created": 0', f'"created": {created}')
        async with gate.session.post(gate.url + "/webhook/stripe", data=text.encode(),
                                     headers={"Stripe-Signature": se.sign(text)}) as r:
            answer = await r.json()
        assert (r.status, answer["error"]) == (400, "invalid_event")
        assert q(gate.database, "SELECT COUNT(*) FROM subscription_events") == [(0,)]

    @pytest.mark.parametrize("start, end", [(0, 10**20), (-10**12, 5), (1.5, "1e300"), (10**12, 10**13)])
    async def test_a_billing_period_out_of_range_is_not_taken(self, local_gate, tmp_path, start, end):
        gate = await local_gate(str(tmp_path / "gate.sqlite3"))
        obj = se.subscription("active", "u", start=0, end=0)
        obj["items"]["data"][0].update(current_period_start=start, current_period_end=float(end))
        evt = se.event("customer.subscription.created", obj, time.time())
        status, answer = await deliver(gate.session, gate.url, evt)
        assert (status, answer["status"]) == (200, "paid")
        status, view = await gate.get("/v1/subjects/u")
        assert status == 200 and (view["period_start"], view["period_end"]) == (None, None)

    def test_the_spec_refuses_what_the_gate_refuses(self):
        spec = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
        op = spec["paths"]["/webhook/stripe"]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        from jsonschema import Draft202012Validator
        assert not Draft202012Validator(op["parameters"][0]["schema"]).is_valid("")
        event = {"id": "evt_1", "type": "t", "created": 1, "data": {"object": {}}}
        assert Draft202012Validator(body).is_valid(event)
        for bad in ({"id": ""}, {"id": "evt_\x00"}, {"created": 1.5}, {"created": -1}, {"created": 10**20}):
            assert not Draft202012Validator(body).is_valid({**event, **bad}), bad
