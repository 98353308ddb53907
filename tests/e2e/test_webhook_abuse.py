"""POST /webhook/stripe abused, on a real `plangate serve` process: replayed signatures, huge bodies (with and
without Content-Length), slow clients, floods of event types the plan does not use. Each is refused or ignored
cheaply, nothing reaches subscription_events, and meanwhile /v1/check keeps its latency.

The latency is measured by a probe in a process of its own (tests/e2e/_probe.py: one keep-alive connection, a
check every 2 ms). Its goal, p99 under 5 ms, is held by bench/webhook_abuse.py (speed targets live in benchmarks,
not in timed tests); the bound here only catches a gate that stalls, PLANGATE_ABUSE_P99_MS (default 50 ms), and
every figure is printed (pytest -s shows them).
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time

import aiohttp
import pytest

import plangate.server.http._input
import plangate.server.http.webhook
from plangate.server.logs import parse_lines
from plangate.server.stripe.objects import FACT_EVENTS
from tests.server import stripe_events as se
from tests.server.conftest import BASE_ENV, TOKEN, GateProcess

from ._abuse import UNUSED, chunked_until_answered, declared_huge, head, raw, status_line
from ._local import QUIET, CheckLatency, deliver, metrics, sample

P99_BOUND_MS = float(os.environ.get("PLANGATE_ABUSE_P99_MS", "50"))
MAX_BYTES = 65_536


@pytest.fixture
def abused(tmp_path):
    """A `plangate serve` process with a 64 KiB webhook limit; stopped at the end, its log free of errors."""
    gate = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(tmp_path / "abuse.sqlite3"),
                        "PLANGATE_WEBHOOK_MAX_BYTES": str(MAX_BYTES)}, tmp_path)
    gate.database = str(tmp_path / "abuse.sqlite3")
    yield gate
    code, _, err = gate.stop()
    assert code == 0, err
    assert [e for e in parse_lines(err) if e["level"] == "error"] == [], err


@pytest.fixture
async def session():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=16)) as s:
        yield s


def stored_events(database: str) -> int:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT COUNT(*) FROM subscription_events").fetchone()[0]


async def gate_metrics(session, url: str):
    async with session.get(url + "/metrics") as r:
        text = await r.text()

    class _G:                           # _local.metrics wants something with .get
        async def get(self, path, token=None):
            return 200, text
    return await metrics(_G())


def held(probe: CheckLatency) -> None:
    print("\n" + probe.summary())
    assert probe.errors == 0
    assert len(probe.ms) >= 50, probe.summary()
    assert probe.p99() < P99_BOUND_MS, probe.summary()


async def test_idle_latency_baseline(abused):
    """The figure the others compare with: the same probe against the same idle gate."""
    async with CheckLatency(abused.url, "idle") as probe:
        await asyncio.sleep(1.5)
    held(probe)


async def test_replayed_signatures_are_refused_and_repeats_change_nothing(abused, session):
    subject = "replay-user"
    evt = se.event("checkout.session.completed", se.checkout(subject, "cus_r", "sub_r"), time.time(), "evt_replay")
    body = se.encode(evt)
    fresh = se.sign(body)
    async with session.post(abused.url + "/webhook/stripe", data=body, headers={"Stripe-Signature": fresh}) as r:
        assert (r.status, (await r.json())["outcome"]) == (200, "applied")
    assert stored_events(abused.database) == 1

    async def send(payload: bytes, signature: str) -> tuple[int, str]:
        async with session.post(abused.url + "/webhook/stripe", data=payload,
                                headers={"Stripe-Signature": signature}) as r:
            answer = await r.json()
            return r.status, answer.get("outcome") or answer.get("error")

    # Old signatures: valid HMACs, timestamps past the 300 s tolerance: the body of the applied event, and new
    # events an attacker could have recorded long ago (one would move another subject to paid).
    old = []
    for i in range(600):
        ts = int(time.time()) - 301 - i * 137
        if i % 2:
            old.append((body, se.sign(body, timestamp=ts)))
        else:
            other = se.encode(se.event("customer.subscription.created",
                                       se.subscription("active", f"victim-{i}", sub_id=f"sub_v{i}",
                                                       customer=f"cus_v{i}"), ts, f"evt_old_{i}"))
            old.append((other, se.sign(other, timestamp=ts)))
    # Fresh repeats: the same delivery again and again (a replay inside the tolerance).
    repeats = [(body, fresh)] * 300
    started = time.perf_counter()
    async with CheckLatency(abused.url, "under 600 expired signatures and 300 repeats") as probe:
        answers = await asyncio.gather(*(send(p, s) for p, s in old + repeats))
    took = time.perf_counter() - started
    held(probe)
    print(f"replays: {len(answers)} answered in {took:.2f} s ({len(answers) / took:.0f}/s)")
    assert answers[:600] == [(400, "signature_invalid")] * 600
    assert answers[600:] == [(200, "duplicate")] * 300
    assert stored_events(abused.database) == 1
    found = await gate_metrics(session, abused.url)
    assert sample(found, "plangate_webhooks_total", outcome="signature_invalid") == 600
    auth = {"Authorization": f"Bearer {BASE_ENV['PLANGATE_API_TOKEN']}"}
    async with session.get(abused.url + "/v1/subjects/victim-0", headers=auth) as r:
        view = await r.json()
    assert (view["known"], view["status"]) == (False, "limited_free_trial")


async def test_huge_bodies_are_refused_before_they_are_read(abused, session):
    # Content-Length over the limit: the answer comes at once, the body is never waited for.
    reader, writer = await raw(abused.url, head(50_000_000))
    writer.write(b"{" * 1024)
    t0 = time.perf_counter()
    assert await status_line(reader, 5) == 413
    print(f"\n413 for a declared 50 MB body after {1000 * (time.perf_counter() - t0):.1f} ms")
    # ...and the connection closed at once: not held open (a task, a socket, a timer each) for aiohttp's 10 s
    # of lingering, reading and dropping the rest of a body the client will never send.
    try:
        rest = await asyncio.wait_for(reader.read(), 3)
    except ConnectionResetError:
        # The gate closed with the unread body in its buffer, so the kernel reset the connection, which may
        # overtake the answer's last segment (seen under load on Python 3.13): closed at once all the same.
        rest = None
    assert rest is None or b'"body_too_large"' in rest
    writer.close()

    # No Content-Length (chunked, never ending): the gate reads up to its limit, answers, and stops reading.
    reader, writer = await raw(abused.url, head(None, chunked=True))
    answer = asyncio.ensure_future(status_line(reader, 10))
    sent, chunk = 0, b"[" * 16_384
    try:
        while not answer.done() and sent < 8_000_000:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0.001)                       # drain() need not yield: let the answer in
    except (ConnectionError, OSError):
        pass                                                  # the gate closed the connection: also a refusal
    assert await answer == 413
    print(f"413 for a chunked body without end after {sent} bytes written by the client")
    writer.close()

    # A plain client with a body just over the limit, validly signed: refused before the signature is looked at.
    big = se.event("invoice.paid", {**se.invoice("paid"), "padding": "x" * MAX_BYTES}, time.time())
    status, answer = await deliver(session, abused.url, big)
    assert (status, answer["error"]) == (413, "body_too_large")

    async with CheckLatency(abused.url, "under 400 huge bodies") as probe:
        statuses = []
        for _ in range(20):     # chunked: 40 x 4 KiB = 160 KiB, over the 64 KiB limit
            statuses += await asyncio.gather(*[declared_huge(abused.url) for _ in range(10)],
                                             *[chunked_until_answered(abused.url, 40) for _ in range(10)])
    held(probe)
    assert statuses == [413] * 400
    assert stored_events(abused.database) == 0
    found = await gate_metrics(session, abused.url)
    assert sample(found, "plangate_webhooks_total", outcome="too_large") == 403


async def test_slow_clients_hold_up_nobody(abused, session):
    """Fifty clients trickle a webhook body in, a byte every 100 ms: the gate keeps answering everyone else."""
    evt = se.encode(se.event("checkout.session.completed", se.checkout("slow-user"), time.time()))
    signature = se.sign(evt)
    conns = [await raw(abused.url, head(len(evt), signature)) for _ in range(50)]
    async with CheckLatency(abused.url, "beside 50 slow clients") as probe:
        for i in range(30):
            for _, writer in conns:
                writer.write(evt[i:i + 1])
            await asyncio.sleep(0.1)
    held(probe)
    for reader, writer in conns:
        assert not reader.at_eof()                            # still waiting for their bodies, not answered yet
        writer.close()
    status, answer = await deliver(session, abused.url, se.event("checkout.session.completed",
                                                                se.checkout("fast-user"), time.time()))
    assert (status, answer["outcome"]) == (200, "applied")
    assert stored_events(abused.database) == 1                # the fast one only


async def test_a_body_that_never_arrives_is_cut_off(local_gate, tmp_path, monkeypatch):
    """The bound on a slow client: after BODY_TIMEOUT (10 s; 0.5 s here) it gets a 408 and nothing is read."""
    monkeypatch.setattr(plangate.server.http.webhook, "BODY_TIMEOUT", 0.5)
    gate = await local_gate(str(tmp_path / "gate.sqlite3"))
    evt = se.encode(se.event("checkout.session.completed", se.checkout("slow-user"), time.time()))
    reader, writer = await raw(gate.url, head(len(evt), se.sign(evt)))
    writer.write(evt[:100])
    t0 = time.perf_counter()
    assert await status_line(reader, 5) == 408
    assert 0.4 < time.perf_counter() - t0 < 3
    writer.close()
    assert stored_events(gate.database) == 0
    found = await metrics(gate)
    assert sample(found, "plangate_webhooks_total", outcome="body_timeout") == 1


async def test_slow_or_silent_headers_are_cut_off(tmp_path):
    """A connection that sends no complete request within PLANGATE_IDLE_TIMEOUT (1 s here) is closed: one that
    trickles its headers in, a byte every 100 ms, and one that sends nothing."""
    gate = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(tmp_path / "idle.sqlite3"),
                        "PLANGATE_IDLE_TIMEOUT": "1"}, tmp_path)
    try:
        trickle = head(100, se.sign(b"{}")).encode()
        slow_reader, slow_writer = await raw(gate.url, "")
        silent_reader, silent_writer = await raw(gate.url, "")
        t0 = time.perf_counter()
        for i in range(len(trickle)):
            if slow_reader.at_eof() or slow_writer.is_closing():
                break
            try:
                slow_writer.write(trickle[i:i + 1])
                await slow_writer.drain()
            except ConnectionError:
                break
            await asyncio.sleep(0.1)
            if time.perf_counter() - t0 > 1.5 and await _closed(slow_reader):
                break
        cut = time.perf_counter() - t0
        assert await _closed(slow_reader) and 0.9 < cut < 5, cut
        assert await _closed(silent_reader)
        for w in (slow_writer, silent_writer):
            w.close()
    finally:
        code, _, err = gate.stop()
    assert code == 0, err


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True when the gate closed the connection (end of stream, with no answer sent)."""
    try:
        data = await asyncio.wait_for(reader.read(1024), 0.05)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    assert data == b"", data
    return True


