-- Seeding test data, and telling GitHub (deployments, one pull-request comment) what became of each
-- environment.

-- 1: the blueprint's seed steps are to run (set when the stack is first created, and by a reseed).
ALTER TABLE environments ADD COLUMN seed_pending INTEGER NOT NULL DEFAULT 0;
-- When seeding was last asked for: with the step, it names a one-off ECS task (its idempotency token).
ALTER TABLE environments ADD COLUMN seed_requested_at INTEGER;
-- The next seed step to run (0-based), and the ECS task a running `ecs_task` step waits for.
ALTER TABLE environments ADD COLUMN seed_step INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN seed_task TEXT;
-- Each step's outcome, JSON: [{"step", "kind", "outcome", "detail", "at"}].
ALTER TABLE environments ADD COLUMN seed_log TEXT;

-- Bumped on every write of observed state: GitHub is told about the environment until it has been told
-- about this revision.
ALTER TABLE environments ADD COLUMN observed_rev INTEGER NOT NULL DEFAULT 0;
-- When GitHub is next to be told (NULL: it knows the current state); while a replica tells it, the end
-- of that replica's claim.
ALTER TABLE environments ADD COLUMN feedback_due INTEGER;
ALTER TABLE environments ADD COLUMN feedback_retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN feedback_error TEXT;
-- The GitHub deployment for the commit last reported, and the last status posted to it.
ALTER TABLE environments ADD COLUMN deployment_sha TEXT;
ALTER TABLE environments ADD COLUMN deployment_id INTEGER;
ALTER TABLE environments ADD COLUMN deployment_state TEXT;
CREATE INDEX environments_feedback_due ON environments (feedback_due);

-- The one comment previewd keeps on each open pull request of a branch, and a hash of what it says.
CREATE TABLE pr_comments (
    env_id     INTEGER NOT NULL REFERENCES environments (id),
    pr_number  INTEGER NOT NULL,
    comment_id INTEGER NOT NULL,
    body_hash  TEXT    NOT NULL,
    PRIMARY KEY (env_id, pr_number)
);
