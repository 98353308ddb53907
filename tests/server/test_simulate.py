"""`plangate stripe-simulate` against a real `plangate serve`: it plays the lifecycle corpus, every lifecycle passes
and leaves the gate where its story ends; as a process too; an unreachable gate, a wrong secret and usage errors."""
from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from plangate.cli import main as plangate_main

from . import stripe_events as se
from plangate.lifecycles import corpus

from .conftest import ADMIN_TOKEN, BASE_ENV, ROOT, TOKEN, GateProcess, free_port

PLANGATE = str(Path(sys.executable).with_name("plangate"))
CORPUS = ROOT / "scenarios" / "lifecycles"
LIVES = {life.name: life for life in corpus(CORPUS)}
# The gates' own sweep once a year: a lifecycle's events lie in the past, so a scheduled sweep while they are sent
# fires their timers early (the simulator plays such a lifecycle again; the two tests below show it).
QUIET = {"PLANGATE_SWEEP_SCHEDULE": "0 0 1 1 *"}


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """One real gate for the module: every run uses fresh subjects, customers and subscriptions."""
    where = tmp_path_factory.mktemp("simulate")
    proc = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(where / "gate.sqlite3"),
                        "STRIPE_WEBHOOK_SECRET": se.SECRET}, where)
    proc.database = str(where / "gate.sqlite3")
    yield proc
    proc.stop()


def simulate_(gate, *args: str, secret: str = se.SECRET, token: str = TOKEN, admin_token: str = ADMIN_TOKEN) -> int:
    return plangate_main(["stripe-simulate", "--url", gate.url, "--secret", secret, "--token", token,
                          "--admin-token", admin_token, "--corpus", str(CORPUS), *args])


def view(gate, subject: str) -> dict:
    request = urllib.request.Request(f"{gate.url}/v1/subjects/{subject}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as resp:
        return json.loads(resp.read())


def outcomes(gate, subject: str) -> list[str]:
    with sqlite3.connect(gate.database) as db:
        return [r[0] for r in db.execute("SELECT outcome FROM subscription_events WHERE subject = ? "
                                          "ORDER BY created", (subject,))]


def test_every_lifecycle_passes_and_the_gate_holds_where_its_story_ends(gate, capsys):
    assert simulate_(gate, "--subject", "everything", *LIVES) == 0
    out = capsys.readouterr().out
    for name, life in LIVES.items():
        assert f"PASS {name}" in out
        state = view(gate, f"everything-{name}")
        assert state["known"] and {k: state[k] for k in life.ends} == life.ends, (name, state)
        assert state["stripe_customer"].startswith(f"cus_{life.tag}")
    assert f"{len(LIVES)} of {len(LIVES)} lifecycle(s) passed" in out and "FAIL" not in out and "!!" not in out
    moves = [(t["from"], t["to"], t["actor"])
             for t in view(gate, "everything-retries-exhausted-canceled")["transitions"]]
    assert ("grace_period", "billing_problem", "timer") in moves and ("billing_problem", "canceled", "stripe") in moves
    assert view(gate, "everything-cancel-at-period-end")["usage"][0]["allowed"] is False
    assert "applied" in outcomes(gate, "everything-trial-converts")
    for line in ("gate:  applied  status=paid_trial", "check: denied  reason=status_denies"):
        assert line in out


def test_a_second_run_of_a_lifecycle_gets_fresh_ids_and_passes_again(gate, capsys):
    assert simulate_(gate, "--subject", "twice", "trial-converts") == 0
    assert simulate_(gate, "--subject", "twice-again", "trial-converts") == 0
    assert view(gate, "twice")["stripe_customer"] != view(gate, "twice-again")["stripe_customer"]
    assert "duplicate" not in capsys.readouterr().out


def test_an_event_the_gate_did_not_apply_says_why(gate, capsys):
    """An admin's move before the lifecycle makes its events stale: the run failed with "expected paid_trial, got
    grace_period" and no word of why; the reason the gate stored is printed under the event."""
    post = urllib.request.Request(f"{gate.url}/v1/subjects/why/transition", method="POST",
                                  data=json.dumps({"to": "grace_period", "reason": "support said so"}).encode(),
                                  headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(post, timeout=10) as resp:
        assert json.loads(resp.read())["moved"] is True
    assert simulate_(gate, "--subject", "why", "trial-declined") == 1
    out = capsys.readouterr().out
    assert "gate:  stale" in out and "why:   " in out and "admin" in out.split("why:   ", 1)[1].splitlines()[0]


def test_a_gate_with_enforcement_off_plays_every_lifecycle(tmp_path, capsys):
    """With SUBSCRIPTION_ENABLED=false a check answers no status: an event the gate ignores asked it for one."""
    proc = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(tmp_path / "off.sqlite3"),
                        "SUBSCRIPTION_ENABLED": "false", "STRIPE_WEBHOOK_SECRET": se.SECRET}, tmp_path)
    try:
        assert simulate_(proc, "--subject", "off", *LIVES) == 0, capsys.readouterr().out
    finally:
        proc.stop()


