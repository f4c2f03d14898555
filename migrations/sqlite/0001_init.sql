-- previewd's records. Times are Unix milliseconds; flags are 0/1 integers, so SQLite and PostgreSQL
-- read back the same types through sqlx's Any driver.

CREATE TABLE environments (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    repo            TEXT    NOT NULL,
    branch          TEXT    NOT NULL,
    env_key         TEXT    NOT NULL,
    stack_name      TEXT    NOT NULL,
    dns_name        TEXT    NOT NULL,
    -- desired: what GitHub says (1 = the branch exists, at desired_sha when known)
    desired_present INTEGER NOT NULL,
    desired_sha     TEXT,
    -- bumped on every change of desired state: the generation the reconciler works toward
    desired_seq     INTEGER NOT NULL DEFAULT 1,
    desired_at      INTEGER NOT NULL,
    -- observed: what previewd last saw and did in AWS
    status          TEXT    NOT NULL,
    deployed_sha    TEXT,
    stack_id        TEXT,
    url             TEXT,
    last_error      TEXT,
    rule_priority   INTEGER,
    seeded_at       INTEGER,
    -- stack operations tried for the current desired state, and transient errors in a row
    attempts        INTEGER NOT NULL DEFAULT 0,
    retries         INTEGER NOT NULL DEFAULT 0,
    -- one reconcile at a time, across replicas
    lease_owner     TEXT,
    lease_until     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (repo, branch),
    UNIQUE (repo, env_key),
    UNIQUE (repo, rule_priority)
);

CREATE TABLE deliveries (
    id          TEXT    PRIMARY KEY,
    event       TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    outcome     TEXT    NOT NULL
);
CREATE INDEX deliveries_received_at ON deliveries (received_at);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    env_id  INTEGER NOT NULL REFERENCES environments (id),
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL
);
CREATE INDEX events_env ON events (env_id, id);
