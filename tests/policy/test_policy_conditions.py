"""`when:` conditions: what each form means on Stripe's objects, how lint checks them against Stripe's fields, the
views' words for them, and `# plangate: ignore[code]`."""
from __future__ import annotations

import json

import pytest

from plangate.policy import check_text
from plangate.policy._conditions import compile_all

BASE = """\
version: 1
meters:
  requests: {{}}
statuses:
  free:
    initial: true
  granted:
    quotas:
      requests: {{limit: 5, per: day}}
transitions:
  - from: free
    on: stripe:{event}
    when: {when}
    to: granted
  - from: granted
    on: admin:reset
    to: free
"""


def plan(when: str, event: str = "invoice.paid"):
    checked = check_text(BASE.format(event=event, when=when), "p.yaml")
    assert checked.plan is not None, [str(f) for f in checked.findings]
    return checked


def holds(when: str, obj: dict, event: str = "invoice.paid") -> bool:
    (t, _) = plan(when, event).plan.transitions
    return compile_all(t.conditions)(obj)


class TestMeaning:
    @pytest.mark.parametrize("when, obj, expected", [
        ("{status: paid}", {"status": "paid"}, True),
        ("{status: paid}", {}, False),
        ("{status: [paid, open]}", {"status": "open"}, True),
        ("{amount_paid: {gt: 0}}", {"amount_paid": 1}, True),
        ("{amount_paid: {gt: 0}}", {"amount_paid": 0}, False),
        ("{amount_paid: {gt: 0}}", {"amount_paid": True}, False),          # true is no number
        ("{amount_paid: {gt: 0}}", {}, False),
        ("{amount_paid: {gte: 0, lt: 100}}", {"amount_paid": 0}, True),
        ("{amount_paid: {gte: 0, lt: 100}}", {"amount_paid": 100}, False),
        ("{amount_paid: {lte: 5}}", {"amount_paid": 5.0}, True),
        ("{billing_reason: {ne: subscription_create}}", {"billing_reason": "subscription_cycle"}, True),
        ("{billing_reason: {ne: subscription_create}}", {"billing_reason": "subscription_create"}, False),
        ("{billing_reason: {ne: subscription_create}}", {}, True),         # a negation holds when missing
        ("{status: {in: [paid, open]}}", {"status": "paid"}, True),
        ("{status: {not_in: [paid, open]}}", {"status": "void"}, True),
        ("{status: {not_in: [paid, open]}}", {"status": "open"}, False),
        ("{next_payment_attempt: {exists: true}}", {"next_payment_attempt": 1}, True),
        ("{next_payment_attempt: {exists: true}}", {"next_payment_attempt": None}, False),
        ("{next_payment_attempt: {exists: false}}", {}, True),
        ("{attempted: true}", {"attempted": 1}, False),                     # 1 is not true
        ("{parent.subscription_details.subscription: sub_1}",
         {"parent": {"subscription_details": {"subscription": "sub_1"}}}, True),
        ("{any: [{amount_paid: {gt: 0}}, {billing_reason: {ne: subscription_create}}]}",
         {"amount_paid": 0, "billing_reason": "subscription_create"}, False),
        ("{any: [{amount_paid: {gt: 0}}, {billing_reason: {ne: subscription_create}}]}",
         {"amount_paid": 0, "billing_reason": "subscription_cycle"}, True),
        ("{all: [{status: paid}, {amount_paid: {gt: 0}}]}", {"status": "paid", "amount_paid": 0}, False),
        ("{any: [{status: paid, amount_paid: 0}, {status: void}]}", {"status": "paid", "amount_paid": 1}, False),
    ])
    def test_on_an_invoice(self, when, obj, expected):
        assert holds(when, obj) is expected

    def test_a_path_into_a_list_holds_when_any_element_does(self):
        when = "{'items.data[].price.id': price_b}"  # in a flow mapping [ needs quotes
        sub = {"items": {"data": [{"price": {"id": "price_a"}}, {"price": {"id": "price_b"}}]}}
        assert holds(when, sub, "customer.subscription.updated")
        assert not holds(when, {"items": {"data": [{"price": {"id": "price_a"}}]}}, "customer.subscription.updated")
        assert not holds(when, {"items": {"data": "no list"}}, "customer.subscription.updated")
        assert holds("{'items.data[].price.id': {ne: price_b}}", {"items": {"data": []}},
                     "customer.subscription.updated")