class _Schedule:
    """What a gate's sweep schedule does, at the worst moment: a relay on 127.0.0.1 in front of the gate that asks
    it for a sweep (POST /v1/jobs/sweep) before it passes on each webhook delivery, until `until_fired` and a sweep
    fired a timer. A thread sweeping every 5 ms left it to chance whether a lifecycle's events met a sweep, and one
    whose events all came between two sweeps passed where the test expected it to be disturbed."""

    def __init__(self, url: str, *, until_fired: bool):
        self.gate, self.until_fired, self.fired = url, until_fired, 0
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        schedule = self

        class Relay(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                if self.path == "/webhook/stripe" and not (schedule.fired and schedule.until_fired):
                    schedule.sweep()
                names = ("Authorization", "Content-Type", "Stripe-Signature")
                request = urllib.request.Request(schedule.gate + self.path, data=body, method=self.command,
                                                 headers={n: self.headers[n] for n in names if self.headers[n]})
                try:
                    with schedule.opener.open(request, timeout=10) as resp:
                        status, kind, answer = resp.status, resp.headers.get("Content-Type", ""), resp.read()
                except urllib.error.HTTPError as exc:
                    status, kind, answer = exc.code, exc.headers.get("Content-Type", ""), exc.read()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def sweep(self) -> None:
        post = urllib.request.Request(f"{self.gate}/v1/jobs/sweep", method="POST",
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with self.opener.open(post, timeout=10) as resp:
            self.fired += json.loads(resp.read())["result"]


def simulate_while_sweeping(tmp_path, subject: str, *, until_fired: bool) -> tuple[int, _Schedule]:
    """trial-declined played into a gate of its own through a _Schedule: (the exit code, the schedule)."""
    proc = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(tmp_path / "gate.sqlite3"),
                        "STRIPE_WEBHOOK_SECRET": se.SECRET}, tmp_path)
    schedule = _Schedule(proc.url, until_fired=until_fired)
    schedule.thread.start()
    try:
        return simulate_(schedule, "--subject", subject, "trial-declined"), schedule
    finally:
        schedule.server.shutdown()
        schedule.server.server_close()
        proc.stop()


def test_a_lifecycle_whose_timer_a_scheduled_sweep_fired_early_is_played_again(tmp_path, capsys):
    """A trial's end is due at once (its events lie in the past): a sweep of the gate's schedule while the events
    are sent ended the trial before its charge came, and the run failed with no word of why. Now it says so and
    plays the lifecycle again on a fresh subject."""
    code, schedule = simulate_while_sweeping(tmp_path, "early", until_fired=True)
    out = capsys.readouterr().out
    assert code == 0 and schedule.fired == 1, out
    assert "AGAIN trial-declined: the gate's scheduled sweep (PLANGATE_SWEEP_SCHEDULE) ran while the events" in out
    assert "subject early-2-" in out and "PASS trial-declined" in out and "1 of 1 lifecycle(s) passed" in out


def test_a_lifecycle_every_play_of_which_meets_a_scheduled_sweep_fails_saying_what_to_do(tmp_path, capsys):
    code, _ = simulate_while_sweeping(tmp_path, "busy", until_fired=False)
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.count("AGAIN trial-declined") == 2 and "subject busy-3-" in out
    assert "at each of 3 plays; run it against a gate whose sweep runs seldom" in out.split("FAIL trial-declined")[1]
    assert "0 of 1 lifecycle(s) passed" in out


