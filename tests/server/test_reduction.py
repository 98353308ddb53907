"""The reduction of a stored Stripe payload: it keeps what the gate's readers and the plan look at, nothing of the
person, and the fold of reduced events is step for step the fold of the events as Stripe sent them."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from plangate.engine import StripeEvent, compile_file, replay
from plangate.server.stripe.reduction import Reducer

from .conftest import PLAN
from .personal_lifecycle import DAY, Lifecycle


def as_event(payload: str) -> StripeEvent:
    body = json.loads(payload)
    return StripeEvent(body["type"], body["data"]["object"], body["id"], float(body["created"]))


def plan_reading_more(folder: Path) -> Path:
    """The shipped plan, with a trial that starts only for a campaign's sign-ups (a path no reader of the gate
    knows: the plan alone makes it a fact)."""
    path = folder / "plans.yaml"
    text = PLAN.read_text()
    started = "on: stripe:customer.subscription.created\n    when: {status: trialing}\n"
    assert text.count(started) == 1
    path.write_text(text.replace(started, started.replace("trialing}", "trialing, metadata.campaign: spring}")))
    return path


@pytest.fixture(params=["shipped", "reading-more"])
def table(request, tmp_path):
    return compile_file(PLAN if request.param == "shipped" else plan_reading_more(tmp_path))


def lifecycle_payloads(campaign: str | None = None) -> tuple[Lifecycle, list[str]]:
    life = Lifecycle("user_r", time.time() - 80 * DAY, 7)
    out = []
    for evt in life.events():
        obj = evt["data"]["object"]
        if campaign and isinstance(obj.get("metadata"), dict):
            obj["metadata"].update(campaign=campaign, support_note=f"{life.person.name} prefers phone")
        out.append(json.dumps(evt))
    return life, out


class TestReduction:
    @pytest.mark.parametrize("campaign", [None, "spring", "autumn"])
    def test_the_fold_of_reduced_events_is_the_fold_of_the_events_sent(self, table, campaign):
        life, payloads = lifecycle_payloads(campaign)
        reducer = Reducer(table)
        reduced = [reducer.reduce(p) for p in payloads]
        assert None not in reduced
        base = table.initial_state(life.subject, life.t0)
        sent, steps_sent = replay(table, base, [as_event(p) for p in payloads])
        kept, steps_kept = replay(table, base, [as_event(p) for p in reduced])
        assert kept == sent
        assert [(s.event.id, s.before, s.outcome) for s in steps_kept] == \
            [(s.event.id, s.before, s.outcome) for s in steps_sent]

    def test_nothing_of_the_person_is_kept(self, table):
        life, payloads = lifecycle_payloads("spring")
        reducer = Reducer(table)
        for payload in payloads:
            reduced = reducer.reduce(payload)
            assert not [n for n in life.person.needles() + ["prefers phone"] if n in reduced], reduced

    def test_the_fields_the_plan_reads_are_kept_and_no_others(self, tmp_path):
        table = compile_file(plan_reading_more(tmp_path))
        _, payloads = lifecycle_payloads("spring")
        created = next(p for p in payloads if '"customer.subscription.created"' in p)
        obj = json.loads(Reducer(table).reduce(created))["data"]["object"]
        assert obj["metadata"] == {"plangate_subject": "user_r", "campaign": "spring"}
        assert obj["items"]["data"][0]["price"]["id"] == "price_pro_monthly"
        assert "nickname" not in obj["items"]["data"][0]["price"]
        shipped = json.loads(Reducer(compile_file(PLAN)).reduce(created))["data"]["object"]
        assert shipped["metadata"] == {"plangate_subject": "user_r"}      # the shipped plan never reads it

    def test_an_expanded_customer_keeps_its_id_alone(self):
        _, payloads = lifecycle_payloads()
        body = json.loads(next(p for p in payloads if '"customer.subscription.updated"' in p))
        customer = Lifecycle("user_r", 0, 7).customer_obj()
        body["data"]["object"]["customer"] = customer
        obj = json.loads(Reducer(compile_file(PLAN)).reduce(json.dumps(body)))["data"]["object"]
        assert obj["customer"] == {"id": customer["id"]}

    def test_a_reduction_is_stable(self):
        reducer = Reducer(compile_file(PLAN))
        for payload in lifecycle_payloads("spring")[1]:
            once = reducer.reduce(payload)
            assert reducer.reduce(once) == once

    @pytest.mark.parametrize("payload", ["not json", "[]", '{"id": "evt_1"}', '{"id": "e", "type": "t", '
                                         '"created": "soon", "data": {"object": {}}}'])
    def test_what_is_no_stored_event_is_left_alone(self, payload):
        assert Reducer(compile_file(PLAN)).reduce(payload) is None