class TestLintKnowsStripesFields:
    @pytest.mark.parametrize("when, says", [
        ("{amount_payed: {gt: 0}}", "has no field 'amount_payed'; did you mean amount_paid"),
        ("{subscription: sub_1}", "has no field 'subscription'"),       # moved under parent in API 2025-03-31
        ("{lines.data.amount: 5}", "lines.data is a list: write lines.data[]"),
        ("{'amount_paid[]': 5}", "amount_paid is a whole number, not a list"),
        ("{status.code: x}", "status is text (one of a fixed set): it has no field 'code'"),
    ])
    def test_a_path_that_cannot_exist(self, when, says):
        (finding,) = plan(when).findings
        assert finding.code == "unknown-field" and says in finding.message
        assert (finding.location.line, finding.location.column) == (13, 12)
        assert "stripe-python" in finding.message

    @pytest.mark.parametrize("when, says", [
        ("{status: payed}", "'payed' is not a value Stripe gives this field; it is one of draft, open, paid"),
        ("{amount_paid: '0'}", "the field holds whole numbers, never '0'"),
        ("{attempted: 'yes'}", "the field holds true or false"),
        ("{billing_reason: {gt: 0}}", "gt compares numbers"),
        ("{amount_paid: null}", "never null"),
        ("{lines: 5}", "the field is an object"),
    ])
    def test_a_value_of_the_wrong_type(self, when, says):
        (finding,) = plan(when).findings
        assert finding.code == "wrong-value-type" and says in finding.message, finding.message

    def test_metadata_takes_any_key_and_a_list_path_any_element(self):
        assert plan("{parent.subscription_details.metadata.plan: gold}").findings == ()
        assert plan("{'items.data[].price.id': price_x}", "customer.subscription.updated").findings == ()
        assert plan("{status: active}", "customer.subscription.updated").findings == ()

    def test_previous_attributes_are_checked_as_the_object_s_fields_on_updated_events_only(self):
        assert plan("{previous_attributes.status: past_due}", "customer.subscription.updated").findings == ()
        for when, event, code, says in [
                ("{previous_attributes.status: payed}", "customer.subscription.updated", "wrong-value-type",
                 "'payed' is not a value Stripe gives this field"),
                ("{previous_attributes.stauts: active}", "customer.subscription.updated", "unknown-field",
                 "did you mean status"),
                ("{previous_attributes: x}", "customer.subscription.updated", "unknown-field",
                 "name a field of previous_attributes"),
                ("{previous_attributes.status: open}", "invoice.paid", "unknown-field",
                 "only with *.updated events, never with invoice.paid")]:
            (finding,) = plan(when, event).findings
            assert (finding.code, finding.location.line) == (code, 13) and says in finding.message, finding.message

    def test_previous_attributes_are_read_from_the_event_not_its_object(self):
        from plangate.engine import StripeEvent
        (t, _) = plan("{status: active, previous_attributes.status: [past_due, unpaid]}",
                      "customer.subscription.updated").plan.transitions
        matches = compile_all(t.conditions)
        active = {"object": "subscription", "status": "active"}
        assert matches(StripeEvent("customer.subscription.updated", active, previous={"status": "past_due"}).matched())
        assert not matches(StripeEvent("customer.subscription.updated", active,
                                       previous={"metadata": {}}).matched())
        assert not matches(StripeEvent("customer.subscription.updated", active).matched())

    def test_an_event_stripe_names_no_object_for_is_not_checked(self):
        checked = check_text(BASE.format(event="customer.subscription.updated", when="{status: active}")
                             .replace("stripe:customer.subscription.updated", "stripe:ping"), "p.yaml")
        assert [f.code for f in checked.findings] == ["unknown-stripe-event"]

    def test_the_field_data_is_small_and_says_where_it_comes_from(self, repo):
        data = repo / "policy" / "data" / "stripe_objects.json"
        assert data.stat().st_size < 1024 * 1024
        catalogue = json.loads(data.read_text(encoding="utf-8"))
        assert catalogue["source"].startswith("stripe-python ")
        assert catalogue["events"]["charge.dispute.closed"] == "dispute"
        assert catalogue["links"]["dispute"] == {"charge": ["charge"], "payment_intent": ["payment_intent"]}
        assert catalogue["links"]["invoice"]["subscription"] == ["parent.subscription_details.subscription"]


