-- How each environment's current commit came up (Ready issue): when it was pushed, when its artifact was
-- found, when the infrastructure was complete, when its URL first answered and when it became ready; and
-- what it waits for now. One row per environment, started afresh for each commit. Times are milliseconds
-- since the epoch; NULL until reached.
CREATE TABLE timelines (
    env_id BIGINT PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    sha TEXT NOT NULL,
    pushed_at BIGINT,
    artifact_at BIGINT,
    infrastructure_at BIGINT,
    answered_at BIGINT,
    ready_at BIGINT,
    -- What the environment waits for ("the image …:<sha> in ECR", "check build", "the URL to answer"),
    -- since when, and the last answer it got; NULL when it waits for nothing.
    waiting_for TEXT,
    waiting_since BIGINT,
    last_answer TEXT
);
