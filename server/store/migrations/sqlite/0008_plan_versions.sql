-- Plan versions: every plan the gate has run (its document and the hash of its text), and every deploy of
-- one (when, by whom, on which node, what changed): the audit of plan changes and GET /v1/plan's history.
-- A subject's plan_version names a row of plan_versions once that version has been deployed here.

CREATE TABLE plan_versions (
    version   TEXT PRIMARY KEY,             -- the plan's version: a hash of what the document says
    sha256    TEXT NOT NULL,                -- of the document's text
    file      TEXT NOT NULL,                -- the file it was read from, as rule names cite it
    document  TEXT NOT NULL,
    first_run REAL NOT NULL
);

CREATE TABLE plan_deploys (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    version  TEXT NOT NULL REFERENCES plan_versions (version),
    previous TEXT,                          -- the version it replaced (NULL: the first deploy)
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,                 -- start, sighup, or the admin of a reload
    node     TEXT NOT NULL,
    summary  TEXT NOT NULL,                 -- what changed, in words
    moved    INTEGER NOT NULL DEFAULT 0     -- stored subjects moved by its renames and retirements
);