class TestDeterminism:
    @pytest.mark.parametrize("a, b, exclusive", [
        ("{amount_paid: {gt: 0}}", "{amount_paid: {lte: 0}}", True),
        ("{amount_paid: {gt: 0}}", "{amount_paid: {gte: 0}}", False),
        ("{amount_paid: {lt: 10}}", "{amount_paid: {gte: 10}}", True),
        ("{status: paid}", "{status: {ne: paid}}", True),
        ("{status: [paid, open]}", "{status: {not_in: [paid]}}", False),
        ("{next_payment_attempt: {exists: true}}", "{next_payment_attempt: {exists: false}}", True),
        ("{any: [{status: paid}, {status: open}]}", "{status: void}", False),     # `any` is never taken apart
        ("{'lines.data[].amount': 5}", "{'lines.data[].amount': 6}", False),           # two lines may differ
    ])
    def test_exclusive_conditions(self, a, b, exclusive):
        text = BASE.format(event="invoice.paid", when=a) + f"""\
  - from: free
    on: stripe:invoice.paid
    when: {b}
    to: granted
"""
        codes = [f.code for f in check_text(text, "p.yaml").findings]
        assert ("nondeterministic" not in codes) is exclusive, codes


class TestIgnoreComments:
    TEXT = BASE.format(event="invoice.paid", when="{amount_payed: 1}")

    def test_a_comment_naming_the_code_silences_its_line(self):
        quiet = self.TEXT.replace("    when: {amount_payed: 1}",
                                  "    when: {amount_payed: 1}  # plangate: ignore[unknown-field]")
        assert check_text(quiet, "p.yaml").findings == ()

    def test_another_code_or_another_line_does_not(self):
        other = self.TEXT.replace("    when: {amount_payed: 1}",
                                  "    when: {amount_payed: 1}  # plangate: ignore[grace-skipped]")
        assert [f.code for f in check_text(other, "p.yaml").findings] == ["unknown-field"]
        above = self.TEXT.replace("    when: {amount_payed: 1}",
                                  "    # plangate: ignore[unknown-field]\n    when: {amount_payed: 1}")
        assert [f.code for f in check_text(above, "p.yaml").findings] == ["unknown-field"]

    def test_a_finding_the_table_cannot_run_with_is_never_silenced(self):
        text = self.TEXT.replace("    to: granted\n", "    to: nowhere  # plangate: ignore[unknown-status]\n", 1)
        assert "unknown-status" in [f.code for f in check_text(text, "p.yaml").findings]


class TestSchema:
    @pytest.mark.parametrize("when, code", [
        ("{amount_paid: {gt: '0'}}", "schema-type"),
        ("{amount_paid: {bigger: 0}}", "schema-oneof"),
        ("{'items..id': x}", "schema-pattern"),
        ("{any: []}", "schema-minitems"),
        ("{status: {}}", "schema-oneof"),
    ])
    def test_malformed_conditions_are_located(self, when, code):
        checked = check_text(BASE.format(event="invoice.paid", when=when), "p.yaml")
        assert checked.plan is None
        assert code in [f.code for f in checked.findings]
        assert all(f.location.line == 13 for f in checked.findings)