async def test_a_flood_of_unused_event_types_is_ignored_cheaply(abused, session):
    """Thousands of validly signed events of types the plan does not use: each answered `ignored` without
    touching the store."""
    async with session.get(abused.url + "/readyz") as r:
        assert r.status == 200
    relevant = FACT_EVENTS | {"checkout.session.completed"}
    assert not set(UNUSED) & relevant
    n = 3000
    bodies = []
    for i in range(n):
        evt = se.event(UNUSED[i % len(UNUSED)], {"id": f"obj_{i}", "object": "charge", "customer": f"cus_{i}",
                                                  "metadata": {"plangate_subject": f"flood-{i}"}}, time.time(),
                       f"evt_flood_{i}")
        body = se.encode(evt)
        bodies.append((body, se.sign(body)))

    async def send(body: bytes, signature: str) -> str:
        async with session.post(abused.url + "/webhook/stripe", data=body,
                                headers={"Stripe-Signature": signature}) as r:
            assert r.status == 200
            return (await r.json())["outcome"]

    started = time.perf_counter()
    async with CheckLatency(abused.url, f"under a flood of {n} unused event types") as probe:
        outcomes = await asyncio.gather(*(send(b, s) for b, s in bodies))
    took = time.perf_counter() - started
    held(probe)
    print(f"flood: {n} events answered in {took:.2f} s ({n / took:.0f}/s)")
    assert outcomes == ["ignored"] * n
    assert stored_events(abused.database) == 0
    found = await gate_metrics(session, abused.url)
    assert sample(found, "plangate_webhooks_total", outcome="ignored") == n
    assert sum(v for (name, _), v in found.items() if name == "plangate_store_errors_total") == 0


