"""`plangate serve` and `plangate migrate` as real processes: start-up checks, restart, graceful stop."""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from plangate.server.store._migrations import migrations

from .conftest import BASE_ENV, PLAN, ROOT, TOKEN, token_for

PLANGATE = str(Path(sys.executable).with_name("plangate"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}     # the API token: reading routes (post() picks the route's own)


def run(args, env, cwd, timeout=30):
    return subprocess.run([PLANGATE, *args, "--env-file", ""], env={**os.environ, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


async def post(url: str, path: str, body: dict):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.post(url + path, json=body, headers={"Authorization": f"Bearer {token_for(path)}"}) as r:
            return r.status, await r.json()


class TestStartupRefusesBadSettings:
    @pytest.mark.parametrize("name, value, says", [
        ("PLANGATE_PORT", "eighty", "PLANGATE_PORT='eighty'"),
        ("PLANGATE_PORT", "70000", "from 0 to 65535"),
        ("SUBSCRIPTION_ENABLED", "maybe", "SUBSCRIPTION_ENABLED='maybe'"),
        ("PLANGATE_FAIL_MODE", "sideways", "allowed are plan, open, closed"),
        ("PLANGATE_CACHE_TTL", "-1", "PLANGATE_CACHE_TTL"),
        ("PLANGATE_API_TOKEN", "short", "PLANGATE_API_TOKEN"),
        ("PLANGATE_PLANS", "missing.yaml", "missing.yaml"),
        # A plan that sells credit packs reads what a Checkout bought from Stripe: without a key, none is granted.
        ("PLANGATE_PLANS", str(ROOT / "examples" / "ai-api" / "plans.yaml"), "STRIPE_SECRET_KEY=(empty)"),
    ])
    def test_exits_2_naming_the_variable_before_binding(self, tmp_path, name, value, says):
        env = {**BASE_ENV, "PLANGATE_DATABASE": str(tmp_path / "db.sqlite3"), "PLANGATE_PORT": "0", name: value}
        done = run(["serve"], env, tmp_path)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr
        assert not (tmp_path / "db.sqlite3").exists()

    def test_a_broken_plan_is_refused_with_its_findings(self, tmp_path):
        broken = tmp_path / "plans.yaml"
        broken.write_text(PLAN.read_text().replace("initial: true", "initial: false"))
        env = {**BASE_ENV, "PLANGATE_PLANS": str(broken), "PLANGATE_DATABASE": str(tmp_path / "db.sqlite3")}
        done = run(["serve"], env, tmp_path)
        assert done.returncode == 2 and "no-initial" in done.stderr
        assert f"PLANGATE_PLANS={broken}" in done.stderr

    def test_a_port_in_use_fails_before_anything_starts(self, tmp_path):
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            database = tmp_path / "db.sqlite3"
            done = run(["serve", "--create-store"], {**BASE_ENV, "PLANGATE_DATABASE": str(database),
                                                     "PLANGATE_PORT": str(port)}, tmp_path)
        assert done.returncode == 1, done.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr
        assert '"started"' not in done.stderr and not database.exists()     # no store opened, nothing logged

    async def test_plan_warnings_are_logged_at_start(self, tmp_path, gate_process):
        plan = ROOT / "tests" / "policy" / "plans" / "grace-skipped.yaml"
        proc = gate_process(PLANGATE_PLANS=str(plan))
        _, err = proc.output()
        [warning] = [json.loads(line) for line in err.splitlines() if '"plan_warning"' in line]
        assert (warning["level"], warning["code"]) == ("warning", "grace-skipped")
        assert warning["where"].startswith(f"{plan}:") and "grace" in warning["message"]


class TestEnvFiles:
    """A settings file named with --env-file must be there: the gate started on the environment alone when a
    typo named a file that is not, as if its settings did not matter. Without --env-file, config.env is read
    where it exists."""

    @pytest.mark.parametrize("args", [["serve", "--create-store"], ["migrate"], ["erase", "bob"]])
    @pytest.mark.parametrize("named", ["prod.env", "folder"])
    def test_a_file_named_that_is_not_there_is_refused(self, tmp_path, args, named):
        (tmp_path / "folder").mkdir()
        (tmp_path / "config.env").write_text("PLANGATE_PORT=0\n")
        database = tmp_path / "db.sqlite3"
        env = {**BASE_ENV, "PLANGATE_DATABASE": str(database), "PLANGATE_PORT": "0"}
        files = ["--env-file", named] if args[0] == "erase" else ["--env-file", "config.env", "--env-file", named]
        done = subprocess.run([PLANGATE, *args, *files], env={**os.environ, **env}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert f"--env-file {named}: " in done.stderr and "Traceback" not in done.stderr
        assert '"started"' not in done.stderr and not database.exists()

    def test_without_env_file_a_missing_config_env_is_no_problem(self, tmp_path):
        done = subprocess.run([PLANGATE, "migrate"], env={**os.environ, "PLANGATE_DATABASE": str(tmp_path / "db")},
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr


class TestMigrate:
    def test_migrate_sets_the_schema_version_once(self, tmp_path):
        env = {"PLANGATE_DATABASE": str(tmp_path / "db.sqlite3")}
        first = run(["migrate"], env, tmp_path)
        again = run(["migrate"], env, tmp_path)
        latest = max(number for number, _, _ in migrations("sqlite"))
        assert first.returncode == 0 and f"schema version 0 -> {latest}" in first.stdout
        assert again.returncode == 0 and f"schema is current (version {latest})" in again.stdout
        with sqlite3.connect(tmp_path / "db.sqlite3") as db:
            assert db.execute("PRAGMA user_version").fetchone() == (latest,)
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


class TestRestart:
    async def test_state_and_usage_survive_a_restart(self, gate_process):
        first = gate_process()
        await post(first.url, "/v1/consume", {"subject": "u", "meter": "requests", "amount": 12,
                                              "idempotency_key": "job-1"})
        await post(first.url, "/v1/subjects/v/transition", {"to": "billing_problem", "reason": "test"})
        code, out, err = first.stop()
        assert code == 0, err
        second = gate_process()
        status, body = await post(second.url, "/v1/check", {"subject": "u", "meter": "requests"})
        assert (body["used"], body["remaining"]) == (12, 8)
        status, repeat = await post(second.url, "/v1/consume", {"subject": "u", "meter": "requests", "amount": 12,
                                                                "idempotency_key": "job-1"})
        assert repeat["duplicate"] is True and repeat["used"] == 12
        status, body = await post(second.url, "/v1/check", {"subject": "v", "meter": "requests"})
        assert body["status"] == "billing_problem"

    async def test_sigterm_finishes_requests_in_flight(self, gate_process, tmp_path):
        proc = gate_process()
        tasks = [asyncio.create_task(post(proc.url, "/v1/consume", {"subject": f"s{i}", "meter": "requests",
                                                                     "amount": 1, "idempotency_key": f"k{i}"}))
                 for i in range(50)]
        await asyncio.sleep(0.01)
        proc.proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        answered = [r for r in results if not isinstance(r, BaseException)]
        code = proc.proc.wait(timeout=20)
        out, err = proc.output()
        assert code == 0, err
        assert "stopping" in out and all(status == 200 for status, _ in answered)
        with sqlite3.connect(tmp_path / "proc.sqlite3") as db:
            stored = db.execute("SELECT COUNT(*) FROM usage_keys").fetchone()[0]
        # Every answered consume is durable; nothing was counted that was not answered or refused.
        assert stored >= sum(b["counted"] for _, b in answered)
        logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert logs[-1]["event"] == "stopped"

    def test_a_sigterm_while_the_store_does_not_answer_stops_the_start(self, tmp_path):
        """A start waits up to PLANGATE_PG_CONNECT_TIMEOUT (as long as 300 s) for PostgreSQL to answer: a SIGTERM
        meanwhile was held until the wait ended. It stops the start now, and the gate exits 0."""
        with socket.socket() as silent:     # takes connections (into the kernel's backlog) and never says a word
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            env = {**os.environ, **BASE_ENV, "PLANGATE_PG_CONNECT_TIMEOUT": "120", "PLANGATE_PORT": "0",
                   "PLANGATE_HOST": "127.0.0.1",
                   "PLANGATE_DATABASE": f"postgresql://plangate@127.0.0.1:{silent.getsockname()[1]}/plangate"}
            proc = subprocess.Popen([PLANGATE, "serve", "--env-file", ""], env=env, cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert select.select([silent], [], [], 30)[0], "the gate never connected to its store"
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        assert proc.returncode == 0, err
        assert "stopping before it served" in out and "listening on" not in out
        logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert logs[-1]["event"] == "stopped" and "Traceback" not in err


async def _kept_events(url: str, n: int) -> str:
    """The event id before n counts of /v1/usage the gate at url publishes, each event 800 bytes (a subject of 199
    four-byte characters): kept by its feed for a named client that may come back to resume."""
    subject = "\U0001F600" * 199
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
        async with s.get(url + "/v1/subjects/kept/snapshot?client=keeping-client") as r:
            start = (await r.json())["event_id"]
        for i in range(0, n, 20):
            await asyncio.gather(*(s.post(url + "/v1/usage", json={
                "subject": subject + str(j % 10), "meter": "requests", "idempotency_key": f"k{j}"})
                for j in range(i, i + 20)))
    return start


class TestMisbehavingClients:
    @pytest.mark.parametrize("framing", ["length", "chunked"])
    async def test_a_client_hanging_up_in_the_middle_of_its_body_is_no_error_of_the_gate(self, gate_process,
                                                                                        tmp_path, framing):
        """The client goes away before its body is whole: nothing is counted, and nothing is logged as an error
        (`plangate serve` logged aiohttp's "Error handling request" and a traceback for each: a client could fill
        the log). aiohttp's test server cancels such a handler instead: only the real process shows it."""
        proc = gate_process()
        head = f"POST /v1/consume HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        head += "Content-Length: 100\r\n\r\n" if framing == "length" else "Transfer-Encoding: chunked\r\n\r\n40\r\n"
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(head.encode() + b'{"subject": "gone", ')
            await writer.drain()
            await asyncio.sleep(0.2)            # the gate is waiting for the rest of the body
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.3)
        status, body = await post(proc.url, "/v1/consume", {"subject": "here", "meter": "requests"})
        assert (status, body["used"]) == (200, 1)
        code, out, err = proc.stop()
        assert code == 0
        assert "Traceback" not in err and "Error handling request" not in err and '"level":"error"' not in err, err
        with sqlite3.connect(tmp_path / "proc.sqlite3") as db:
            assert db.execute("SELECT subject FROM quota_usage").fetchall() == [("here",)]

    async def test_a_request_the_http_server_cannot_parse_is_counted_not_logged_with_a_traceback(self, gate_process):
        """Broken framing, a header line too long, bytes no request line allows: aiohttp refuses them before the
        gate sees them (a 400), and logged each as an error with a traceback, in no format of the gate's log: any
        client could fill it. Each is now counted as a refused request and is a debug line of the gate's log."""
        proc = gate_process(PLANGATE_LOG_LEVEL="DEBUG")
        body = b'{"subject": "u", "meter": "requests"}'
        broken = [
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + body + b"\r\n0\r\n\r\n",
            b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n" + body,
            b"GET /v1/stream?client=abcd\xc3\xa9fgh HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
            # A TLS ClientHello to the plain-HTTP port: aiohttp logs the first request's bad method at debug level.
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32),
        ]
        for request in broken:
            reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:200]
        async with aiohttp.ClientSession() as s, s.get(proc.url + "/metrics") as r:
            assert f'plangate_rejected_requests_total{{error="bad_http_request"}} {len(broken)}.0' in await r.text()
        code, out, err = proc.stop()
        assert code == 0
        assert "Traceback" not in err and "Error handling request" not in err, err
        refused = [json.loads(line) for line in err.splitlines() if '"bad_http_request"' in line]
        assert len(refused) == len(broken) and all(line["status"] == 400 for line in refused), err

    async def test_a_stream_client_hanging_up_while_its_resume_waits_to_be_written_is_no_error(self, gate_process):
        """A client resumes from before some 7 MB of events, reads none of them and hangs up while the gate's write
        waits for room: aiohttp ends that write with ConnectionError (not ConnectionResetError), which was logged
        as internal_error with a traceback. aiohttp's test server cancels the handler instead."""
        proc = gate_process()
        start = await _kept_events(proc.url, 8000)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", proc.port))
        client.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                       f"Last-Event-ID: {start}\r\n\r\n".encode())
        await asyncio.sleep(1)              # the resume is being written, and waits
        client.close()
        await asyncio.sleep(0.5)
        code, out, err = proc.stop()
        assert code == 0
        assert '"internal_error"' not in err and "Traceback" not in err, err

    async def test_clients_resuming_from_far_back_without_reading_hold_little_of_the_gates_memory(self,
                                                                                                  gate_process):
        """Each resumed stream's missed events (up to 10,000 kept, here some 8 MB) were joined and handed to the
        connection at once: a client that does not read held all of it in the gate, twice over, until its time
        was up, and PLANGATE_STREAM_MAX_LISTENERS such clients (10,000 by default) could take the gate's memory."""
        proc = gate_process()
        start = await _kept_events(proc.url, 9000)

        def rss_mb() -> float:
            with open(f"/proc/{proc.proc.pid}/status") as status:
                return int(status.read().split("VmRSS:")[1].split()[0]) / 1024

        before = rss_mb()
        clients = []
        for _ in range(6):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", proc.port))
            client.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                           f"Last-Event-ID: {start}\r\n\r\n".encode())
            clients.append(client)
        await asyncio.sleep(2)
        held = rss_mb() - before
        try:
            for client in clients:
                client.settimeout(5)
                got = b""
                while b"event: hello" not in got or not got.endswith(b"\n\n"):
                    got += client.recv(1)
                assert b'"resumed":true' in got, got
            assert held < 30, f"{held:.0f} MB for 6 clients"        # it was some 95 MB
        finally:
            for client in clients:
                client.close()
