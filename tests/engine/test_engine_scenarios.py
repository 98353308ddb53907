"""`plangate test`: the shipped scenarios pass, failures and broken files are reported like a test runner."""
from __future__ import annotations

import json

import re
import subprocess
import sys
from pathlib import Path

import pytest

from plangate.engine._playback import play
from plangate.engine._scenario import ScenarioError, implied_object, parse_scenario
from plangate.engine.cli import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, run_scenarios
from plangate.cli import main

FIXTURES = Path(__file__).resolve().parent / "scenarios"
HEADER = re.compile(r"# expect: exit (\d) line (\d+): (.*)")


def fixtures() -> list[Path]:
    return sorted(FIXTURES.glob("*.yaml"))


def expectation(path: Path) -> tuple[int, int, str]:
    code, line, text = HEADER.fullmatch(path.read_text(encoding="utf-8").splitlines()[0]).groups()
    return int(code), int(line), text


class TestShippedScenarios:
    def test_all_pass_in_process(self, in_repo, capsys):
        assert main(["test"]) == EXIT_PASSED
        out = capsys.readouterr().out.splitlines()
        count = len(list((in_repo / "scenarios").glob("*.yaml")))
        assert count >= 9
        assert out[-1] == f"{count} passed, 0 failed"
        assert all(line.startswith("PASS ") for line in out[:-1])

    def test_all_pass_as_a_real_process(self, repo):
        done = subprocess.run([sys.executable, "-m", "plangate.cli", "test"], cwd=repo, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == EXIT_PASSED, done.stdout + done.stderr
        assert done.stdout.rstrip().endswith(" passed, 0 failed")

    def test_every_shipped_scenario_explains_its_format_in_a_header(self, repo):
        for path in (repo / "scenarios").glob("*.yaml"):
            assert path.read_text(encoding="utf-8").startswith("# "), path.name


class TestFixtures:
    @pytest.mark.parametrize("path", fixtures(), ids=lambda p: p.stem)
    def test_each_fixture_gives_its_exit_code_and_located_message(self, repo, path, capsys):
        code, line, text = expectation(path)
        assert run_scenarios([str(repo / "plans.yaml"), str(path)]) == code
        out, err = capsys.readouterr()
        if code == EXIT_USAGE:
            assert re.search(rf"^{re.escape(str(path))}:{line}:\d+: .*{re.escape(text)}", err, re.M), err
            assert out.rstrip().endswith("0 passed, 0 failed, 1 file(s) could not run")
        else:
            assert out.startswith("FAIL ") and f"({path})" in out
            step = rf"^  step \d+ \(\w+\) at {re.escape(str(path))}:{line}: {re.escape(text)}$"
            assert re.search(step, out, re.M), out
            assert out.rstrip().endswith("0 passed, 1 failed")

    def test_the_failure_names_the_step_and_what_happened(self, repo, capsys):
        run_scenarios([str(repo / "plans.yaml"), str(FIXTURES / "expectation-fails.yaml")])
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].startswith("  step 2 (consume) at ")
        assert lines[2].strip().startswith("consume 6 requests counted: allowed, ok, 16/20 used")

    def test_every_wrong_expectation_of_the_failing_step_is_shown_at_once(self, repo, tmp_path, capsys):
        story = tmp_path / "several-wrong.yaml"
        story.write_text('name: several wrong at once\nstart: "2026-01-05T09:00:00Z"\nsubject: alice\nsteps:\n'
                         "  - consume: 6\n"
                         "    expect: {allowed: true, used: 5, remaining: 13, reason: ok, limit: 21}\n",
                         encoding="utf-8")
        run_scenarios([str(repo / "plans.yaml"), str(story)])
        lines = capsys.readouterr().out.splitlines()
        assert lines[1] == f"  step 1 (consume) at {story}:6: used: expected 5, got 6"
        assert lines[2:4] == [f"    also at {story}:6: remaining: expected 13, got 14",
                              f"    also at {story}:6: limit: expected 21, got 20"]
        assert lines[4].strip().startswith("consume 6 requests counted")

    def test_broken_files_do_not_stop_the_others(self, repo, capsys):
        args = [str(repo / "plans.yaml"), str(FIXTURES / "unknown-meter.yaml"), str(repo / "scenarios")]
        assert run_scenarios(args) == EXIT_USAGE
        out = capsys.readouterr().out
        assert "PASS " in out and "1 file(s) could not run" in out

    def test_a_failure_and_a_pass_exit_one(self, repo, capsys):
        args = [str(repo / "plans.yaml"), str(FIXTURES / "status-fails.yaml"),
                str(repo / "scenarios" / "free-daily-quota.yaml")]
        assert run_scenarios(args) == EXIT_FAILED
        assert capsys.readouterr().out.rstrip().endswith("1 passed, 1 failed")


