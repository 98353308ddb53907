"""A job asked for through POST /v1/jobs/{name} on one PostgreSQL node while another node runs it."""
from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from . import stripe_events as se
from .test_webhook import deliver, status_of

DAY = 86400.0
SWEEP_LOCK = 0x706C_6800 + sum(b"sweep")      # the job's advisory lock (store._postgres._JOB_LOCK_BASE + name)


@pytest.mark.parametrize("each_database", ["postgresql"], indirect=True)
async def test_a_job_asked_for_while_another_node_runs_it_is_a_409_that_did_nothing(start_gate, each_database):
    """Another node holds the sweep (its scheduled run under way). The route on this node answered at once with 0
    moved and fired nothing: the caller (an operator, the simulator's lifecycle) took the due timer as fired, and
    read the subject still in its trial. It now says so (409 job_running, Retry-After), and runs once asked again
    after that run ends. (Waiting for it instead held the request as long as the other run took, and ran the job
    after a caller that had given up.)"""
    gate = await start_gate(database=each_database, STRIPE_WEBHOOK_SECRET=se.SECRET)
    await deliver(gate, se.event("checkout.session.completed", se.checkout("tina"), time.time() - 8 * DAY))
    assert await status_of(gate, "tina") == "paid_trial"        # its trial's timer is past due

    other = await asyncpg.connect(each_database)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK)
        status, body = await asyncio.wait_for(gate.post("/v1/jobs/sweep"), 10)
        assert (status, body["error"]) == (409, "job_running"), body
        assert await status_of(gate, "tina") == "paid_trial"
        await other.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)
    finally:
        await other.close()
    status, body = await gate.post("/v1/jobs/sweep")
    assert status == 200 and body["result"] == 1, body
    assert await status_of(gate, "tina") == "billing_problem"
