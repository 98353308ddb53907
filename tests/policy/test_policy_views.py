"""`plangate graph` and `plangate explain`: what they show, and their exit codes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from plangate.policy import check_text
from plangate.policy._views import dot, explain, mermaid
from plangate.cli import main

PLANS = Path(__file__).resolve().parent / "plans"

# A small plan with every feature a view must show: a tier, a timer, a condition, `from: any`,
# a fail mode override, a denying and a terminal status.
SMALL = """\
version: 1
meters:
  requests: {fail_mode: open}
  tokens: {}
tiers:
  pro:
    prices: [price_pro]
    quotas:
      requests: {limit: 5000, per: billing_period}
      tokens: unlimited
  team:
    prices: [price_team]
    quotas:
      requests: unlimited
      tokens: {limit: 100, per: month}
default_tier: pro
statuses:
  trial:
    initial: true
    expires_after: 7d
    quotas:
      requests: {limit: 20, per: day}
  paid:  # plangate: ignore[paying-without-exit]
    paying: true
    quotas:
      requests: tier
      tokens: tier
    fail_mode:
      requests: closed
  lapsed:
    access: deny
  closed:
    access: deny
    terminal: true
transitions:
  - from: trial
    on: stripe:customer.subscription.created
    when: {status: [active, trialing]}
    to: paid
  - from: trial
    on: timer
    to: lapsed
  - from: paid
    on: stripe:invoice.payment_failed
    to: lapsed
  - from: lapsed
    on: stripe:invoice.paid
    to: paid
  - from: any
    on: admin:close
    to: closed
