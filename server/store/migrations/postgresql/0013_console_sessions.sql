-- Console sessions in the store, so that every node knows them (a console behind a load balancer) and a restart
-- logs nobody out. The cookie's session id is never stored: its SHA-256 is. At most MAX_SESSIONS a scope (admin
-- or read-only), the oldest dropped first when one more opens. On Citus: a reference table (README).
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    admin BOOLEAN NOT NULL,
    csrf TEXT NOT NULL,
    opened DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_by_scope ON console_sessions (admin, opened);
