"""The gate's durable state, behind one interface (SQLite now; PostgreSQL is the second implementation)."""
from ._base import (AuditEntry, Change, Counted, DuplicateEvent, Erasure, EventRecord, IdempotencyConflict, Payment,
                    Store, StoredSubject, StoreError, USAGE_CEILING, UsageCeiling)
from ._console_sessions import ConsoleSession
from ._credits import OverageReport, Reversal, Spend
from ._migrations import number_of as migration_number
from ._sqlite import SQLiteStore, sqlite_path


def open_store(database: str, *, sqlite_synchronous: str = "NORMAL", pool_min: int = 1, pool_max: int = 10,
               connect_timeout: float = 5.0, command_timeout: float = 10.0, replicas: tuple[str, ...] = (),
               replica_max_lag: float = 1.0, push_usage: bool = True) -> Store:
    """The store a PLANGATE_DATABASE value names (not yet opened): postgresql://... (and its streaming replicas
    for reads) or a SQLite file."""
    if database.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore    # asyncpg loads only for a PostgreSQL store
        return PostgresStore(database, pool_min=pool_min, pool_max=pool_max, connect_timeout=connect_timeout,
                             command_timeout=command_timeout, replicas=replicas, replica_max_lag=replica_max_lag,
                             push_usage=push_usage)
    return SQLiteStore(database, sqlite_synchronous)


__all__ = ["AuditEntry", "Change", "ConsoleSession", "Counted", "DuplicateEvent", "Erasure", "EventRecord",
           "IdempotencyConflict", "OverageReport", "Payment", "Reversal", "SQLiteStore", "Spend", "Store", "StoreError",
           "StoredSubject", "USAGE_CEILING", "UsageCeiling", "migration_number", "open_store",
           "sqlite_path"]
