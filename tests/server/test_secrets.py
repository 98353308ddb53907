"""Secrets stay secret: a PostgreSQL password is never printed, and errors from Stripe's API are logged with
key-looking values redacted."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from aiohttp import web

from plangate.server.logs import JsonFormatter, redact_keys

from . import stripe_events as se
from .conftest import BASE_ENV, free_port
from .test_process import run
from .test_webhook import deliver

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PASSWORD = "s3cret-pw-do-not-show"
KEY = "sk_test_51HxAbCdEfGhIjKlMnOpQrStUv"


class TestPostgresPassword:
    def test_serve_failing_to_connect_never_prints_it(self, tmp_path):
        database = f"postgresql://plangate:{PASSWORD}@127.0.0.1:{free_port()}/plangate"
        done = run(["serve"], {**BASE_ENV, "PLANGATE_DATABASE": database, "PLANGATE_PORT": "0"}, tmp_path)
        assert done.returncode == 1, done.stderr
        assert PASSWORD not in done.stdout + done.stderr
        assert "postgresql://plangate:***@127.0.0.1:" in done.stderr

    async def test_migrate_never_prints_it(self, tmp_path, pg_dsn):
        database = pg_dsn.replace("://postgres@", f"://postgres:{PASSWORD}@")     # trust: any password will do
        assert PASSWORD in database
        done = run(["migrate"], {"PLANGATE_DATABASE": database}, tmp_path)
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stdout + done.stderr and "postgres:***@" in done.stdout

    def test_a_connect_timeout_says_what_happened(self, tmp_path):
        """A server that accepts the connection and never answers: the error names the timeout."""
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            accepted = []
            stop = threading.Event()

            def accept():
                silent.settimeout(0.1)
                while not stop.is_set():
                    try:
                        accepted.append(silent.accept()[0])
                    except OSError:
                        pass

            thread = threading.Thread(target=accept, daemon=True)
            thread.start()
            try:
                done = run(["migrate"], {"PLANGATE_DATABASE": f"postgresql://postgres@127.0.0.1:{port}/x",
                                         "PLANGATE_PG_CONNECT_TIMEOUT": "0.5"}, tmp_path)
            finally:
                stop.set()
                thread.join()
                for conn in accepted:
                    conn.close()
        assert done.returncode == 1
        assert "cannot connect to PostgreSQL: no answer within 0.5 s" in done.stderr, done.stderr


def stripe_error(status: int, kind: str, message: str):
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"error": {"type": kind, "message": message}}, status=status)
    return answer


class TestStripeErrors:
    @pytest.mark.parametrize("status, kind, message, event", [
        (401, "authentication_error", f"Invalid API Key provided: sk_test_{'*' * 20}UvWx", "job_failed"),
        (404, "invalid_request_error", f"No such subscription: 'sub_1'; a similar object exists in live mode, "
                                       f"but a test mode key ({KEY}) was used", "reconcile_skipped"),
    ])
    async def test_are_logged_with_keys_redacted(self, start_gate, aiohttp_server, caplog, status, kind, message,
                                                 event):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", stripe_error(status, kind, message))
        stripe = await aiohttp_server(app, host="127.0.0.1")
        gate = await start_gate(STRIPE_WEBHOOK_SECRET=se.SECRET, STRIPE_SECRET_KEY=KEY,
                                STRIPE_API_BASE=str(stripe.make_url("")).rstrip("/"))
        now = time.time()
        await deliver(gate, se.event("checkout.session.completed", se.checkout("alice"), now - 100))
        await deliver(gate, se.event("invoice.paid", se.invoice("paid", period_end=now + 86400), now - 90))
        await deliver(gate, se.event("invoice.payment_failed", se.invoice("open", inv_id="in_2"), now - 80))
        assert (await gate.get("/v1/subjects/alice"))[1]["status"] == "grace_period"      # doubtful: asked about
        caplog.set_level(logging.INFO, logger="plangate")
        await gate.post("/v1/jobs/reconcile")
        [record] = [r for r in caplog.records if r.getMessage() == event]
        line = JsonFormatter().format(record)
        assert "[redacted]" in json.loads(line)["error"], line
        assert KEY not in line and "sk_test_" not in line and "UvWx" not in line


@pytest.mark.parametrize("text", [KEY, "rk_live_0123456789abcdef", "pk_test_abc123", "whsec_0123456789abcdef",
                                  "sk_live_****************abcd"])
def test_key_looking_values_are_redacted(text):
    assert redact_keys(f"it said: {text}; nothing else") == "it said: [redacted]; nothing else"
