-- How long each blueprint's stack operations take, as the reconciler learned them (Ready issue): kept so
-- that a restarted previewd, or another replica, looks at a stack in progress near its expected end from
-- the first stack on. One row per blueprint and operation ('create', 'update').
CREATE TABLE stack_durations (
    blueprint TEXT NOT NULL,
    operation TEXT NOT NULL,
    millis INTEGER NOT NULL,
    learned_at INTEGER NOT NULL,
    PRIMARY KEY (blueprint, operation)
);
