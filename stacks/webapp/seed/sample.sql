-- Sample rows for a new preview environment's database (seed step "sample rows"). Runs once, in one
-- transaction, after the environment's first create; a reseed runs it again, so it is idempotent.
CREATE TABLE IF NOT EXISTS products (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_cents INTEGER NOT NULL
);
INSERT INTO products (sku, name, price_cents) VALUES
    ('TEE-001', 'Preview tee', 1900),
    ('MUG-002', 'Branch mug', 1200),
    ('CAP-003', 'Reaper cap', 2100)
ON CONFLICT (sku) DO NOTHING;
