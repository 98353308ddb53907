"""Soak: a bounded run of mixed traffic against a real `plangate serve` process, watching for what only time
shows: memory that grows, descriptors (connections, files) that leak, answers that start failing.

Traffic, from several concurrent clients over keep-alive connections (and a share of one-request connections, so
that connection churn would show a leak): checks, consumes (some repeated with their idempotency key), usage
reports, signed Stripe webhooks (subscriptions starting, renewing, failing, ending; repeats; types the plan does
not use), admin transitions, subject views, and now and then a sweep.

PLANGATE_SOAK_SECONDS sets the length (30 s in the suite; for a real soak run it for minutes, e.g.
`PLANGATE_SOAK_SECONDS=600 .venv/bin/pytest tests/e2e/test_soak.py -s`). After a warm-up the gate's RSS
(/proc/<pid>/status VmRSS) and open descriptors (/proc/<pid>/fd) are taken; at the end, with every client gone,
they are taken again: RSS may grow by less than PLANGATE_SOAK_RSS_GROWTH_MB (30 MiB) and less than half, the
descriptors must be back within 2 of the start. Every answer must be a 200. Figures are printed (pytest -s).
"""
from __future__ import annotations

import asyncio
import itertools
import os
import random
import time

import aiohttp
import pytest

from plangate.server.logs import parse_lines
from tests.server import stripe_events as se
from tests.server.conftest import ADMIN_TOKEN, BASE_ENV, TOKEN, GateProcess

from ._local import QUIET, open_fds, percentile, rss_kib

SECONDS = float(os.environ.get("PLANGATE_SOAK_SECONDS", "30"))
WARM_UP = min(5.0, max(1.0, SECONDS / 6))
RSS_GROWTH_KIB = float(os.environ.get("PLANGATE_SOAK_RSS_GROWTH_MB", "30")) * 1024
FD_MARGIN = 2
CLIENTS = 6
SUBJECTS = [f"soak-{i}" for i in range(400)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
UNUSED = ["charge.captured", "customer.updated", "payment_intent.created", "invoice.finalized"]


class Traffic:
    def __init__(self, url: str, seed: int):
        self.url = url
        self.rng = random.Random(seed)
        self.serial = itertools.count()
        self.statuses: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.sent_events: list[bytes] = []
        self.jobs: list[dict] = []

    def _note(self, kind: str, status: int, took: float, detail: str = "") -> None:
        self.statuses[(kind, status)] = self.statuses.get((kind, status), 0) + 1
        self.latency.setdefault(kind, []).append(took * 1000)
        if status != 200 and len(self.failures) < 20:
            self.failures.append(f"{kind} {status} {detail[:200]}")

    async def _call(self, session, kind: str, method: str, path: str, **kw) -> None:
        t0 = time.perf_counter()
        try:
            async with session.request(method, self.url + path, **kw) as r:
                text = await r.text()
                self._note(kind, r.status, time.perf_counter() - t0, text)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._note(kind, 0, time.perf_counter() - t0, repr(exc))

    def _event(self) -> tuple[bytes, str]:
        rng, n = self.rng, next(self.serial)
        subject = rng.choice(SUBJECTS)
        i = SUBJECTS.index(subject)
        cus, sub = f"cus_soak_{i}", f"sub_soak_{i}"
        now = time.time()
        pick = rng.random()
        if pick < 0.1 and self.sent_events:
            body = rng.choice(self.sent_events[-200:])               # Stripe delivering again
            return body, se.sign(body)
        if pick < 0.25:
            evt = se.event(rng.choice(UNUSED), {"id": f"ch_{n}", "object": "charge", "customer": cus}, now)
        elif pick < 0.4:
            evt = se.event("checkout.session.completed", se.checkout(subject, cus, sub), now)
        elif pick < 0.6:
            evt = se.event(rng.choice(["customer.subscription.created", "customer.subscription.updated"]),
                           se.subscription(rng.choice(["active", "trialing", "past_due"]), subject, sub_id=sub,
                                           customer=cus, start=now - 86400, end=now + 29 * 86400), now)
        elif pick < 0.9:
            evt = se.event(rng.choice(["invoice.paid", "invoice.payment_failed"]),
                           se.invoice(rng.choice(["paid", "open"]), sub_id=sub, customer=cus, inv_id=f"in_{n}",
                                      period_end=now + 29 * 86400), now)
        else:
            evt = se.event("customer.subscription.deleted", se.subscription("canceled", subject, sub_id=sub,
                                                                            customer=cus), now)
        body = se.encode(evt)
        self.sent_events.append(body)
        del self.sent_events[:-1000]
        return body, se.sign(body)

    async def one(self, session) -> None:
        rng = self.rng
        subject = rng.choice(SUBJECTS)
        pick = rng.random()
        n = next(self.serial)
        decision = {"subject": subject, "meter": "requests", "amount": rng.randint(1, 3)}
        if pick < 0.40:
            await self._call(session, "check", "POST", "/v1/check", json=decision, headers=AUTH)
        elif pick < 0.62:
            if self.jobs and rng.random() < 0.1:                    # a retry of an earlier job, as it was sent
                body = rng.choice(self.jobs)
            else:
                body = {**decision, "amount": 1, "idempotency_key": f"job-{n}"}
                self.jobs.append(body)
                del self.jobs[:-1000]
            await self._call(session, "consume", "POST", "/v1/consume", headers=AUTH, json=body)
        elif pick < 0.72:
            await self._call(session, "usage", "POST", "/v1/usage", headers=AUTH,
                             json={**decision, "amount": 1, "idempotency_key": f"ran-{n}"})
        elif pick < 0.84:
            body, signature = self._event()
            await self._call(session, "webhook", "POST", "/webhook/stripe", data=body,
                             headers={"Stripe-Signature": signature, "Content-Type": "application/json"})
        elif pick < 0.89:
            change = rng.choice([{"to": "paid"}, {"to": "limited_free_trial"}, {"action": "restart_free_trial"},
                                 {"to": "grace_period"}, {"action": "close_account"}])
            await self._call(session, "transition", "POST", f"/v1/subjects/{subject}/transition", headers=ADMIN,
                             json={**change, "reason": "soak", "actor": "soak"})
        elif pick < 0.998:
            await self._call(session, "view", "GET", f"/v1/subjects/{subject}", headers=AUTH)
        else:
            await self._call(session, "sweep", "POST", "/v1/jobs/sweep", headers=ADMIN)

    async def client(self, until: float) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < until:
                if self.rng.random() < 0.03:                           # a client with one request per connection
                    async with aiohttp.ClientSession(timeout=timeout,
                                                     connector=aiohttp.TCPConnector(force_close=True)) as once:
                        await self.one(once)
                else:
                    await self.one(session)
                await asyncio.sleep(0.001)

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self.client(until) for _ in range(CLIENTS)))


