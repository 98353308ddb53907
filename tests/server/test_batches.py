"""Batches: calls that arrive together run together; one batch in flight, another beside it only once the one in
flight has stalled; each caller gets its own result or exception."""
from __future__ import annotations

import asyncio

import pytest

from plangate.server.store._batches import Batches


class Held:
    """A run() whose batches wait until released; it records each batch's items."""

    def __init__(self):
        self.batches: list[list] = []
        self.release = asyncio.Event()

    async def __call__(self, items: list) -> list:
        self.batches.append(items)
        await self.release.wait()
        return [ValueError(item) if item == "bad" else item * 2 for item in items]


class TestBatches:
    async def test_what_arrives_in_one_loop_turn_goes_in_one_batch_with_its_own_results(self):
        run = Held()
        run.release.set()
        batches = Batches(run, depth=1)
        results = await asyncio.gather(*(batches.submit(n) for n in (1, 2, "bad", 3)), return_exceptions=True)
        assert run.batches == [[1, 2, "bad", 3]] and batches.sizes == [4]
        assert results[:2] == [2, 4] and isinstance(results[2], ValueError) and results[3] == 6

    async def test_what_arrives_while_a_batch_runs_waits_for_the_next(self):
        run = Held()
        batches = Batches(run, depth=3)       # no stall_after: as many at once as depth allows
        first = batches.submit(1)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        later = [batches.submit(n) for n in (2, 3)]
        await asyncio.sleep(0.01)
        assert run.batches == [[1], [2, 3]]
        run.release.set()
        assert await asyncio.gather(first, *later) == [2, 4, 6]

    async def test_a_second_batch_goes_beside_a_stalled_one_only_after_the_stall(self):
        run = Held()
        batches = Batches(run, depth=2, stall_after=0.05)
        first = batches.submit(1)
        await asyncio.sleep(0.01)
        waiting = [batches.submit(n) for n in (2, 3)]
        await asyncio.sleep(0.02)
        assert run.batches == [[1]]                 # not yet: the first has run for less than stall_after
        await asyncio.sleep(0.06)
        assert run.batches == [[1], [2, 3]]         # stalled: the next went beside it
        more = batches.submit(4)
        await asyncio.sleep(0.08)
        assert len(run.batches) == 2                # depth 2: the third waits for one to end
        run.release.set()
        assert await asyncio.gather(first, *waiting, more) == [2, 4, 6, 8]
        assert run.batches[-1] == [4]

    async def test_a_failing_run_fails_its_batch_alone_and_a_caller_who_left_is_left_out(self):
        calls: list[list] = []

        async def run(items: list) -> list:
            calls.append(items)
            if "boom" in items:
                raise RuntimeError("the database went away")
            return items

        batches = Batches(run, depth=1)
        gone = batches.submit("gone")
        gone.cancel()
        failed = [batches.submit("boom"), batches.submit("x")]
        with pytest.raises(RuntimeError):
            await failed[0]
        with pytest.raises(RuntimeError):
            await failed[1]
        assert await batches.submit("y") == "y"
        assert calls == [["boom", "x"], ["y"]]