class TestArguments:
    @pytest.mark.parametrize("text, problem", [
        ('name: x\nstart: "2026-01-01T00:00:00Z"\nsteps:\n\t- consume: 1\n', ":4:1: YAML syntax"),
        ("name: x\nstart: 2026-01-01T00:00:00Z\nsteps:\n  - consume: 1\n", ":2:8: the value is of type timestamp"),
    ])
    def test_a_story_alone_with_a_yaml_mistake_is_reported_as_the_story(self, repo, tmp_path, monkeypatch, capsys,
                                                                        text, problem):
        """`plangate test mystory.yaml` with a YAML mistake in the story: it was taken for the plan ("the plan
        has errors; fix them first (plangate lint ...)"), and lint then spoke of a plan's missing keys."""
        monkeypatch.chdir(repo)
        story = tmp_path / "mystory.yaml"
        story.write_text(text, encoding="utf-8")
        assert run_scenarios([str(story)]) == EXIT_USAGE
        out, err = capsys.readouterr()
        assert f"{story}{problem}" in err and "the plan" not in err
        assert out.rstrip().endswith("0 passed, 0 failed, 1 file(s) could not run")

    def test_a_missing_plan(self, tmp_path, capsys):
        assert run_scenarios([str(tmp_path / "plans.yaml"), str(FIXTURES)]) == EXIT_USAGE
        assert "no such file" in capsys.readouterr().err

    def test_a_missing_scenario(self, repo, tmp_path, capsys):
        assert run_scenarios([str(repo / "plans.yaml"), str(tmp_path / "nope.yaml")]) == EXIT_USAGE
        assert "nope.yaml: no such file or directory" in capsys.readouterr().err

    def test_a_lone_missing_file_is_not_called_the_plan(self, in_repo, capsys):
        assert run_scenarios(["scenarios/nope.yaml"]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("plangate test: scenarios/nope.yaml: no such file or directory") and "plan " not in err

    def test_a_directory_without_scenarios(self, repo, tmp_path, capsys):
        assert run_scenarios([str(repo / "plans.yaml"), str(tmp_path)]) == EXIT_USAGE
        assert "no scenario files" in capsys.readouterr().err

    def test_a_plan_with_errors_shows_its_findings(self, tmp_path, capsys):
        plan = tmp_path / "plans.yaml"
        plan.write_text("version: 1\nmeters: {requests: {}}\nstatuses: {free: {}}\ntransitions: []\n")
        assert run_scenarios([str(plan), str(FIXTURES / "expectation-fails.yaml")]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert "has errors" in err
        assert f"{plan}:3:1: no-initial error" in err and f"{plan}:3:12: no-way-out error" in err

    def test_without_arguments_the_shipped_plan_and_scenarios(self, in_repo, capsys):
        assert run_scenarios([]) == EXIT_PASSED

    def test_a_scenario_first_means_the_default_plan(self, in_repo, capsys):
        assert run_scenarios(["scenarios/free-daily-quota.yaml"]) == EXIT_PASSED
        assert capsys.readouterr().out.startswith("PASS free use")

    def test_a_directory_first_means_the_default_plan(self, in_repo, capsys):
        assert run_scenarios(["scenarios"]) == EXIT_PASSED

    def test_a_plan_alone_runs_the_scenarios_next_to_it(self, repo, tmp_path, capsys):
        (tmp_path / "plans.yaml").write_text((repo / "plans.yaml").read_text(encoding="utf-8"), encoding="utf-8")
        (tmp_path / "scenarios").mkdir()
        story = (repo / "scenarios" / "free-daily-quota.yaml").read_text(encoding="utf-8")
        (tmp_path / "scenarios" / "one.yaml").write_text(story, encoding="utf-8")
        assert run_scenarios([str(tmp_path / "plans.yaml")]) == EXIT_PASSED
        assert capsys.readouterr().out.rstrip().endswith("1 passed, 0 failed")

    def test_a_file_named_twice_runs_once(self, in_repo, capsys):
        assert run_scenarios(["plans.yaml", "scenarios/free-daily-quota.yaml", "scenarios"]) == EXIT_PASSED
        out = capsys.readouterr().out
        assert out.count("(scenarios/free-daily-quota.yaml)") == 1


TIMER_PLAN = """\
version: 1
meters:
  requests: {}
  tokens: {}
statuses:
  free:
    initial: true
    quotas: {requests: {limit: 10, per: day}, tokens: {limit: 1000, per: month}}
  trial:
    expires_after: 1d
    quotas: {requests: {limit: 100, per: day}, tokens: unlimited}
transitions:
  - from: free
    on: admin:try
    to: trial
  - from: trial
    on: timer
    to: trial
  - from: trial
    on: admin:end
    to: free
"""


def example(name: str) -> str:
    """The text of examples/<name>/plans.yaml."""
    return (Path(__file__).resolve().parents[2] / "examples" / name / "plans.yaml").read_text(encoding="utf-8")


def played(table, text: str):
    """The result of a story written here, played against the compiled plan."""
    return play(table, parse_scenario(text, "story.yaml", table))


class TestPlayback:
    @pytest.fixture
    def table(self, write_plan):
        return write_plan(TIMER_PLAN)

    def run(self, table, text: str):
        return played(table, text)

    def test_a_timer_that_moves_nothing_fires_once_and_stops(self, table):
        result = self.run(table, """\
name: a timer whose transition stays put
start: "2026-01-05T09:00:00Z"
meter: requests
steps:
  - admin: try
    expect: {status: trial, timer: 1d}
  - wait: 3d
    expect: {status: trial, moved: false, timer: false}
""")
        assert result.passed, result.failure

    def test_a_plan_with_several_meters_needs_one_named(self, table):
        with pytest.raises(ScenarioError) as caught:
            parse_scenario('name: x\nstart: "2026-01-05T09:00:00Z"\nsteps:\n  - consume: 1\n', "s.yaml", table)
        assert "s.yaml:4:5: step 1 needs a meter" in str(caught.value)

    def test_a_plan_given_where_a_scenario_goes_says_so(self, table):
        """`plangate test STORY PLAN` (the order slipped): eleven 'unknown key' findings, none saying why."""
        plan_text = (Path(__file__).resolve().parents[2] / "plans.yaml").read_text(encoding="utf-8")
        with pytest.raises(ScenarioError) as caught:
            parse_scenario(plan_text, "plans.yaml", table)
        assert "this is a plan, not a scenario: name the plan first" in str(caught.value)
        assert "unknown key" not in str(caught.value)

    def test_a_step_may_name_its_meter(self, table):
        result = self.run(table, """\
name: two meters
start: "2026-01-05T09:00:00Z"
meter: requests
steps:
  - consume: 500
    meter: tokens
    expect: {remaining: 500, resets_at: "2026-02-01T00:00:00Z"}
  - expect: {remaining: 10}
  - expect: {allowed: false, remaining: 500}
    meter: tokens
    amount: 501
""")
        assert result.passed, result.failure

    @pytest.mark.parametrize("event, obj", [
        ("customer.subscription.updated", "subscription"), ("invoice.paid", "invoice"),
        ("checkout.session.completed", "checkout.session"), ("charge.refunded", "charge"),
        ("customer.created", "customer"),
    ])
    def test_the_object_type_is_implied_by_the_event(self, event, obj):
        assert implied_object(event) == obj

    def test_an_event_about_someone_else_is_ignored(self, shipped):
        result = play(shipped, parse_scenario("""\
name: not my checkout
start: "2026-01-05T09:00:00Z"
subject: alice
steps:
  - stripe: checkout.session.completed
    object: {metadata: {plangate_subject: bob}}
    expect: {status: limited_free_trial, moved: false}
""", "s.yaml", shipped))
        assert result.passed, result.failure


class TestStripesObjectsAsStripeSendsThem:
    """A story writes what matters; what Stripe always sends and the story leaves out is filled in as Stripe has
    it, so that a story never proves what the gate would not do."""

    def test_a_paid_invoice_says_paid(self, shipped):
        """Grace never ends before the period paid through: a story's invoice.paid counted for that only when
        it wrote `status: paid` (which Stripe's always says), and its grace ended weeks early."""
        result = played(shipped, """\
name: a proration invoice fails mid-period; grace holds until the period paid for ends
start: "2026-02-01T10:00:00Z"
subject: dana
steps:
  - stripe: customer.subscription.created
    object: {id: sub_1, status: active, customer: cus_1, metadata: {plangate_subject: dana}}
    price: price_pro_monthly
    period: {start: "2026-02-01T10:00:00Z", end: "2026-03-01T10:00:00Z"}
  - stripe: invoice.paid
    object: {id: in_1, customer: cus_1, amount_paid: 1000, billing_reason: subscription_create,
             lines: {data: [{period: {start: "2026-02-01T10:00:00Z", end: "2026-03-01T10:00:00Z"}}]}}
  - until: "2026-02-10T10:00:00Z"
  - stripe: invoice.payment_failed
    object: {id: in_2, customer: cus_1, billing_reason: subscription_update}
  - stripe: customer.subscription.updated
    object: {id: sub_1, status: past_due, customer: cus_1}
    expect: {status: grace_period}
  - wait: 3d
    expect: {status: grace_period}
""")
        assert result.passed, result.failure

    def test_a_seat_subscription_may_have_no_seats(self, write_plan):
        """Stripe takes a quantity of 0 on a subscription item (a per-seat team with every seat given up): a story
        refused to say so, although the gate decides it (a limit of 0)."""
        table = write_plan(example("saas"))
        result = played(table, """\
name: every seat given up
start: "2027-02-10T09:00:00Z"
subject: ws_zero
meter: exports
steps:
  - stripe: customer.subscription.created
    object: {id: sub_zero, customer: cus_zero, status: active, metadata: {workspace: ws_zero}}
    price: price_team_seat_monthly
    quantity: 2
    expect: {tier: team, limit: 200}
  - stripe: customer.subscription.updated
    object: {id: sub_zero, customer: cus_zero, status: active}
    price: price_team_seat_monthly
    quantity: 0
    expect: {tier: team, limit: 0}
  - consume: 1
    expect: {allowed: false, reason: quota_exhausted}
""")
        assert result.passed, result.failure

    def test_a_tier_grant_ends_where_the_renewal_puts_its_window(self, write_plan):
        """A consume an hour past a 31-day period's end, before Stripe's renewal (the window guessed: 31 days
        more), then a 28-day renewal: in the next period, its grant and the carry-over. The story kept the guessed
        grant beside them (500000), as the gate did."""
        table = write_plan(example("ai-api"))
        result = played(table, """\
name: a shorter renewal ends the grant made on a guess
start: "2027-01-01T09:00:00Z"
subject: acct_r
meter: tokens
steps:
  - stripe: customer.subscription.created
    object: {id: sub_r, customer: cus_r, status: active, metadata: {account: acct_r}}
    price: price_starter_monthly
    period: {start: "2027-01-01T09:00:00Z", end: "2027-02-01T09:00:00Z"}
  - until: "2027-02-01T10:00:00Z"
  - consume: 1
  - stripe: customer.subscription.updated
    object: {id: sub_r, customer: cus_r, status: active}
    price: price_starter_monthly
    period: {start: "2027-02-01T09:00:00Z", end: "2027-03-01T09:00:00Z"}
  - until: "2027-03-01T09:30:00Z"
  - stripe: customer.subscription.updated
    object: {id: sub_r, customer: cus_r, status: active}
    price: price_starter_monthly
    period: {start: "2027-03-01T09:00:00Z", end: "2027-04-01T09:00:00Z"}
    expect: {credits: 300000}
""")
        assert result.passed, result.failure

    def test_a_new_subscription_says_when_it_was_made(self, write_plan):
        """Credits forfeited when a subscription ends stay so when the customer subscribes again: the story's new
        subscription had no `created`, read as made before the old one ended (a re-subscription during dunning),
        and the forfeited pack came back."""
        text = example("ai-api").replace(
            "on_cancel: keep",
            "on_cancel: forfeit")
        table = write_plan(text)
        result = played(table, """\
name: forfeited credits stay forfeited
start: "2027-03-01T09:00:00Z"
subject: acct_f
meter: tokens
steps:
  - stripe: customer.subscription.created
    object: {id: sub_f1, customer: cus_f, status: active, metadata: {account: acct_f}}
    price: price_scale_yearly
    period: {start: "2027-03-01T09:00:00Z", end: "2028-03-01T09:00:00Z"}
  - stripe: checkout.session.completed
    object: {id: cs_f, customer: cus_f, mode: payment, payment_status: paid,
             line_items: {data: [{price: {id: price_tokens_1m}, quantity: 1}]}}
    expect: {credits: 1000000}
  - wait: 1h
  - stripe: customer.subscription.deleted
    object: {id: sub_f1, customer: cus_f, status: canceled}
    expect: {status: lapsed, credits: 0}
  - wait: 1d
  - stripe: customer.subscription.created
    object: {id: sub_f2, customer: cus_f, status: active, metadata: {account: acct_f}}
    price: price_scale_yearly
    period: {start: "2027-03-02T10:00:00Z", end: "2028-03-02T10:00:00Z"}
    expect: {status: subscribed, credits: 0}
""")
        assert result.passed, result.failure


def test_a_subscription_billed_by_invoice_created_during_dunning_is_no_payment(shipped):
    """A customer in billing_problem subscribes again: created `active` is payment when the card was charged,
    but one billed by invoice (send_invoice) is active at once with its first invoice open; its invoice.paid
    says when it is paid."""
    result = played(shipped, """\
name: a subscription billed by invoice, created during dunning
start: "2026-06-01T08:00:00Z"
subject: finn
steps:
  - stripe: customer.subscription.created
    object: {id: sub_1, customer: cus_1, status: active, metadata: {plangate_subject: finn}}
    price: price_pro_monthly
    period: {start: "2026-06-01T08:00:00Z", end: "2026-07-01T08:00:00Z"}
    expect: {status: paid}
  - until: "2026-07-01T08:00:00Z"
  - stripe: invoice.payment_failed
    object: {customer: cus_1, billing_reason: subscription_cycle}
    expect: {status: grace_period}
  - wait: 3d
    expect: {status: billing_problem}
  - stripe: customer.subscription.created
    object: {id: sub_2, customer: cus_1, status: active, collection_method: send_invoice, days_until_due: 30,
             metadata: {plangate_subject: finn}}
    price: price_pro_monthly
    period: {start: "2026-07-04T08:00:00Z", end: "2026-08-04T08:00:00Z"}
    expect: {status: billing_problem, moved: false}
  - wait: 2d
  - stripe: invoice.paid
    object: {id: in_2, customer: cus_1, subscription: sub_2, amount_paid: 2000, billing_reason: subscription_create}
    expect: {status: paid, moved: true}
""")
    assert result.passed, result.failure


ORDER_PLAN = """\
version: 1
meters:
  requests: {}
stripe:
  subject:
    metadata_key: plangate_subject
statuses:
  free:
    initial: true
    quotas: {requests: {limit: 10, per: day}}
  checked_out:
    terminal: true
    quotas: {requests: {limit: 100, per: day}}
  active_first:
    terminal: true
    quotas: {requests: {limit: 200, per: day}}
transitions:
  - from: free
    on: stripe:checkout.session.completed
    to: checked_out
  - from: free
    on: stripe:customer.subscription.updated
    when: {status: active}
    to: active_first
"""


def test_whole_events_of_one_second_are_folded_in_the_gates_order(write_plan, tmp_path):
    """The gate folds a subject's events by `created`, and within a second in the order a subscription's life
    gives them (a checkout before its subscription's update), whichever came first; a story replayed them in
    delivery order, so a plan that depends on that order passed its story and behaved otherwise in the gate."""
    table = write_plan(ORDER_PLAN)
    at = 1_800_000_000
    sub = {"id": "sub_o", "object": "subscription", "customer": "cus_o", "status": "active",
           "metadata": {"plangate_subject": "olga"}}
    events = {
        "1.json": {"id": "evt_1", "type": "customer.subscription.updated", "created": at,
                   "data": {"object": sub, "previous_attributes": {"status": "incomplete"}}},
        "2.json": {"id": "evt_2", "type": "checkout.session.completed", "created": at,
                   "data": {"object": {"id": "cs_o", "object": "checkout.session", "mode": "subscription",
                                       "customer": "cus_o", "subscription": "sub_o",
                                       "metadata": {"plangate_subject": "olga"}}}},
    }
    for name, body in events.items():
        (tmp_path / name).write_text(json.dumps(body), encoding="utf-8")
    story = """\
name: a checkout delivered after its subscription's update of the same second
start: "2027-01-15T08:00:00Z"
subject: olga
steps:
  - event: 1.json
    expect: {status: active_first}
  - event: 2.json
    expect: {status: checked_out, moved: true}
"""
    result = play(table, parse_scenario(story, str(tmp_path / "story.yaml"), table))
    assert result.passed, result.failure


def test_a_stripe_steps_previous_attributes_must_be_a_mapping(shipped):
    with pytest.raises(ScenarioError) as caught:
        parse_scenario('name: x\nstart: "2026-01-05T09:00:00Z"\nsteps:\n  - stripe: customer.subscription.updated\n'
                       '    object: {status: active}\n    previous_attributes: past_due\n', "s.yaml", shipped)
    assert "s.yaml:6:26: previous_attributes: a mapping of the fields that changed" in str(caught.value)
