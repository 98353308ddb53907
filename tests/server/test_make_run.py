"""`make run` as a new user runs it: generated tokens that work, and config.env's values over its defaults."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, free_port


def post(url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


@pytest.fixture
def make_run(tmp_path):
    """make_run() -> (stdout so far, port): `make run` in a folder of its own, on this interpreter's venv (already
    installed), with nothing of the gate's settings in the environment; stopped at the end."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    venv = Path(sys.executable).parent.parent
    shutil.copy(ROOT / "plans.yaml", tmp_path / "plans.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "SUBSCRIPTION_", "STRIPE_"))}
    started = []

    def start(port: int) -> str:
        out = tmp_path / "make-run.out"
        with open(out, "w") as sink:
            proc = subprocess.Popen(["make", "-f", str(ROOT / "Makefile"), "run", f"VENV={venv}",
                                     "-o", f"{venv}/.installed"], cwd=tmp_path, env=env, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True, text=True)
        started.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if f"listening on http://127.0.0.1:{port} " in out.read_text():
                return out.read_text()
            time.sleep(0.1)
        raise AssertionError(f"make run did not start: {out.read_text()}")

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


def test_config_env_wins_over_make_runs_defaults_and_the_printed_tokens_work(make_run, tmp_path):
    port = free_port()
    (tmp_path / "config.env").write_text(f"SUBSCRIPTION_ENABLED=false\nPLANGATE_PORT={port}\n"
                                         "PLANGATE_DATABASE=var/mine.sqlite3\n")
    out = make_run(port)
    api, admin, secret = ((tmp_path / "var" / name).read_text().strip()
                          for name in ("api-token", "admin-token", "webhook-secret"))
    assert secret.startswith("whsec_") and f"Stripe webhook secret (STRIPE_WEBHOOK_SECRET): {secret}" in out
    assert f"API token (check, consume, usage, subjects; PLANGATE_API_TOKEN): {api}" in out
    assert f"Admin token (transitions, credits, traits, erasure, plan reloads, jobs; PLANGATE_ADMIN_TOKEN): {admin}\n" \
        in out
    assert f"curl -s -X POST http://127.0.0.1:{port}/v1/check" in out
    assert f"Console:  http://127.0.0.1:{port}/console/ (log in with the admin token" in out
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/console/login", timeout=10).status == 200
    status, decision = post(f"http://127.0.0.1:{port}/v1/check", api, {"subject": "alice", "meter": "requests"})
    assert (status, decision["reason"]) == (200, "disabled")        # config.env's false, not make run's true
    assert post(f"http://127.0.0.1:{port}/v1/jobs/sweep", admin)[0] == 200
    assert (tmp_path / "var" / "mine.sqlite3").exists() and not (tmp_path / "var" / "plangate.sqlite3").exists()


def test_the_example_copied_as_config_env_leaves_make_runs_defaults_in_effect(make_run, tmp_path):
    """The README says: copy config.env.example to config.env. A copy left as it is set empty tokens and
    enforcement off over make run's generated ones, and the gate refused to start."""
    port = free_port()
    example = (ROOT / "config.env.example").read_text()
    (tmp_path / "config.env").write_text(example + f"PLANGATE_PORT={port}\n")
    out = make_run(port)
    api = (tmp_path / "var" / "api-token").read_text().strip()
    assert "Enforcement on" in out, out
    status, decision = post(f"http://127.0.0.1:{port}/v1/check", api, {"subject": "alice", "meter": "requests"})
    assert (status, decision["reason"]) == (200, "ok")


def test_a_token_and_the_kill_switch_set_in_config_env_are_said_at_start(make_run, tmp_path):
    """A token config.env sets wins over var/api-token's, whose README commands then get 401: the printed line
    says so. The kill switch, which denies everything, was not shown beside "Enforcement on"."""
    port = free_port()
    (tmp_path / "config.env").write_text(f"PLANGATE_PORT={port}\nSUBSCRIPTION_KILL_SWITCH=true\n"
                                         "PLANGATE_API_TOKEN=mine-0123456789abcdef\n")
    out = make_run(port)
    assert "API token (check, consume, usage, subjects; PLANGATE_API_TOKEN): mine-0123456789abcdef (set in " \
           "config.env or the environment: var/api-token holds make run's own" in out, out
    assert "Enforcement on; kill switch ON (SUBSCRIPTION_KILL_SWITCH=true)" in out, out
    admin = (tmp_path / "var" / "admin-token").read_text().strip()
    assert f"PLANGATE_ADMIN_TOKEN): {admin}\n" in out
    status, decision = post(f"http://127.0.0.1:{port}/v1/check", "mine-0123456789abcdef",
                            {"subject": "alice", "meter": "requests"})
    assert (status, decision["reason"]) == (200, "kill_switch")


def make_run_ends(tmp_path, config_env: str) -> subprocess.CompletedProcess:
    """`make run` in tmp_path (with the shipped plan copied there) where it ends before serving."""
    venv = Path(sys.executable).parent.parent
    shutil.copy(ROOT / "plans.yaml", tmp_path / "plans.yaml")
    (tmp_path / "config.env").write_text(config_env)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANGATE_", "SUBSCRIPTION_", "STRIPE_"))}
    return subprocess.run(["make", "-f", str(ROOT / "Makefile"), "run", f"VENV={venv}", "-o", f"{venv}/.installed"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_make_run_lints_the_plan_it_serves_and_hints_at_its_meter(make_run, tmp_path):
    """PLANGATE_PLANS names another plan: make run linted the shipped plans.yaml (clean) whatever it served, and
    its curl line asked for the shipped plan's meter (422 unknown_meter)."""
    port = free_port()
    broken = tmp_path / "broken.yaml"
    broken.write_text((ROOT / "plans.yaml").read_text().replace("to: paid_trial", "to: paid_trail", 1))
    done = make_run_ends(tmp_path, f"PLANGATE_PLANS={broken}\nPLANGATE_PORT={port}\n")
    assert done.returncode != 0 and f"lint {broken}" in done.stdout, done.stdout
    assert "paid_trail" in done.stdout + done.stderr and "API token" not in done.stdout

    saas = ROOT / "examples" / "saas" / "plans.yaml"
    (tmp_path / "config.env").unlink()
    (tmp_path / "config.env").write_text(f"PLANGATE_PLANS={saas}\nPLANGATE_PORT={port}\n")
    out = make_run(port)
    api = (tmp_path / "var" / "api-token").read_text().strip()
    meter = next(line for line in out.splitlines() if line.startswith("Try:")).split('"meter": "')[1].split('"')[0]
    assert meter != "requests" and f"lint {saas}" in out
    assert post(f"http://127.0.0.1:{port}/v1/check", api, {"subject": "alice", "meter": meter})[0] == 200
    assert "stripe-simulate --url" not in out       # its lifecycles are the shipped plan's

    (tmp_path / "second").mkdir()
    again = make_run_ends(tmp_path / "second", f"PLANGATE_PORT={port}\n")     # a second make run, same port
    assert again.returncode != 0 and f"127.0.0.1:{port} is in use" in again.stderr, again.stderr
    assert "API token" not in again.stdout


@pytest.mark.parametrize("has_config_env", [True, False])
def test_make_run_names_config_env_only_where_there_is_one(tmp_path, has_config_env):
    """plangate refuses an --env-file that is not there; a new user has no config.env."""
    if has_config_env:
        (tmp_path / "config.env").write_text("PLANGATE_PORT=9999\n")
    done = subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-f", "-", "PYTHON=python3", "print"],
                          input="print:\n\t@echo $(RUN_ENV)\n", cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert done.stdout.split() == ["--env-file", "config.env"] * has_config_env + ["--env-file", "var/run.env"]


def fake_bin(folder: Path, runs: dict[str, bool]) -> str:
    """A PATH of `folder` (interpreters that run or not, like a pyenv shim of a version not selected, and a make
    that says what it was asked) and the system's tools, without pyenv."""
    folder.mkdir()
    for name, works in runs.items():
        (folder / name).write_text(f"#!/bin/sh\nexit {0 if works else 127}\n")
        (folder / name).chmod(0o755)
    (folder / "make").write_text('#!/bin/sh\necho "make $*"\n')
    (folder / "make").chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


class TestPythonVersions:
    def print_python(self, path: str, *args: str) -> str:
        done = subprocess.run(["/usr/bin/make", "-s", "-f", str(ROOT / "Makefile"), "-f", "-", *args, "print"],
                              input="print:\n\t@echo $(PYTHON)\n", cwd=ROOT, capture_output=True, text=True,
                              env={"PATH": path, "HOME": os.environ.get("HOME", "/")}, timeout=30)
        return done.stdout.strip()

    def test_the_makefile_takes_the_newest_supported_python_that_runs(self, tmp_path):
        path = fake_bin(tmp_path / "bin", {"python3.13": False, "python3.12": True, "python3.11": True,
                                           "python3.14": True})
        assert self.print_python(path) == "python3.12"
        assert self.print_python(path, "PYTHON=python3.11") == "python3.11"

    def test_ci_runs_the_oldest_and_the_newest_one_after_the_other(self, tmp_path):
        path = fake_bin(tmp_path / "bin", {"python3.11": True, "python3.12": True, "python3.13": True})
        done = subprocess.run([str(ROOT / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                              env={"PATH": path, "HOME": os.environ.get("HOME", "/"),
                                   "PLANGATE_TEST_POSTGRES": "postgresql://postgres@127.0.0.1:5432/postgres"})
        assert done.returncode == 0, done.stdout + done.stderr
        assert [line for line in done.stdout.splitlines() if line.startswith("make ")] == [
            "make lint PYTHON=python3.13 VENV=.venv-ci-3.13", "make test PYTHON=python3.11 VENV=.venv-ci-3.11",
            "make test PYTHON=python3.13 VENV=.venv-ci-3.13"]


def test_the_secrets_make_run_writes_are_its_owners_alone(tmp_path, monkeypatch):
    """var/run.env holds the admin token: with the usual umask (022) it was readable by every local user, who
    could then grant credits or move a subject to paid. One made readable before is made the owner's too."""
    from plangate.server import local

    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run.env").write_text("# an older one\n")
    (tmp_path / "var" / "run.env").chmod(0o644)
    before = os.umask(0o022)
    try:
        local.prepare()
    finally:
        os.umask(before)
    for name in ("api-token", "admin-token", "webhook-secret", "run.env"):
        assert (tmp_path / "var" / name).stat().st_mode & 0o777 == 0o600, name
    admin = (tmp_path / "var" / "admin-token").read_text().strip()
    assert f"PLANGATE_ADMIN_TOKEN={admin}" in (tmp_path / "var" / "run.env").read_text()
