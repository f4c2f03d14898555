-- The fleet observer and the reaper.

-- When a complete listing of the repository's branches (or a direct look-up) first lacked the branch;
-- NULL while it is known to exist. Absence is proof only once it has lasted the reaper's grace.
ALTER TABLE environments ADD COLUMN missing_since INTEGER;
-- 1: exempt from the time-to-live and from the reaper's grace (kept on purpose).
ALTER TABLE environments ADD COLUMN keep INTEGER NOT NULL DEFAULT 0;
-- The last push (or create) a webhook reported: the time-to-live counts from it.
ALTER TABLE environments ADD COLUMN pushed_at INTEGER;
UPDATE environments SET pushed_at = desired_at WHERE desired_present = 1;
-- When the reaper found the environment past its time-to-live: torn down although the branch exists,
-- until the next push.
ALTER TABLE environments ADD COLUMN expired_at INTEGER;

-- The repository as GitHub spells it (`Codertocat/Hello-World`); `repo` is its lower-cased key.
ALTER TABLE environments ADD COLUMN repo_display TEXT;

-- The dashboard and the API list by last change, and count and filter by status.
CREATE INDEX environments_updated ON environments (updated_at, id);
CREATE INDEX environments_status ON environments (status);

-- Named locks with an expiry, held by one process at a time (one reaper pass across replicas and CLIs).
CREATE TABLE locks (
    name   TEXT    PRIMARY KEY,
    holder TEXT    NOT NULL,
    until  INTEGER NOT NULL
);

-- Every reaper pass: when, how it ended, and what it decided (JSON), for the dashboard and the API.
CREATE TABLE reaper_passes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    dry_run     INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    summary     TEXT    NOT NULL,
    decisions   TEXT    NOT NULL
);
