-- How each environment's current commit came up (Ready issue): when it was pushed, when its artifact was
-- found, when the infrastructure was complete, when its URL first answered and when it became ready; and
-- what it waits for now. One row per environment, started afresh for each commit. Times are milliseconds
-- since the epoch; NULL until reached.
CREATE TABLE timelines (
    env_id INTEGER PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    sha TEXT NOT NULL,
    pushed_at INTEGER,
    artifact_at INTEGER,
    infrastructure_at INTEGER,
    answered_at INTEGER,
    ready_at INTEGER,
    -- What the environment waits for ("the image …:<sha> in ECR", "check build", "the URL to answer"),
    -- since when, and the last answer it got; NULL when it waits for nothing.
    waiting_for TEXT,
    waiting_since INTEGER,
    last_answer TEXT
);
