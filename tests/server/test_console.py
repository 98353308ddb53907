"""The console's routes through a real gate (aiohttp on 127.0.0.1, a SQLite file): sessions, CSRF, the read-only
mode, finding a subject, its timeline and an admin transition through the API's door."""
from __future__ import annotations

import asyncio
import hashlib
import html
import hmac
import json
import re
import sqlite3
import threading
import time
import urllib.request
from datetime import datetime

import pytest

from plangate.server.console import _session
from plangate.server.console._session import COOKIE, FAILED_LOGINS
from plangate.server.console.pages import SESSIONS
from plangate.server.console.proposal import PREVIEWING
from plangate.engine import compile_file
from plangate.server.config import ConfigError
from plangate.server.gate import Gate
from plangate.server.http.api import GATE
from plangate.server.logs import capture_logs, parse_lines
from plangate.server.metrics import Metrics

from .conftest import ADMIN_TOKEN, BASE_ENV, PLAN, TOKEN, GateProcess, config_for
from .console_flow import WEBHOOK, hidden, lifecycle, login, new_session, play


API, ADMIN = f"Bearer {TOKEN}", f"Bearer {ADMIN_TOKEN}"
BEARERS = ((API,), (ADMIN,))      # what each scope accepts, as the console's Sessions takes them


@pytest.fixture
async def console(start_gate):
    gate = await start_gate(**WEBHOOK)
    async with new_session() as session:
        yield gate, session


