"""The gate's durable state, behind one interface (SQLite now; PostgreSQL is the second implementation)."""
from ._base import (AuditEntry, Change, Counted, DuplicateEvent, Erasure, EventRecord, IdempotencyConflict, Payment, Store,
                    StoredSubject, StoreError)
from ._credits import OverageReport, Spend
from ._migrations import number_of as migration_number
from ._sqlite import SQLiteStore


def open_store(database: str, *, sqlite_synchronous: str = "NORMAL", pool_min: int = 1, pool_max: int = 10,
               connect_timeout: float = 5.0, command_timeout: float = 10.0) -> Store:
    """The store a PLANGATE_DATABASE value names (not yet opened): postgresql://... or a SQLite file."""
    if database.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore    # asyncpg loads only for a PostgreSQL store
        return PostgresStore(database, pool_min=pool_min, pool_max=pool_max, connect_timeout=connect_timeout,
                             command_timeout=command_timeout)
    return SQLiteStore(database, sqlite_synchronous)


__all__ = ["AuditEntry", "Change", "Counted", "DuplicateEvent", "Erasure", "EventRecord", "IdempotencyConflict", "Payment",
           "OverageReport", "SQLiteStore", "Spend", "Store", "StoreError", "StoredSubject", "migration_number", "open_store"]