"""


@pytest.fixture(scope="module")
def plan():
    checked = check_text(SMALL, "small.yaml")
    assert [f.code for f in checked.findings] == ["grace-skipped"]  # a warning does not stop the views
    return checked.plan


class TestMermaid:
    def test_is_a_state_diagram_with_initial_and_terminal_marked(self, plan):
        text = mermaid(plan)
        assert text.startswith("stateDiagram-v2\n")
        assert "    [*] --> trial" in text
        assert "    closed --> [*]" in text
        assert "lapsed --> [*]" not in text

    def test_arrows_carry_triggers_conditions_and_timers(self, plan):
        arrows = [line.strip() for line in mermaid(plan).splitlines() if "-->" in line and "[*]" not in line]
        assert arrows == [
            "trial --> paid : stripe:customer.subscription.created [status=active|trialing]",
            "trial --> lapsed : timer (7d)",
            "paid --> lapsed : stripe:invoice.payment_failed",
            "lapsed --> paid : stripe:invoice.paid",
            "trial --> closed : admin:close",
            "paid --> closed : admin:close",
            "lapsed --> closed : admin:close",
        ]

    def test_statuses_carry_quotas_timer_and_access(self, plan):
        text = mermaid(plan)
        assert "trial : requests 20 per day" in text
        assert "trial : timer 7d" in text
        assert "paid : requests tier quota" in text
        assert "lapsed : no access" in text

    def test_label_characters_mermaid_would_misread_are_escaped(self):
        plan = check_text(SMALL.replace("[active, trialing]", "'a;b#c'"), "s.yaml").plan
        assert "[status=a#59;b#35;c]" in mermaid(plan)


class TestDot:
    def test_is_a_digraph_with_every_status_and_arrow(self, plan):
        text = dot(plan)
        assert text.startswith("digraph plan {") and text.rstrip().endswith("}")
        for status in ("trial", "paid", "lapsed", "closed"):
            assert re.search(rf'^    "{status}" \[label="{status}(\\n[^"]*)?"', text, re.M), status
        assert '"__start" -> "trial";' in text
        assert '"trial" -> "lapsed" [label="timer (7d)"];' in text
        assert '"trial" -> "paid" [label="stripe:customer.subscription.created [status=active|trialing]"];' in text
        assert text.count("->") == 1 + 7

    def test_terminal_status_has_a_double_border(self, plan):
        (line,) = [line for line in dot(plan).splitlines() if line.startswith('    "closed" [')]
        assert "peripheries=2" in line

    def test_quotes_in_labels_are_escaped(self):
        plan = check_text(SMALL.replace("[active, trialing]", "'say \"hi\"'"), "s.yaml").plan
        assert r'[status=say \"hi\"]' in dot(plan)


class TestExplain:
    def test_every_status_in_order(self, plan):
        headings = [line for line in explain(plan).splitlines() if line and not line.startswith(" ")][2:]
        assert headings == ["trial (initial)", "paid (paying)", "lapsed", "closed (terminal)"]

    def test_tier_quota_is_resolved_for_each_tier(self, plan):
        text = explain(plan)
        assert "requests:  the subscribed tier's quota (pro: 5000 per billing period; team: unlimited)" in text
        assert "tokens:    the subscribed tier's quota (pro: unlimited; team: 100 per month)" in text
        assert "tiers: pro (default), team" in text

    def test_a_meter_without_quota_is_said_to_be_denied(self, plan):
        section = _section(explain(plan), "trial (initial)")
        assert "tokens:    no quota here, so none of it is allowed" in section

    def test_fail_mode_per_meter_with_overrides(self, plan):
        section = _section(explain(plan), "paid (paying)")
        assert "if the usage store cannot be read: closed (work stops), overriding the meter's open" in section
        assert section.count("if the usage store cannot be read: closed (work stops)") == 2

    def test_timer_and_what_it_leads_to(self, plan):
        assert "timer:     after 7d in this status, moves to lapsed" in _section(explain(plan), "trial (initial)")

    def test_outgoing_transitions_with_trigger_condition_and_target(self, plan):
        section = _section(explain(plan), "trial (initial)")
        moves = [re.sub(r"\s+", " ", line.strip()) for line in section.split("moves on:")[1].splitlines() if line]
        assert moves == [
            "on Stripe customer.subscription.created if status is active or trialing -> paid",
            "when the timer runs out (7d) -> lapsed",
            "on admin action close -> closed",
        ]

    def test_a_transition_for_ended_subscriptions_says_so(self):
        text = SMALL.replace("    on: stripe:invoice.paid\n    to: paid\n",
                             "    on: stripe:invoice.paid\n    subscription: ended\n    to: closed\n")
        section = _section(explain(check_text(text, "small.yaml").plan), "lapsed")
        assert ("on Stripe invoice.paid about one of its subscriptions that has ended (an invoice paid after the "
                "end) -> closed") in re.sub(r"\s+", " ", section)
        assert "stripe:invoice.paid (ended subscription)" in mermaid(check_text(text, "small.yaml").plan)

    def test_denying_and_terminal_statuses(self, plan):
        assert "access:    denied: no work at all" in _section(explain(plan), "lapsed")
        assert "moves on:  never (terminal)" in _section(explain(plan), "closed (terminal)")


def _section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n\n", 1)[0]


class TestCommands:
    @pytest.mark.parametrize("argv", [["graph"], ["graph", "--format", "dot"], ["explain"]], ids=" ".join)
    def test_shipped_plan_exits_0(self, capsys, in_repo, argv):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "limited_free_trial" in out and "grace_period" in out

    def test_graph_of_shipped_plan_shows_the_product(self, capsys, shipped_plan):
        main(["graph", str(shipped_plan)])
        out = capsys.readouterr().out
        assert "[*] --> limited_free_trial" in out
        assert "paid --> grace_period : stripe:invoice.payment_failed" in out
        assert "grace_period --> billing_problem : timer (3d)" in out
        assert "paid : requests tier quota" in out

    @pytest.mark.parametrize("command", ["graph", "explain"])
    def test_plan_with_errors_exits_1_with_findings_on_stderr(self, capsys, command):
        path = PLANS / "nondeterministic.yaml"
        assert main([command, str(path)]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert f"{path}:19:5: nondeterministic error:" in captured.err

    @pytest.mark.parametrize("command", ["graph", "explain"])
    def test_plan_with_warnings_only_is_shown(self, capsys, command):
        assert main([command, str(PLANS / "grace-skipped.yaml")]) == 0
        captured = capsys.readouterr()
        assert "blocked" in captured.out and "grace-skipped warning" in captured.err

    @pytest.mark.parametrize("command", ["graph", "explain"])
    def test_missing_file_exits_2_with_one_line(self, capsys, tmp_path, command):
        assert main([command, str(tmp_path / "nope.yaml")]) == 2
        err = capsys.readouterr().err
        assert err == f"plangate {command}: {tmp_path / 'nope.yaml'}: no such file\n"

    @pytest.mark.parametrize("command", ["graph", "explain"])
    def test_directory_exits_2(self, capsys, tmp_path, command):
        assert main([command, str(tmp_path)]) == 2

    def test_unknown_graph_format_is_bad_usage(self, capsys):
        with pytest.raises(SystemExit) as exc:
            main(["graph", "--format", "svg"])
        assert exc.value.code == 2
