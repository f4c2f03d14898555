-- Environments counted by repository and status (the dashboard's summary, every few seconds, and
-- /metrics): read from this index alone, as the count by status was from environments_status.
CREATE INDEX environments_repo_status ON environments (repo, status);