def test_one_lifecycle_as_a_process(gate, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_WEBHOOK_SECRET", "PLANGATE_API_TOKEN",
                                                               "PLANGATE_ADMIN_TOKEN")}
    done = subprocess.run([PLANGATE, "stripe-simulate", "--url", gate.url, "--secret", se.SECRET, "--token", TOKEN,
                           "--admin-token", ADMIN_TOKEN,
                           "--corpus", str(CORPUS), "--subject", "proc", "trial-converts"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS trial-converts" in done.stdout and "1 of 1 lifecycle(s) passed" in done.stdout
    assert done.stderr == ""
    assert view(gate, "proc")["status"] == "paid"


def test_the_secret_and_token_come_from_the_environment_or_var(gate, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("PLANGATE_API_TOKEN", TOKEN)
    monkeypatch.setenv("PLANGATE_ADMIN_TOKEN", ADMIN_TOKEN)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "webhook-secret").write_text(se.SECRET + "\n")
    args = ["stripe-simulate", "--url", gate.url, "--corpus", str(CORPUS), "cancel-at-period-end"]
    assert plangate_main(args) == 0
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f"{se.SECRET},whsec_next_secret_000")   # rotation: the first signs
    (tmp_path / "var" / "webhook-secret").write_text("whsec_not_the_gates_000\n")
    assert plangate_main(args) == 0
    assert capsys.readouterr().out.count("PASS cancel-at-period-end") == 2
    monkeypatch.delenv("PLANGATE_ADMIN_TOKEN", raising=False)
    assert plangate_main(args) == 2     # no admin token: every lifecycle ends with a sweep
    assert "no admin token, which each lifecycle's POST /v1/jobs/sweep needs" in capsys.readouterr().err
    (tmp_path / "var" / "admin-token").write_text(ADMIN_TOKEN + "\n")
    assert plangate_main(args) == 0
    monkeypatch.setenv("PLANGATE_ADMIN_TOKEN", TOKEN)        # the API token where the admin token belongs: 403
    assert plangate_main(args) == 2
    assert "answered 403 forbidden" in capsys.readouterr().err


def test_an_unreachable_gate_exits_2_with_one_line(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert plangate_main(["stripe-simulate", "--url", url, "--secret", se.SECRET, "--token", TOKEN,
                          "--admin-token", ADMIN_TOKEN, "--corpus", str(CORPUS)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"plangate stripe-simulate: cannot reach the gate at {url}")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_a_wrong_secret_exits_1_and_shows_the_400(gate, capsys):
    assert simulate_(gate, "trial-converts", "sca-on-renewal", secret="whsec_not_the_gates_secret") == 1
    out = capsys.readouterr().out
    assert out.count("answered 400 signature_invalid") == 4     # each lifecycle's first event, and its FAIL line
    assert "FAIL trial-converts" in out and "FAIL sca-on-renewal" in out and "0 of 2 lifecycle(s) passed" in out


def test_a_wrong_token_is_found_before_any_event_is_sent(gate, capsys):
    assert simulate_(gate, "--subject", "never", "trial-converts", token="not-the-token-0123456789") == 2
    assert "answered 401 unauthorized" in capsys.readouterr().err
    assert view(gate, "never")["known"] is False


@pytest.mark.parametrize("args, says", [
    (["nope"], "unknown lifecycle 'nope'; known: abandoned-second-subscription, cancel-at-period-end"),
    (["--url", "localhost:8080"], "is not an http(s) URL"),
])
def test_usage_errors_exit_2(args, says, capsys):
    assert plangate_main(["stripe-simulate", "--secret", se.SECRET, "--token", TOKEN, "--corpus", str(CORPUS),
                          *args]) == 2
    assert says in capsys.readouterr().err


def test_a_missing_corpus_exits_2(tmp_path, capsys):
    assert plangate_main(["stripe-simulate", "--corpus", str(tmp_path / "none"), "--list"]) == 2
    assert "no lifecycles" in capsys.readouterr().err


def test_no_secret_anywhere_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    assert plangate_main(["stripe-simulate", "--token", TOKEN, "--corpus", str(CORPUS)]) == 2
    assert "no webhook secret: pass --secret" in capsys.readouterr().err


def test_list_names_every_lifecycle_of_the_corpus(capsys):
    assert plangate_main(["stripe-simulate", "--list", "--corpus", str(CORPUS)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(p.name for p in CORPUS.iterdir() if (p / "story.yaml").is_file())


def test_a_lifecycle_failing_with_no_scheduled_sweep_is_not_played_again(gate, capsys):
    """retries-exhausted-canceled passes timers between its events, which move the subject as `timer` too: played a
    second time on the same subject (its events then stale) it fails, and says so, not AGAIN on a fresh subject."""
    assert simulate_(gate, "--subject", "twice-timers", "retries-exhausted-canceled") == 0
    assert "timer" in {t["actor"] for t in view(gate, "twice-timers")["transitions"]}
    capsys.readouterr()
    assert simulate_(gate, "--subject", "twice-timers", "retries-exhausted-canceled") == 1
    out = capsys.readouterr().out
    assert "FAIL retries-exhausted-canceled" in out and "AGAIN" not in out and "twice-timers-2" not in out
