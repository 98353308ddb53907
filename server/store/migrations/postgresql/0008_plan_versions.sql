-- Plan versions: every plan the gate has run (its document and the hash of its text), and every deploy of
-- one (when, by whom, on which node, what changed): the audit of plan changes and GET /v1/plan's history.
-- The newest deploy is the active plan; a deploy is announced to every node (NOTIFY plangate_plans).

CREATE TABLE plan_versions (
    version   TEXT PRIMARY KEY,
    sha256    TEXT NOT NULL,
    file      TEXT NOT NULL,
    document  TEXT NOT NULL,
    first_run DOUBLE PRECISION NOT NULL
);

CREATE TABLE plan_deploys (
    id       BIGSERIAL PRIMARY KEY,
    version  TEXT NOT NULL REFERENCES plan_versions (version),
    previous TEXT,
    at       DOUBLE PRECISION NOT NULL,
    actor    TEXT NOT NULL,
    node     TEXT NOT NULL,
    summary  TEXT NOT NULL,
    moved    BIGINT NOT NULL DEFAULT 0
);
