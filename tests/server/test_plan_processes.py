"""Plan changes in real `plangate serve` processes: a start refused on a plan that strands stored subjects,
SIGHUP reloads, and two nodes on one PostgreSQL switching together."""
from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp

from tests import postgres
from tests.plan_change import V1, WITHOUT_BILLING_PROBLEM, edited, lowered_pro, renamed

from .conftest import BASE_ENV, GateProcess
from .test_multinode import nodes  # noqa: F401 - the fixture
from .test_local_decisions import _Relay
from .test_process import AUTH, PLANGATE, post, run


async def get(url: str, path: str) -> tuple[int, object]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        async with s.get(url + path, headers=AUTH) as r:
            text = await r.text()
            return r.status, json.loads(text) if r.content_type == "application/json" else text


async def moved_by(url: str) -> float:
    """Subjects the node at url moved to a plan's new names (its plangate_plan_moved_subjects counter)."""
    _, metrics = await get(url, "/metrics")
    found = [line for line in metrics.splitlines() if line.startswith("plangate_plan_moved_subjects_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in found)


async def plan_version(url: str) -> str:
    _, ready = await get(url, "/readyz")
    return ready["checks"]["plan"]["version"]


class TestStart:
    def test_serve_refuses_a_plan_that_strands_stored_subjects(self, tmp_path, gate_process):
        plan = tmp_path / "plans.yaml"
        plan.write_text(V1)
        node = gate_process(PLANGATE_PLANS=str(plan))
        for name in ("ann", "bob", "cat"):
            status, _ = asyncio.run(post(node.url, f"/v1/subjects/{name}/transition",
                                         {"to": "billing_problem", "reason": "test"}))
            assert status == 200
        node.stop()
        plan.write_text(edited(*WITHOUT_BILLING_PROBLEM))
        env = {**BASE_ENV, "PLANGATE_PLANS": str(plan), "PLANGATE_DATABASE": str(tmp_path / "proc.sqlite3"),
               "PLANGATE_PORT": "0"}
        done = run(["serve"], env, tmp_path)
        assert done.returncode == 1, done.stderr
        assert "status 'billing_problem': 3 stored subject(s)" in done.stderr
        assert "renamed_from: [billing_problem]" in done.stderr and "retired:" in done.stderr
        assert "Traceback" not in done.stderr and "listening" not in done.stdout
        done = run(["migrate"], env, tmp_path)      # migrate says so too, before a deploy gets that far
        assert done.returncode == 1 and "schema is current" in done.stdout
        assert "will refuse this plan" in done.stderr and "status 'billing_problem': 3" in done.stderr


class TestSighup:
    async def test_sighup_deploys_a_good_plan_and_refuses_a_stranding_one(self, tmp_path, gate_process):
        plan = tmp_path / "plans.yaml"
        plan.write_text(V1)
        node = gate_process(PLANGATE_PLANS=str(plan))
        v1 = await plan_version(node.url)
        status, _ = await post(node.url, "/v1/subjects/ann/transition", {"to": "billing_problem", "reason": "t"})
        assert status == 200

        plan.write_text(edited(*WITHOUT_BILLING_PROBLEM))
        node.proc.send_signal(signal.SIGHUP)
        assert await postgres.await_until(lambda: _logged(node, "plan_refused"), timeout=10)
        assert await plan_version(node.url) == v1

        plan.write_text(lowered_pro("never"))
        node.proc.send_signal(signal.SIGHUP)

        async def switched():
            return await plan_version(node.url) != v1
        assert await postgres.await_until(switched, timeout=10)
        _, view = await get(node.url, "/v1/plan")
        assert [d["actor"] for d in view["history"]] == ["sighup", "start"]
        returncode, _, err = node.stop()
        assert returncode == 0 and "plan_applied" in err

    async def test_a_sighup_while_the_gate_starts_reloads_once_it_has_started(self, tmp_path, pg_cluster):
        """A SIGHUP that came while the gate started (here, while PostgreSQL was slow to answer its first connection)
        was read at once, the store not open yet: refused as the store's failure, an error in the log. It is read
        once the gate has started."""
        plan = tmp_path / "plans.yaml"
        plan.write_text(V1)
        async with _Relay(pg_cluster.port, opening_held=3.0) as relay:
            env = {**os.environ, **BASE_ENV, "PLANGATE_DATABASE": relay.dsn(pg_cluster), "PLANGATE_PLANS": str(plan),
                   "PLANGATE_PG_CONNECT_TIMEOUT": "20", "PLANGATE_PORT": "0", "PLANGATE_HOST": "127.0.0.1"}
            out, err = tmp_path / "gate.out", tmp_path / "gate.err"
            with open(out, "w") as stdout, open(err, "w") as stderr:
                proc = await asyncio.create_subprocess_exec(PLANGATE, "serve", "--env-file", "", env=env, cwd=tmp_path,
                                                            stdout=stdout, stderr=stderr)
            try:
                async with asyncio.timeout(30):
                    while not relay.opening:
                        await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGHUP)

                async def read_again() -> bool:
                    return "listening on" in out.read_text() and any(e.get("actor") == "sighup" for e in _log(err))
                assert await postgres.await_until(read_again, timeout=20), err.read_text()
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 15)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        logs = _log(err)
        reloads = [(e["event"], e["actor"]) for e in logs if e["event"] in ("plan_applied", "plan_unchanged")]
        assert reloads == [("plan_applied", "start"), ("plan_unchanged", "sighup")]
        assert not [e for e in logs if e["event"] == "plan_refused"] and proc.returncode == 0


def _log(path) -> list[dict]:
    """The JSON lines of a gate's log file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{") and line.endswith("}")]


async def _logged(node: GateProcess, event: str) -> bool:
    return f'"{event}"' in node.output()[1]


class TestTwoNodes:
    async def test_a_reload_on_one_node_switches_the_other(self, tmp_path, nodes):  # noqa: F811
        plan = tmp_path / "plans.yaml"
        plan.write_text(V1)
        a, b = nodes(2, PLANGATE_PLANS=str(plan), PLANGATE_CACHE_TTL="300")
        v1 = await plan_version(a.url)
        assert await plan_version(b.url) == v1
        status, _ = await post(a.url, "/v1/subjects/ann/transition", {"to": "trial", "reason": "test"})
        _, before = await post(b.url, "/v1/check", {"subject": "ann", "meter": "requests"})
        assert before["status"] == "trial"            # cached on b for 300 s

        plan.write_text(renamed("trial", "paid_trial"))
        status, body = await post(a.url, "/v1/plan/reload", {"actor": "ops"})
        # Moved once, by whichever node got to it first: b, following the deploy, moves what it meets under the old
        # names as a does, and the two race (a's answer counts only its own moves).
        assert (status, body["outcome"]) == (200, "applied") and body["moved"] in (0, 1), body

        async def b_switched():
            return await plan_version(b.url) == body["version"]
        assert await postgres.await_until(b_switched, timeout=10)

        async def moved_once():
            return sum([await moved_by(node.url) for node in (a, b)]) == 1
        assert await postgres.await_until(moved_once, timeout=10)
        _, after = await post(b.url, "/v1/check", {"subject": "ann", "meter": "requests"})
        assert (after["status"], after["limit"]) == ("paid_trial", 500)
        _, metrics = await get(b.url, "/metrics")
        assert f'plangate_plan_info{{version="{body["version"]}"}} 1.0' in metrics
        assert 'plangate_plan_reloads_total{result="followed"} 1.0' in metrics
        _, view = await get(b.url, "/v1/plan")
        assert view["version"] == body["version"] and view["history"][0]["node"] != view["node"]
