-- What the reconciler last saw of each environment's stack, for people: the environment's page reads it
-- here and never asks AWS while it answers. Written when the stack's status or outputs change.
CREATE TABLE stack_observations (
    env_id INTEGER PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    -- When the reconciler looked (milliseconds since the epoch).
    observed_at INTEGER NOT NULL,
    -- The stack's status as CloudFormation named it; NULL: no stack.
    status TEXT,
    -- JSON: {"OutputKey": "value", ...}.
    outputs TEXT NOT NULL,
    -- JSON, newest first: [{"timestamp", "logical_id", "status", "reason"}], as of the last settled status.
    events TEXT NOT NULL
);
