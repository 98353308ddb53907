"""The store the server talks to: one interface, one implementation per database.

Exception tree:

    StoreError          the store failed to answer (unreachable, locked, broken, too slow)
    IdempotencyConflict an idempotency key was reused for different work
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

from engine import SubjectState


class StoreError(Exception):
    """The store could not answer; the gate follows its fail mode."""


class IdempotencyConflict(ValueError):
    """An idempotency key came back with another subject, meter or amount than the first time."""


@dataclass(frozen=True, slots=True)
class StoredSubject:
    state: SubjectState
    version: int                      # 0: not stored yet
    stripe_customer: str | None = None
    stripe_subscription: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    subject: str
    from_status: str | None
    to_status: str
    trigger: str
    reason: str
    at: float
    plan_version: str
    cause_id: str | None = None
    actor: str | None = None

    def to_dict(self) -> dict:
        return {"from": self.from_status, "to": self.to_status, "trigger": self.trigger, "reason": self.reason,
                "at": self.at, "plan_version": self.plan_version, "cause_id": self.cause_id, "actor": self.actor}


@dataclass(frozen=True, slots=True)
class Counted:
    """What a counting write did. `conflict`: the subject changed since it was read; nothing written."""

    counted: bool
    used: int
    duplicate: bool = False
    conflict: bool = False


class Store(abc.ABC):
    """Durable state of every subject. Methods raise StoreError when the database fails."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def migrate(self) -> tuple[int, int]:
        """Apply pending migrations; (version before, version after)."""

    @abc.abstractmethod
    async def ping(self) -> None: ...

    @abc.abstractmethod
    async def load(self, subject: str) -> StoredSubject | None: ...

    @abc.abstractmethod
    async def used(self, subject: str, windows: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Usage of the given (meter, window start) pairs; missing ones are 0."""

    @abc.abstractmethod
    async def count(self, current: StoredSubject, meter: str, window_start: int, amount: int,
                    limit: int | None, key: str | None, now: float) -> Counted:
        """Add amount to a window's usage in one atomic step, unless that would pass `limit`
        (None: no limit, the work already ran). Refuses with conflict=True when the subject's stored
        version is no longer current.version (a version of 0 stores current.state first)."""

    @abc.abstractmethod
    async def save(self, new: StoredSubject, expected_version: int, audit: AuditEntry | None) -> bool:
        """Write a subject's new state (and its audit row) in one transaction, if the stored version
        is still expected_version (0: not stored yet). False when another writer came first."""

    @abc.abstractmethod
    async def transitions(self, subject: str, limit: int = 20) -> list[AuditEntry]:
        """The subject's most recent transitions, newest first."""
