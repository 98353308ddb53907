"""The gate's durable state, behind one interface (SQLite now; PostgreSQL is the second implementation)."""
from ._base import (AuditEntry, Change, Counted, DuplicateEvent, EventRecord, IdempotencyConflict, Payment, Store,
                    StoredSubject, StoreError)
from ._sqlite import SQLiteStore


def open_store(database: str, *, sqlite_synchronous: str = "NORMAL") -> Store:
    """The store a PLANGATE_DATABASE value names (not yet opened)."""
    return SQLiteStore(database, sqlite_synchronous)


__all__ = ["AuditEntry", "Change", "Counted", "DuplicateEvent", "EventRecord", "IdempotencyConflict", "Payment",
           "SQLiteStore", "Store", "StoreError", "StoredSubject", "open_store"]