async def test_a_signed_body_nested_too_deeply_is_refused(local_gate, tmp_path):
    gate = await local_gate(str(tmp_path / "gate.sqlite3"))
    body = b"[" * 100_000 + b"]" * 100_000
    async with gate.session.post(gate.url + "/webhook/stripe", data=body,
                                 headers={"Stripe-Signature": se.sign(body)}) as r:
        answer = json.loads(await r.text())
    assert (r.status, answer["error"]) == (400, "invalid_event")


@pytest.mark.parametrize("path, content_type", [("/v1/check", "application/json"),
                                                ("/console/login", "application/x-www-form-urlencoded")])
async def test_a_body_trickled_into_the_api_or_the_console_is_cut_off(local_gate, tmp_path, monkeypatch, path,
                                                                      content_type):
    """A body sent a byte at a time held a task and a connection for as long as the client kept it up (the
    console's login form needs no token): after BODY_TIMEOUT (10 s; 0.5 s here) a 408, as for the webhook."""
    monkeypatch.setattr(plangate.server.http._input, "BODY_TIMEOUT", 0.5)
    gate = await local_gate(str(tmp_path / "gate.sqlite3"))
    body = b'{"subject": "slow", "meter": "requests"}' if path == "/v1/check" else b"label=a&token=b&csrf=c"
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", f"Authorization: Bearer {TOKEN}"]
    reader, writer = await raw(gate.url, "\r\n".join(lines) + "\r\n\r\n")
    writer.write(body[:5])
    t0 = time.perf_counter()
    assert await status_line(reader, 5) == 408
    assert 0.4 < time.perf_counter() - t0 < 3
    writer.close()