class TestViews:
    def test_explain_and_graph_say_the_new_conditions(self, capsys):
        from plangate.policy._views import explain, mermaid

        checked = plan("{any: [{amount_paid: {gt: 0}}, {billing_reason: {ne: subscription_create}}], "
                       "next_payment_attempt: {exists: false}}")
        words = explain(checked.plan)
        assert ("if (either amount_paid is more than 0 or billing_reason is not subscription_create) and "
                "next_payment_attempt is not set") in words
        assert "[any(amount_paid>0, billing_reason!=subscription_create), next_payment_attempt missing]" in \
            mermaid(checked.plan)


CANCELLING = """\
version: 1
meters:
  requests: {}
stripe:
  subject: {metadata_key: plangate_subject}
tiers:
  pro:
    prices: [price_pro]
    quotas: {requests: {limit: 100, per: billing_period}}
statuses:
  free:
    initial: true
    quotas: {requests: {limit: 10, per: day}}
  paid:
    paying: true
    quotas: {requests: tier}
  cancelling:
    paying: true
    expires_at: cancel_at + 1h
    quotas: {requests: tier}
  grace:
    grace: true
    expires_after: 3d
    quotas: {requests: tier}
  ended:
    access: deny
transitions:
  - from: [free, ended]
    on: stripe:customer.subscription.created
    when: {status: active}
    to: paid
  - from: paid
    on: stripe:customer.subscription.updated
    when: {cancel_at: {exists: true}, status: active}
    to: cancelling
  - from: cancelling
    on: stripe:customer.subscription.updated
    when: {cancel_at: {exists: false}, status: active}
    to: paid
  - from: cancelling
    on: timer
    to: ended
  - from: [paid, cancelling]
    on: stripe:invoice.payment_failed
    to: grace
  - from: grace
    on: stripe:invoice.paid
    to: paid
  - from: grace
    on: timer
    to: ended
  - from: [paid, cancelling]
    on: stripe:customer.subscription.updated
    when: {status: unpaid}
    to: grace
  - from: [paid, cancelling, grace]
    on: stripe:customer.subscription.paused
    to: ended
  - from: [paid, cancelling, grace]
    on: stripe:customer.subscription.deleted
    to: ended
"""


def test_a_timer_that_runs_out_at_cancel_at_skips_no_grace():
    """The customer chose that end (cancel at period end): no failed payment leads there, so grace-skipped does
    not fire; a timer of grace length leading to a denial still does."""
    assert [f.code for f in check_text(CANCELLING, "p.yaml").findings] == []
    graceless = CANCELLING.replace("expires_at: cancel_at + 1h", "expires_after: 3d")
    assert [(f.code, f.location.line) for f in check_text(graceless, "p.yaml").findings] == [("grace-skipped", 40)]


class TestSubscriptionScopes:
    """`subscription:` followed, other and ended are apart (an event is of exactly one); any overlaps each."""

    @staticmethod
    def text(first: str, second: str, event: str = "invoice.paid") -> str:
        return BASE.format(event=event, when="{amount_paid: {gt: 0}}").replace(
            "    to: granted\n", f"    subscription: {first}\n    to: granted\n", 1) + f"""\
  - from: free
    on: stripe:{event}
    when: {{amount_paid: {{gt: 0}}}}
    subscription: {second}
    to: granted
"""

    @pytest.mark.parametrize("first, second, exclusive", [
        ("followed", "ended", True), ("other", "ended", True), ("followed", "other", True),
        ("ended", "ended", False), ("any", "ended", False), ("followed", "followed", False),
    ])
    def test_which_pairs_can_both_match(self, first, second, exclusive):
        codes = [f.code for f in check_text(self.text(first, second), "p.yaml").findings]
        assert ("nondeterministic" not in codes) is exclusive, codes

    def test_ended_fits_an_invoice_and_never_an_event_about_no_subscription(self):
        assert check_text(self.text("followed", "ended"), "p.yaml").findings == ()
        refund = self.text("followed", "ended").replace("stripe:invoice.paid", "stripe:charge.refunded")
        refund = refund.replace("    when: {amount_paid: {gt: 0}}\n", "")
        (finding,) = [f for f in check_text(refund, "p.yaml").findings if f.code == "subscription-scope-unused"]
        assert "`subscription: ended` never matches" in finding.message
