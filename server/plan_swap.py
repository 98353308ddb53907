"""The moment a node's plan is swapped, kept apart from the state changes decided under a plan.

A state change (an admin's transition, a timer, a Stripe event's fold) reads the plan, decides, and commits.
A deploy checks the store for subjects the new plan would strand, then swaps the plan. A change decided under
the old plan and committed after that check could land a subject in a status the new plan removed, unseen by
the check and by the moving of old names that follows the swap. So the deploy's check and swap wait for the
changes under way, and changes that start meanwhile wait for the swap and are decided under the new plan.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class PlanSwap:
    """Many deciding at once, or one swapping (which waits for those deciding, and goes before any that come
    after it, so that a stream of webhooks cannot hold a deploy back)."""

    def __init__(self) -> None:
        self._deciding = 0
        self._swapping = False
        self._owners: set[asyncio.Task] = set()     # tasks deciding: their own nested changes go straight on
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:       # made on the loop that uses it
            self._changed = asyncio.Condition()
        return self._changed

    @contextlib.asynccontextmanager
    async def deciding(self) -> AsyncIterator[None]:
        """Around reading the plan, deciding and committing. Nested in the same task (a fold that first moves a
        stored old name through the door), it adds nothing: the outer one holds the plan already."""
        task = asyncio.current_task()
        if task in self._owners:
            yield
            return
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: not self._swapping)
            self._deciding += 1
        if task is not None:
            self._owners.add(task)
        try:
            yield
        finally:
            self._owners.discard(task)
            async with changed:
                self._deciding -= 1
                changed.notify_all()

    @contextlib.asynccontextmanager
    async def swapping(self) -> AsyncIterator[None]:
        """Around a deploy's check of the store and its swap: once the changes under way have committed."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(lambda: not self._swapping)
            self._swapping = True
            try:
                await changed.wait_for(lambda: self._deciding == 0)
            except BaseException:
                self._swapping = False
                changed.notify_all()
                raise
        try:
            yield
        finally:
            async with changed:
                self._swapping = False
                changed.notify_all()
