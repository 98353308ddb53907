"""The gate's JSON log lines and its answers never carry a customer's email, name or address: a whole Stripe
lifecycle that carries them, events with them where numbers or ids belong, refusals, denials, retention and an
erasure, with every line the gate writes captured."""
from __future__ import annotations

import copy
import json
import time

import pytest

from . import stripe_events as se
from .personal_lifecycle import DAY, Lifecycle
from .personal_store import found, json_logs  # noqa: F401 - json_logs is a fixture

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def odd_events(life: Lifecycle) -> list[dict]:
    """Lifecycle events with the person where Stripe puts numbers, ids and statuses."""
    p = life.person
    events = {e["type"]: e for e in life.events()}
    out = []
    for type_, path, value in (("customer.subscription.updated", ("items", "data", 0, "current_period_end"), p.email),
                               ("customer.subscription.updated", ("status",), p.name),
                               ("customer.subscription.created", ("customer",), {"id": p.email, "email": p.email}),
                               ("invoice.paid", ("lines", "data", 0, "period"), p.line1),
                               ("invoice.payment_failed", ("parent", "subscription_details", "metadata"), p.city),
                               ("checkout.session.completed", ("client_reference_id",), "x" * 300 + p.email)):
        evt = copy.deepcopy(events[type_])
        evt["id"] = f"{evt['id']}_odd{len(out)}"
        here = evt["data"]["object"]
        for step in path[:-1]:
            here = here[step]
        here[path[-1]] = value
        out.append(evt)
    return out


async def test_no_log_line_or_answer_names_the_person(start_gate, json_logs):  # noqa: F811 - the fixture
    gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, PLANGATE_EVENT_PAYLOAD_RETENTION_DAYS="0")
    life = Lifecycle("user_logged", time.time() - 80 * DAY, 9)
    answers = []
    for evt in life.events() + odd_events(life):
        body = se.encode(evt)
        for sig in (se.sign(body), se.sign(body, "whsec_not_the_one_0123456789")):
            async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                         headers={"Stripe-Signature": sig}) as r:
                answers.append(await r.text())
    answers.append(json.dumps(await gate.post("/webhook/stripe", raw=b'{"id": "' + life.person.email.encode() + b'"}',
                                              headers={"Stripe-Signature": se.sign(b"x")})))
    for i in range(25):                 # past the free quota: denials are logged
        answers.append(json.dumps(await gate.consume("user_logged", 1, key=f"k{i}")))
    answers.append(json.dumps(await gate.post("/v1/jobs/cleanup")))
    answers.append(json.dumps(await gate.post("/v1/subjects/user_logged/erase", {"actor": "dpo"})))
    answers.append(json.dumps(await gate.get("/v1/subjects/user_logged")))
    lines = json_logs()
    events = {json.loads(line)["event"] for line in lines}
    assert {"transition", "denied", "erased"} <= events, events
    assert not found("\n".join(lines), life.person.needles())
    assert not found("\n".join(answers), life.person.needles())