class TestAccess:
    async def test_pages_need_a_session(self, console):
        gate, session = console
        for path in ("/console/", "/console/plan", "/console/health", "/console/subjects/alice"):
            async with session.get(gate.url + path, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/console/login", path

    @pytest.mark.parametrize(("method", "path", "allow"), [
        ("PUT", "/console/login", "GET,HEAD,POST"), ("GET", "/console/logout", "POST"),
        ("DELETE", "/console/", "GET,HEAD"), ("GET", "/console/subjects/alice/transition", "POST"),
        ("PATCH", "/console/plan/proposal", "GET,HEAD,POST")])
    async def test_a_page_asked_with_another_method_is_a_405_naming_its_methods(self, console, method, path, allow):
        gate, session = console
        async with session.request(method, gate.url + path, allow_redirects=False) as r:
            assert (r.status, r.headers.get("Allow")) == (405, allow)      # was a 404 "no route for" the page

    @pytest.mark.parametrize("path", ["/console/webhooks", "/console/subjects", "/console/plan/x/y"])
    async def test_a_path_with_no_page_is_a_page_saying_so(self, console, path):
        """A mistyped console address (the webhooks page is /console/events) was answered with the API's JSON 404."""
        gate, session = console
        async with session.get(gate.url + path, allow_redirects=False) as r:
            assert (r.status, r.content_type) == (404, "text/html"), path
            text = await r.text()
        assert f"no page at {path}" in text and 'href="/console/"' in text

    async def test_a_page_answers_head_as_it_answers_get(self, console):
        gate, session = console
        for path, status in (("/console/login", 200), ("/console/", 303), ("/console", 303)):
            async with session.head(gate.url + path, allow_redirects=False) as r:
                assert r.status == status, path                             # was a 404

    async def test_the_admin_token_opens_a_session_cookie_that_scripts_cannot_read(self, console):
        gate, session = console
        r = await login(gate.url, session, ADMIN_TOKEN)
        assert r.status == 303
        cookie = r.headers.getall("Set-Cookie")
        sent = next(c for c in cookie if c.startswith("plangate_console="))
        assert "HttpOnly" in sent and "SameSite=Strict" in sent and "Path=/console" in sent
        assert "Secure" not in sent      # plain HTTP here; Secure when the request came over TLS
        assert ADMIN_TOKEN not in "".join(cookie)
        async with session.get(gate.url + "/console/") as r:
            page = await r.text()
            assert r.status == 200 and "Ada (admin)" in page and ADMIN_TOKEN not in page

    async def test_the_cookies_are_secure_behind_a_proxy_that_terminated_tls(self, console):
        gate, session = console
        tls = {"X-Forwarded-Proto": "https"}
        async with session.get(gate.url + "/console/login", headers=tls) as r:
            sent = [c for c in r.headers.getall("Set-Cookie") if c.startswith("plangate_console_login=")]
            assert sent and all("Secure" in c for c in sent)
        async with session.get(gate.url + "/console/login") as r:      # a login cookie the jar sends over HTTP
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/login", headers=tls, allow_redirects=False,
                                data={"csrf": csrf, "label": "Ada", "token": ADMIN_TOKEN}) as r:
            assert r.status == 303
            sent = [c for c in r.headers.getall("Set-Cookie") if c.startswith("plangate_console=")]
            assert sent and all("Secure" in c for c in sent)

    async def test_a_form_that_is_not_utf8_is_refused_with_400(self, console):
        gate, session = console
        async with session.get(gate.url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/login", data=f"csrf={csrf}&label=\xff&token=x".encode("latin-1"),
                                headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 400 and "UTF-8" in await r.text()

    @pytest.mark.parametrize("charset", ["x-made-up", "utf-99"])
    async def test_a_form_in_a_charset_nobody_knows_is_refused_with_400(self, console, charset):
        gate, session = console
        async with session.get(gate.url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        form = f"csrf={csrf}&label=x&token={ADMIN_TOKEN}".encode()
        async with session.post(gate.url + "/console/login", data=form, allow_redirects=False,
                                headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"}) as r:
            assert r.status == 400 and "UTF-8" in await r.text()      # was a 500 (LookupError), no session needed
        async with session.get(gate.url + "/console/", allow_redirects=False) as r:
            assert r.status == 303      # not logged in

    @pytest.mark.parametrize("encoding", ["br", "gzip", "x-made-up"])
    async def test_a_form_in_a_content_encoding_is_refused_with_415(self, console, encoding):
        gate, session = console
        async with session.get(gate.url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        form = f"csrf={csrf}&label=x&token={ADMIN_TOKEN}".encode()
        async with session.post(gate.url + "/console/login", data=form, allow_redirects=False,
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "Content-Encoding": encoding}) as r:
            assert r.status == 415 and "Content-Encoding" in await r.text()
        async with session.get(gate.url + "/console/", allow_redirects=False) as r:
            assert r.status == 303      # not logged in

    async def test_a_form_cut_short_is_the_clients_not_an_error_of_the_gate(self, tmp_path):
        """A login whose body stops short of its Content-Length (its client gone): logged as an internal error with a
        traceback, which anyone could fill the log with, no session needed. On `plangate serve` (uvloop)."""
        gate = GateProcess({**BASE_ENV, "PLANGATE_DATABASE": str(tmp_path / "cut.sqlite3")}, tmp_path)
        try:
            host, port = gate.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncsrf=abc&label=x&token=")
            await writer.drain()
            await asyncio.sleep(0.2)        # the handler waits for the rest of the form
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 5)        # the gate closes the connection
            writer.close()
        finally:
            code, _, err = gate.stop()
        assert code == 0 and [e for e in parse_lines(err) if e["level"] == "error"] == [], err

    async def test_a_wrong_token_is_refused(self, console):
        gate, session = console
        r = await login(gate.url, session, "not-the-token")
        assert r.status == 401
        async with session.get(gate.url + "/console/", allow_redirects=False) as r:
            assert r.status == 303

    async def test_a_login_without_its_csrf_token_is_refused(self, console):
        gate, session = console
        async with session.post(gate.url + "/console/login", data={"label": "x", "token": ADMIN_TOKEN},
                                allow_redirects=False) as r:
            assert r.status == 403

    async def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(self, console):
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        data = {"what": "to:closed", "reason": "test", "confirm": "yes"}
        async with session.post(gate.url + "/console/subjects/alice/transition", data=data) as r:
            assert r.status == 403
        async with session.post(gate.url + "/console/subjects/alice/transition",
                                data={**data, "csrf": "forged"}) as r:
            assert r.status == 403
        assert (await gate.get("/v1/subjects/alice"))[1]["known"] is False

    async def test_the_api_token_gives_a_read_only_console(self, console):
        gate, session = console
        assert (await login(gate.url, session, TOKEN)).status == 303
        async with session.get(gate.url + "/console/subjects/alice") as r:
            page = await r.text()
            assert r.status == 200 and "Read-only console" in page and 'name="what"' not in page
        data = {"what": "to:closed", "reason": "test", "confirm": "yes", "csrf": hidden(page, "csrf")}
        async with session.post(gate.url + "/console/subjects/alice/transition", data=data) as r:
            assert r.status == 403
        assert (await gate.get("/v1/subjects/alice"))[1]["known"] is False

    async def test_logout_ends_the_session(self, console):
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        old = _sid(session)
        async with session.get(gate.url + "/console/") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        async with session.get(gate.url + "/console/", allow_redirects=False) as r:
            assert r.status == 303
        # Ended on the gate, not only forgotten by this browser: the old cookie, presented again, opens nothing.
        assert (await _home_with(gate.url, old))[0] == 303

    async def test_a_new_login_ends_the_session_the_browser_presented(self, console):
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        old = _sid(session)
        assert (await login(gate.url, session, TOKEN, label="Bea")).status == 303
        new = _sid(session)
        assert new != old
        assert (await _home_with(gate.url, old))[0] == 303
        status, page = await _home_with(gate.url, new)
        assert status == 200 and "Bea" in page

    async def test_read_only_logins_never_push_out_an_admin(self, console, monkeypatch):
        """Whoever holds the API token could once log in MAX_SESSIONS times and log every admin out."""
        gate, session = console
        monkeypatch.setattr(_session, "MAX_SESSIONS", 3)
        await login(gate.url, session, ADMIN_TOKEN)
        readers = []
        for n in range(5):
            async with new_session() as reader:
                assert (await login(gate.url, reader, TOKEN, label=f"r{n}")).status == 303
                readers.append(_sid(reader))
        async with session.get(gate.url + "/console/", allow_redirects=False) as r:
            assert r.status == 200 and "(admin)" in await r.text()
        sessions = gate.app[SESSIONS]
        with sqlite3.connect(gate.database) as db:      # the admin and the last three read-only ones: bounded
            assert db.execute("SELECT admin, count(*) FROM console_sessions GROUP BY admin").fetchall() == \
                [(0, 3), (1, 1)]
        assert await sessions.get(readers[0]) is None and await sessions.get(readers[-1]) is not None

    async def test_while_sessions_cannot_be_read_a_session_seen_lately_still_opens_the_pages(self, console):
        """The store fails to read sessions (here its table is gone: another process broke the schema): a
        browser whose session this gate saw lately still gets the pages, the health page included; one it never
        saw, a login and a logout are answered 503, with a page that says why."""
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        async with session.get(gate.url + "/console/health") as r:
            assert r.status == 200 and "kill switch</th><td>off" in (await r.text()).replace("\n", "")
        with sqlite3.connect(gate.database) as db:
            db.execute("DROP TABLE console_sessions")
        async with session.get(gate.url + "/console/health") as r:
            page = await r.text()
            assert r.status == 200 and "store failures since start" in page and "session: " in page
        status, page_of_stranger = await _home_with(gate.url, "a-session-this-gate-never-saw")
        assert status == 503 and "session cannot be checked" in page_of_stranger
        async with new_session() as stranger:
            assert (await login(gate.url, stranger, ADMIN_TOKEN)).status == 503
        async with session.post(gate.url + "/console/logout", data={"csrf": hidden(page, "csrf")},
                                allow_redirects=False) as r:
            assert r.status == 503 and "could not end" in await r.text()

    async def test_a_session_opened_on_one_node_is_known_to_the_other(self, start_gate, pg_dsn):
        """Two nodes on one PostgreSQL database behind a load balancer (one browser, one cookie for the host):
        a login on one is a session on both, and a logout on either ends it on both."""
        first = await start_gate(database=pg_dsn, **WEBHOOK)
        second = await start_gate(database=pg_dsn, **WEBHOOK)
        async with new_session() as browser:
            assert (await login(first.url, browser, ADMIN_TOKEN, label="Ada")).status == 303
            sid = _sid(browser)
            async with browser.get(second.url + "/console/", allow_redirects=False) as r:
                page = await r.text()
                assert r.status == 200 and "Ada" in page
            async with browser.post(second.url + "/console/logout", data={"csrf": hidden(page, "csrf")},
                                    allow_redirects=False) as r:
                assert r.status == 303
        assert (await _home_with(first.url, sid))[0] == 303

    async def test_wrong_tokens_are_limited_per_address_and_a_right_one_is_not_counted(self, console):
        gate, session = console
        for _ in range(FAILED_LOGINS):
            assert (await login(gate.url, session, ADMIN_TOKEN)).status == 303      # successes count for nothing
        for _ in range(FAILED_LOGINS):
            assert (await login(gate.url, session, "not-the-token")).status == 401
        async with session.get(gate.url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/login", allow_redirects=False,
                                data={"csrf": csrf, "label": "Ada", "token": ADMIN_TOKEN}) as r:
            page = await r.text()
            assert r.status == 429 and "Too many wrong tokens" in page
            assert 0 < int(r.headers["Retry-After"]) <= 60
            assert not any(c.startswith("plangate_console=") for c in r.headers.getall("Set-Cookie", []))


    async def test_rotating_a_token_ends_the_console_sessions_it_opened(self, start_gate, pg_dsn):
        """The admin token leaks and someone logs in to the console with it; the operator rotates the token and
        restarts. The session (kept in the store 8 hours, through restarts) opened admin pages and acted for
        them. A session now opens pages only while the token that opened it is still one of its scope's. (Gates
        with other tokens on one PostgreSQL database stand for the restarts, and for nodes rotated one by one.)"""
        first = await start_gate(database=pg_dsn, **WEBHOOK)
        async with new_session() as intruder, new_session() as reader:
            assert (await login(first.url, intruder, ADMIN_TOKEN, label="intruder")).status == 303
            assert (await login(first.url, reader, TOKEN, label="reader")).status == 303
            admin_sid, reader_sid = _sid(intruder), _sid(reader)
        assert (await _home_with(first.url, admin_sid))[0] == 200       # both open before the rotation

        rotated = await start_gate(database=pg_dsn, **{**WEBHOOK, "PLANGATE_ADMIN_TOKEN": "rotated-admin-token-0123456789"})
        assert (await _home_with(rotated.url, admin_sid))[0] == 303      # to the login page
        assert (await _home_with(rotated.url, reader_sid))[0] == 200     # the API token did not change
        async with new_session() as browser:
            async with browser.post(rotated.url + "/console/subjects/alice/transition", cookies={COOKIE: admin_sid},
                                    data={"csrf": "x", "what": "action:close_account", "reason": "r",
                                          "confirm": "yes"}, allow_redirects=False) as r:
                assert r.status == 303
        assert (await rotated.get("/v1/subjects/alice"))[1]["known"] is False
        both = await start_gate(database=pg_dsn, **{**WEBHOOK, "PLANGATE_API_TOKEN": f"new-api-token-0123456789,{TOKEN}"})
        assert (await _home_with(both.url, reader_sid))[0] == 200       # still one of its scope's tokens
        assert (await _home_with(both.url, admin_sid))[0] == 200
        moved = await start_gate(database=pg_dsn, **{**WEBHOOK, "PLANGATE_API_TOKEN": f"{TOKEN},{ADMIN_TOKEN}",
                                    "PLANGATE_ADMIN_TOKEN": "rotated-admin-token-0123456789"})
        assert (await _home_with(moved.url, admin_sid))[0] == 303       # the token is no longer an admin's

    async def test_neither_the_cookie_nor_the_row_lets_a_token_be_tested_offline(self, start_gate, database):
        """A cookie that carried a MAC keyed by the token was a verifier of it: anyone who saw the cookie (a log,
        a HAR file) could try guesses of a human-chosen token at any speed. The cookie is a random id alone; the
        row keeps the token's MAC keyed by that id, which it does not hold (only its SHA-256)."""
        weak = "CompanyAdmin2024!"
        gate = await start_gate(**{**WEBHOOK, "PLANGATE_ADMIN_TOKEN": weak})
        async with new_session() as browser:
            assert (await login(gate.url, browser, weak)).status == 303
            sid = _sid(browser)
        assert len(sid) == 43 and "." not in sid and weak not in sid
        with sqlite3.connect(database) as db:
            (id_hash, token_mac), = db.execute("SELECT id_hash, token_mac FROM console_sessions").fetchall()
        bearer = f"Bearer {weak}".encode()
        assert hmac.new(id_hash.encode(), bearer, hashlib.sha256).hexdigest() != token_mac     # the row alone: no
        assert hmac.new(sid.encode(), bearer, hashlib.sha256).hexdigest() == token_mac         # with the cookie

    async def test_logins_refusals_and_logouts_are_logged_without_secrets(self, console):
        gate, session = console
        with capture_logs() as logs:
            assert (await login(gate.url, session, "not-the-token")).status == 401
            assert (await login(gate.url, session, ADMIN_TOKEN, label="Ada")).status == 303
            async with session.get(gate.url + "/console/") as r:
                csrf = hidden(await r.text(), "csrf")
            async with session.post(gate.url + "/console/logout", data={"csrf": csrf}, allow_redirects=False) as r:
                assert r.status == 303
        lines = [json.loads(line) for line in logs.text.splitlines()]
        events = [(line["event"], line.get("why") or line.get("scope")) for line in lines
                  if line["event"].startswith("console_")]
        assert events == [("console_login_refused", "wrong_token"), ("console_login", "admin"),
                          ("console_logout", None)]
        assert all(line.get("address") == "127.0.0.1" for line in lines if line["event"] != "console_logout")
        assert ADMIN_TOKEN not in logs.text and csrf not in logs.text

    async def test_a_name_with_control_characters_is_refused_as_the_api_refuses_such_an_actor(self, console):
        gate, session = console
        for label in ("Ada\x1b[2K\x1b[1Gadmin-api", "Ada\u202enimda"):
            r = await login(gate.url, session, ADMIN_TOKEN, label=label)
            assert r.status == 400 and "control or formatting" in await r.text()
        assert (await gate.post("/v1/subjects/alice/transition", {"to": "closed", "reason": "x",
                                                                  "actor": "Ada\x1b[2K"}))[0] == 400


def _sid(session) -> str:
    return next(c.value for c in session.cookie_jar if c.key == COOKIE)


async def _home_with(url: str, sid: str) -> tuple[int, str]:
    """The console's home page asked by another browser presenting this session cookie: (status, page)."""
    async with new_session() as other:
        async with other.get(url + "/console/", allow_redirects=False, cookies={COOKIE: sid}) as r:
            return r.status, await r.text()


class TestOperator:
    async def test_find_by_stripe_ids_read_the_timeline_and_act_with_confirmation(self, console):
        gate, session = console
        life = lifecycle()
        await play(gate, life)
        await login(gate.url, session, ADMIN_TOKEN, "Grace Hopper")
        for q in (life.subject, life.customer, life.sub_id("A")):
            async with session.get(gate.url + "/console/find", params={"q": q}, allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == f"/console/subjects/{life.subject}", q
        async with session.get(gate.url + f"/console/subjects/{life.subject}") as r:
            page = await r.text()
        assert '<strong id="status">paid</strong>' in page
        assert "customer.subscription.created" in page and "applied" in page
        assert "limited_free_trial" in page     # the transition out of the first status
        csrf = hidden(page, "csrf")
        url = gate.url + f"/console/subjects/{life.subject}/transition"
        async with session.post(url, data={"csrf": csrf, "what": "action:close_account", "reason": "asked to"}) as r:
            confirm = await r.text()
            assert r.status == 200 and "Confirm" in confirm
        assert (await gate.get(f"/v1/subjects/{life.subject}"))[1]["status"] == "paid"   # nothing done yet
        data = {"csrf": csrf, "what": hidden(confirm, "what"), "reason": hidden(confirm, "reason"),
                "confirm": "yes"}
        async with session.post(url, data=data) as r:
            page = await r.text()
        assert '<strong id="status">closed</strong>' in page
        assert "console:Grace Hopper" in page and "asked to" in page
        view = (await gate.get(f"/v1/subjects/{life.subject}"))[1]
        assert view["transitions"][0]["actor"] == "console:Grace Hopper"

    async def test_the_webhook_log_names_the_plan_file_without_the_gates_directories(self, console):
        """The subject page named the plan file by its name alone; the webhook log's reasons showed its whole path (to
        read-only sessions too)."""
        gate, session = console
        life = lifecycle()
        await play(gate, life)
        await login(gate.url, session, TOKEN, "Reader")
        for path in ("/console/events", f"/console/subjects/{life.subject}"):
            async with session.get(gate.url + path) as r:
                page = await r.text()
            assert r.status == 200 and f"{PLAN.name}:" in page, path
            assert str(PLAN.parent) not in page, path

    @pytest.mark.parametrize("name", [".", ".."])
    async def test_a_subject_named_like_a_step_of_a_path_opens_and_is_acted_on(self, console, name):
        """The API takes `.` and `..` as subject ids, but a browser reads either as a step of an address's path,
        escaped or not: /console/subjects/. opened /console/subjects/ (no page), and the Act form of `..` posted to
        /console/transition. Such a subject is addressed in the query."""
        gate, session = console
        assert (await gate.consume(name, 1))[0] == 200
        await login(gate.url, session, ADMIN_TOKEN, "Ada")
        async with session.get(gate.url + "/console/find", params={"q": name}, allow_redirects=False) as r:
            where = r.headers["Location"]
        assert r.status == 303 and "/./" not in where + "/" and "/../" not in where + "/", where
        async with session.get(gate.url + where) as r:
            page = await r.text()
        assert r.status == 200 and '<strong id="status">limited_free_trial</strong>' in page
        action = re.search(r'<form method="post" action="([^"]+/transition[^"]*)"', page).group(1)
        url = gate.url + html.unescape(action)
        form = {"csrf": hidden(page, "csrf"), "what": "action:close_account", "reason": "asked to"}
        async with session.post(url, data=form) as r:
            confirm = await r.text()
        assert r.status == 200 and "Confirm" in confirm
        async with session.post(url, data={**form, "confirm": "yes"}) as r:
            assert r.status == 200 and '<strong id="status">closed</strong>' in await r.text()
        assert (await gate.app[GATE].store.load(name)).state.status == "closed"

    async def test_usage_of_past_windows_is_charted_beside_the_current_one(self, console):
        gate, session = console
        assert (await gate.consume("alice", 3))[0] == 200       # a free trial: 20 a day
        today = (await gate.get("/v1/subjects/alice"))[1]["usage"][0]["window_start"]
        start = int(datetime.fromisoformat(today).timestamp())
        with sqlite3.connect(gate.database) as db:            # what alice used two days ago, as the gate stored it
            db.execute("INSERT INTO quota_usage (subject, meter, window_start, used) VALUES ('alice', 'requests', "
                       "?, 17)", (start - 2 * 86400,))
        await login(gate.url, session, TOKEN)
        async with session.get(gate.url + "/console/subjects/alice") as r:
            page = await r.text()
        chart = page.split('<svg xmlns="http://www.w3.org/2000/svg" class="usage-history" data-meter="requests"')[1]
        chart = chart.split("</svg>")[0]
        assert chart.count("<rect") == 6                       # five days before today, and today
        assert ">17</text>" in chart and ">3</text>" in chart and "<title>limit 20</title>" in chart
        timeline = page.split('id="timeline"')[1].split("</table>")[0]
        assert timeline.count('<tr class="usage">') == 2 and "<td>17 requests</td>" in timeline

    async def test_unknown_ids_and_bad_input_are_answered_not_failed(self, console):
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        async with session.get(gate.url + "/console/find", params={"q": "cus_nobody"}) as r:
            assert r.status == 404
        async with session.get(gate.url + "/console/subjects/" + "x" * 300) as r:
            assert r.status == 400
        async with session.get(gate.url + "/console/") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/subjects/alice/transition",
                                data={"csrf": csrf, "what": "to:nowhere", "reason": "x"}) as r:
            assert r.status == 400
        async with session.post(gate.url + "/console/subjects/alice/transition",
                                data={"csrf": csrf, "what": "to:closed", "reason": " "}) as r:
            assert r.status == 400


class TestProductOwner:
    async def test_the_plan_page_draws_the_compiled_plan_and_counts_subjects(self, console):
        gate, session = console
        await play(gate, lifecycle())
        await login(gate.url, session, TOKEN)
        async with session.get(gate.url + "/console/plan") as r:
            page = await r.text()
        assert '<svg xmlns="http://www.w3.org/2000/svg" id="plan-diagram"' in page
        for status in ("limited_free_trial", "paid", "grace_period", "closed"):
            assert f'data-status="{status}"' in page
        assert "paid · 1" in page
        assert "starts in limited_free_trial" in page    # plangate explain's words
        # every arrow's triggers, in its tooltip and in the table under the diagram
        table = page.split('<table class="transitions">')[1].split("</table>")[0]
        assert "<tr><td>paid</td><td>grace_period</td><td>stripe:invoice.payment_failed" in table
        assert "<title>stripe:invoice.payment_failed" in page

    async def test_health(self, console):
        gate, session = console
        assert (await gate.check("alice"))[0] == 200
        await login(gate.url, session, TOKEN)
        async with session.get(gate.url + "/console/health") as r:
            page = await r.text()
        assert r.status == 200 and "answers" in page and "fail mode" in page
        assert '<span id="fail-mode-answers">none</span>' in page and '<span id="cache-lookups">' in page
        assert "<span id=\"cache-lookups\">none" not in page


class TestProposedPlan:
    async def test_a_lowered_quota_shows_its_change_and_who_it_touches(self, console):
        gate, session = console
        await play(gate, lifecycle())
        await login(gate.url, session, TOKEN)      # a preview reads only: the read-only console may too
        async with session.get(gate.url + "/console/plan/proposal") as r:
            csrf = hidden(await r.text(), "csrf")
        text = PLAN.read_text(encoding="utf-8")
        lowered = text.replace("requests: {limit: 5000, per: month, anchor: billing}",
                               "requests: {limit: 3000, per: month, anchor: billing}")
        assert lowered != text
        async with session.post(gate.url + "/console/plan/proposal", data={"csrf": csrf, "plan": lowered}) as r:
            page = await r.text()
        assert r.status == 200
        assert "requests quota lowered, 5000 per month from the billing anniversary -&gt; 3000 per month" in page
        assert "1 stored subject(s) in all" in page and "strands no subject" in page
        assert (await gate.get("/v1/plan"))[1]["version"] == gate.app[GATE].table.version

    async def test_one_preview_at_a_time_another_is_told_to_wait(self, console):
        gate, session = console
        await login(gate.url, session, TOKEN)
        async with session.get(gate.url + "/console/plan/proposal") as r:
            csrf = hidden(await r.text(), "csrf")
        data = {"csrf": csrf, "plan": PLAN.read_text(encoding="utf-8")}
        async with gate.app[PREVIEWING]:      # a preview being computed, as another request would hold it
            async with session.post(gate.url + "/console/plan/proposal", data=data) as r:
                page = await r.text()
                assert r.status == 503 and "Another preview" in page and r.headers["Retry-After"] == "5"
        async with session.post(gate.url + "/console/plan/proposal", data=data) as r:
            assert r.status == 200 and "strands no subject" in await r.text()

    async def test_decisions_go_on_while_a_long_preview_is_computed(self, console):
        """A proposed plan of 1200 transitions takes seconds to check (every pair of them is compared): on the
        loop, every check waited for it, and the read-only token may preview. A check sent (from a thread of its
        own, by the clock) while the preview runs is answered in far less than the preview takes."""
        gate, session = console
        await login(gate.url, session, TOKEN)
        async with session.get(gate.url + "/console/plan/proposal") as r:
            csrf = hidden(await r.text(), "csrf")
        many = "".join(f"  - from: any\n    on: stripe:customer.subscription.updated\n    when: {{quantity: {i}}}\n"
                       "    to: paid\n" for i in range(1200))
        data = {"csrf": csrf, "plan": PLAN.read_text(encoding="utf-8").rstrip("\n") + "\n" + many}
        sent = threading.Event()

        def check_meanwhile() -> float:
            sent.wait(10)
            time.sleep(0.3)         # the preview is under way
            request = urllib.request.Request(gate.url + "/v1/check", method="POST", data=json.dumps(
                {"subject": "alice", "meter": "requests"}).encode(), headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            t0 = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.status == 200
            return time.perf_counter() - t0
        checking = asyncio.ensure_future(asyncio.to_thread(check_meanwhile))
        t0 = time.perf_counter()
        sent.set()
        async with session.post(gate.url + "/console/plan/proposal", data=data) as r:
            assert r.status == 200 and "quantity" in await r.text()
        took = time.perf_counter() - t0
        waited = await checking
        assert took > 1.0 and waited < took / 3, (waited, took)

    async def test_a_broken_plan_shows_its_findings(self, console):
        gate, session = console
        await login(gate.url, session, ADMIN_TOKEN)
        async with session.get(gate.url + "/console/plan/proposal") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/plan/proposal", data={"csrf": csrf, "plan": "statuses: [}"}) as r:
            page = await r.text()
        assert r.status == 200 and "proposed.yaml:1" in page and "has errors" in page
        async with session.post(gate.url + "/console/plan/proposal", data={"plan": "x"}) as r:
            assert r.status == 403


def _gate_on(store, tmp_path) -> Gate:
    return Gate(config_for(str(tmp_path / "unused.sqlite3")), compile_file(PLAN), store, Metrics())


class TestBounds:
    """Sessions and failures on their own clock: what the routes above cannot wait hours for."""

    async def test_expired_sessions_go_before_live_ones(self, monkeypatch, store, tmp_path):
        monkeypatch.setattr(_session, "MAX_SESSIONS", 3)
        now = [0.0]
        sessions = _session.Sessions(_gate_on(store, tmp_path), *BEARERS, clock=lambda: now[0])
        old, _ = await sessions.open("old", False, API)
        now[0] = _session.LIFETIME - 1
        live, _ = await sessions.open("live", False, API)
        now[0] = _session.LIFETIME + 1      # old has expired, live has not
        newest, _ = await sessions.open("new", False, API)
        assert await sessions.get(live) is not None and await sessions.get(newest) is not None
        assert await sessions.get(old) is None
        assert await store.console_session(_session._hashed(old)) is None     # gone, not only expired
        now[0] += 1
        await sessions.open("fourth", False, API)            # three now: live still there
        assert await sessions.get(live) is not None
        now[0] += 1
        await sessions.open("fifth", False, API)             # the oldest goes
        assert await sessions.get(live) is None and await sessions.get(newest) is not None

    async def test_the_store_holds_a_hash_of_the_id_and_a_session_ends_once(self, store, tmp_path):
        sessions = _session.Sessions(_gate_on(store, tmp_path), *BEARERS)
        sid, opened = await sessions.open("Ada", True, ADMIN)
        assert await store.console_session(sid) is None
        stored = await store.console_session(_session._hashed(sid))
        assert stored == opened and stored.admin and stored.label == "Ada"
        again, _ = await sessions.open("Ada", True, ADMIN, replacing=sid)
        assert await sessions.get(sid) is None and await sessions.get(again) is not None
        await sessions.close(again)
        assert await sessions.get(again) is None

    def test_failures_are_forgotten_after_their_window_and_addresses_are_bounded(self, monkeypatch):
        monkeypatch.setattr(_session, "MAX_ADDRESSES", 3)
        now = [0.0]
        failed = _session.FailedLogins(clock=lambda: now[0])
        for _ in range(FAILED_LOGINS):
            failed.failed("10.0.0.1")
        assert failed.wait("10.0.0.1") == 60 and failed.wait("10.0.0.2") == 0
        now[0] = _session.FAILED_WINDOW
        assert failed.wait("10.0.0.1") == 0
        for n in range(10):
            failed.failed(f"10.0.1.{n}")
        assert len(failed._by_address) == 3


async def test_what_no_field_takes_is_a_400_not_a_store_error(start_gate, pg_dsn):
    """A NUL in any console field (PostgreSQL stores none) failed as a store error: a 503 page and a false alarm
    in the metrics. A reason longer than the API takes (200) was stored cut at 500."""
    gate = await start_gate(database=pg_dsn, **WEBHOOK)
    async with new_session() as session:
        async with session.get(gate.url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        async with session.post(gate.url + "/console/login",
                                data={"csrf": csrf, "label": "Ada\x00", "token": ADMIN_TOKEN}) as r:
            assert r.status == 400 and "NUL" in await r.text()
        await login(gate.url, session, ADMIN_TOKEN)
        async with session.get(gate.url + "/console/subjects/alice") as r:
            csrf = hidden(await r.text(), "csrf")
        for reason in ("because\x00", "x" * 201):
            async with session.post(gate.url + "/console/subjects/alice/transition",
                                    data={"what": "to:closed", "reason": reason, "confirm": "yes", "csrf": csrf}) as r:
                assert r.status == 400, reason
        for path in ("/console/find?q=cus_%00", "/console/events?type=a%00b"):
            async with session.get(gate.url + path) as r:
                assert r.status == 400 and "NUL" in await r.text(), path
        async with session.get(gate.url + "/console/events?before=1%7C%00") as r:   # was a 503 and a store error
            assert r.status == 400 and "cursor" in await r.text()
    assert (await gate.get("/v1/subjects/alice"))[1]["known"] is False
    async with gate.session.get(gate.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert "plangate_store_errors_total{" not in await r.text()


class TestBehindAProxy:
    async def _login(self, url: str, browser, token: str, forwarded: str) -> int:
        async with browser.get(url + "/console/login") as r:
            csrf = hidden(await r.text(), "csrf")
        async with browser.post(url + "/console/login", data={"csrf": csrf, "label": "Ada", "token": token},
                                headers={"X-Forwarded-For": forwarded}, allow_redirects=False) as r:
            return r.status

    async def test_wrong_tokens_count_by_the_address_a_trusted_proxy_saw(self, start_gate):
        """Behind a reverse proxy every browser came from the proxy's address: ten wrong tokens from anyone
        locked every operator out for the minute. With the proxy trusted, the limit counts by the address it
        forwarded: the right-most X-Forwarded-For hop that is not a trusted proxy (what a client writes to the
        left of it cannot move it)."""
        gate = await start_gate(**WEBHOOK, PLANGATE_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8")
        async with new_session() as attacker, new_session() as operator:
            for n in range(FAILED_LOGINS):      # each claims another origin to the left: only the last hop counts
                assert await self._login(gate.url, attacker, "not-the-token", f"198.51.100.{n}, 203.0.113.9") == 401
            assert await self._login(gate.url, attacker, ADMIN_TOKEN, "203.0.113.9, 10.1.2.3") == 429
            assert await self._login(gate.url, operator, ADMIN_TOKEN, "192.0.2.44") == 303
        with capture_logs() as logs:
            async with new_session() as someone:
                await self._login(gate.url, someone, "wrong-again", "192.0.2.45, 10.9.9.9")
        assert json.loads(logs.text.splitlines()[-1])["address"] == "192.0.2.45"

    @pytest.mark.parametrize("hop, counted", [
        ("203.0.113.9:{port}", "203.0.113.9"), ("[2001:db8::7]:{port}", "2001:db8::7"),
        ("::ffff:203.0.113.9", "203.0.113.9"), ("unknown", "127.0.0.1"),
    ])
    async def test_a_hop_counts_by_its_address_whatever_its_port(self, start_gate, hop, counted):
        """A proxy that writes the client's port with its address made each new connection another "address":
        the limit never came. A hop that is no address leaves the proxy's own, which everyone shares."""
        gate = await start_gate(**WEBHOOK, PLANGATE_TRUSTED_PROXIES="127.0.0.1")
        with capture_logs() as logs:
            async with new_session() as attacker:
                for n in range(FAILED_LOGINS):
                    assert await self._login(gate.url, attacker, "not-the-token", hop.format(port=40000 + n)) == 401
                assert await self._login(gate.url, attacker, ADMIN_TOKEN, hop.format(port=41000)) == 429
        addresses = {json.loads(line).get("address") for line in logs.text.splitlines()}
        assert addresses == {counted}

    async def test_an_ipv6_client_is_limited_by_its_64_and_a_mapped_proxy_address_is_the_proxy(self, start_gate):
        """Any IPv6 client holds a whole /64: counted by address, it had ten tries for each of them. A trusted
        proxy written in IPv4-mapped form (::ffff:127.0.0.1) is the proxy all the same."""
        gate = await start_gate(**WEBHOOK, PLANGATE_TRUSTED_PROXIES="::ffff:127.0.0.1")
        async with new_session() as attacker, new_session() as neighbour:
            for n in range(FAILED_LOGINS):
                hop = f"[2001:db8:0:7::{n + 1:x}%eth0]:{40000 + n}"
                assert await self._login(gate.url, attacker, "not-the-token", hop) == 401
            assert await self._login(gate.url, attacker, ADMIN_TOKEN, "2001:db8:0:7::ffff") == 429
            assert await self._login(gate.url, neighbour, ADMIN_TOKEN, "2001:db8:0:8::1") == 303

    async def test_without_trusted_proxies_the_header_is_not_believed(self, start_gate):
        gate = await start_gate(**WEBHOOK)
        async with new_session() as browser:
            for n in range(FAILED_LOGINS):
                assert await self._login(gate.url, browser, "not-the-token", f"198.51.100.{n}") == 401
            assert await self._login(gate.url, browser, ADMIN_TOKEN, "192.0.2.44") == 429

    def test_a_trusted_proxy_that_is_no_address_is_a_setting_error(self):
        with pytest.raises(ConfigError, match="PLANGATE_TRUSTED_PROXIES: 'proxy.internal' is not an IP address"):
            config_for("x.sqlite3", PLANGATE_TRUSTED_PROXIES="10.0.0.1, proxy.internal")


def test_a_rules_file_is_named_without_its_directories_and_nothing_else_is_touched():
    from plangate.server.console._html import e, without_directories
    running = "/srv/plan gate/plans.yaml"      # the gate's own file, whose directories hold a space
    text = e(f"on x ({running}:157 transitions[2]); before ({'/srv/old/plans.yaml'}:9 statuses.paid)")
    assert without_directories(text, running) == "on x (plans.yaml:157 transitions[2]); before (plans.yaml:9 statuses.paid)"
    # not a rule's place: a subject id, a reason's text
    for kept in ("subject acme/eu/cfg.yaml:1 asked", "see /etc/app/conf.yaml:3 for why"):
        assert without_directories(e(kept)) == e(kept)
