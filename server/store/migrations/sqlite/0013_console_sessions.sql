-- Console sessions in the store, so that every gate process on it knows them (a console behind a load balancer
-- over several nodes) and a restart logs nobody out. The cookie's session id is never stored: its SHA-256 is.
-- At most MAX_SESSIONS a scope (admin or read-only), the oldest dropped first when one more opens.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    admin INTEGER NOT NULL,
    csrf TEXT NOT NULL,
    opened REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_scope ON console_sessions (admin, opened);