async def settled_fds(pid: int, target: int, timeout: float = 10.0) -> dict[str, int]:
    """The gate's descriptors once closed connections are gone (a peer's close takes a moment to be seen)."""
    deadline = time.monotonic() + timeout
    while True:
        fds = open_fds(pid)
        if sum(fds.values()) <= target or time.monotonic() > deadline:
            return fds
        await asyncio.sleep(0.2)


@pytest.fixture
def soak_gate(tmp_path):
    gate = GateProcess({**BASE_ENV, **QUIET, "PLANGATE_DATABASE": str(tmp_path / "soak.sqlite3"),
                        "PLANGATE_LOG_LEVEL": "WARNING"}, tmp_path)
    yield gate
    code, _, err = gate.stop()
    assert code == 0, err
    # Every line of its stderr is a log line (a traceback printed raw fails here), and none is an error.
    errors = [e for e in parse_lines(err) if e["level"] in ("error", "critical")]
    assert not errors, errors[:20]


async def test_soak_mixed_traffic_memory_flat_no_errors_no_leaks(soak_gate):
    pid = soak_gate.proc.pid
    idle_fds = open_fds(pid)
    traffic = Traffic(soak_gate.url, seed=7)
    await traffic.run(WARM_UP)
    await settled_fds(pid, sum(idle_fds.values()))
    rss_start, fds_start = rss_kib(pid), open_fds(pid)

    samples = [rss_start]
    sampling = True

    async def sample_rss():
        while sampling:
            await asyncio.sleep(max(1.0, SECONDS / 10))
            samples.append(rss_kib(pid))

    sampler = asyncio.ensure_future(sample_rss())
    started = time.perf_counter()
    await traffic.run(SECONDS)
    took = time.perf_counter() - started
    sampling = False
    sampler.cancel()
    fds_end = await settled_fds(pid, sum(fds_start.values()))      # waits (10 s at most) for closes to be seen
    rss_end = rss_kib(pid)

    total = sum(traffic.statuses.values())
    print(f"\nsoak: {took:.1f} s after {WARM_UP:.0f} s warm-up, {total} requests ({total / took:.0f}/s), "
          f"{CLIENTS} clients")
    for kind in sorted(traffic.latency):
        ms = traffic.latency[kind]
        count = {s: c for (k, s), c in traffic.statuses.items() if k == kind}
        print(f"  {kind:10} n={len(ms):6} p50={percentile(ms, 50):6.2f} ms p99={percentile(ms, 99):7.2f} ms "
              f"statuses={count}")
    print(f"  RSS start {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
          f"(growth {(rss_end - rss_start) / 1024:+.1f} MiB); samples MiB: "
          f"{[round(s / 1024, 1) for s in samples + [rss_end]]}")
    print(f"  descriptors idle {idle_fds}, start {fds_start}, end {fds_end}")

    assert not traffic.failures, traffic.failures
    assert all(status == 200 for _, status in traffic.statuses)
    assert total > SECONDS * 50, "the soak sent too little traffic to mean anything"
    assert rss_end - rss_start < RSS_GROWTH_KIB, (rss_start, rss_end)
    assert rss_end < rss_start * 1.5, (rss_start, rss_end)
    assert sum(fds_end.values()) <= sum(fds_start.values()) + FD_MARGIN, (fds_start, fds_end)
    assert fds_end.get("socket", 0) <= fds_start.get("socket", 0) + FD_MARGIN, (fds_start, fds_end)
