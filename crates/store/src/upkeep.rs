//! Locks between replicas, reaper passes, grouped counts for metrics, and pruning old deliveries.

use previewd_domain::PassOutcome;

use crate::records::{ReaperPassRecord, parse};
use crate::{Store, StoreError, db};

#[derive(sqlx::FromRow)]
struct PassRow {
    id: i64,
    started_at: i64,
    finished_at: i64,
    dry_run: i64,
    outcome: String,
    summary: String,
    decisions: String,
}

impl Store {
    /// Takes the named lock for `holder` until `until_ms`, unless another holder has an unexpired one.
    pub async fn try_lock(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO locks (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, until = excluded.until WHERE locks.until < $4 OR locks.holder = $5",
        )
        .bind(name)
        .bind(holder)
        .bind(until_ms)
        .bind(self.now())
        .bind(holder)
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("take lock"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Who holds the named lock, if anyone holds it unexpired.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT holder FROM locks WHERE name = $1 AND until >= $2")
            .bind(name)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read lock"))
    }

    pub async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM locks WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("release lock"))?;
        Ok(())
    }

    /// Records a finished reaper pass.
    pub async fn record_reaper_pass(&self, pass: &ReaperPassRecord) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO reaper_passes (started_at, finished_at, dry_run, outcome, summary, decisions) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(pass.started_at)
        .bind(pass.finished_at)
        .bind(i64::from(pass.dry_run))
        .bind(pass.outcome.as_str())
        .bind(pass.summary.clone())
        .bind(pass.decisions.clone())
        .fetch_one(&mut *self.write().await?)
        .await
        .map_err(db("record reaper pass"))
    }

    /// Environments by repository and status, counted in SQL (a metric must not load the fleet).
    pub async fn status_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        sqlx::query_as("SELECT repo, status, COUNT(*) AS n FROM environments GROUP BY repo, status")
            .fetch_all(&self.pool)
            .await
            .map_err(db("count environments"))
    }

    /// When the newest reaper pass (not a dry run) that was neither refused nor failed ended.
    pub async fn reaper_last_success(&self) -> Result<Option<i64>, StoreError> {
        // The outcomes PassOutcome::is_success names.
        sqlx::query_scalar("SELECT MAX(finished_at) FROM reaper_passes WHERE dry_run = 0 AND outcome IN ($1, $2)")
            .bind(PassOutcome::Clean.as_str())
            .bind(PassOutcome::Removed.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(db("read reaper passes"))
    }

    /// Reaper passes (not dry runs) by outcome, counted in SQL: a Prometheus counter that survives restarts.
    pub async fn reaper_pass_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT outcome AS k, COUNT(*) AS n FROM reaper_passes WHERE dry_run = 0 GROUP BY outcome";
        self.counts(sql, "count reaper passes").await
    }

    /// `(k, n)` rows of a grouped count.
    async fn counts(&self, sql: &'static str, op: &'static str) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(sql).fetch_all(&self.pool).await.map_err(db(op))
    }

    /// The newest reaper pass that was not a dry run, if any.
    pub async fn last_reaper_pass(&self) -> Result<Option<ReaperPassRecord>, StoreError> {
        let row: Option<PassRow> = sqlx::query_as(
            "SELECT id, started_at, finished_at, dry_run, outcome, summary, decisions FROM reaper_passes \
             WHERE dry_run = 0 ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read reaper pass"))?;
        row.map(|r| {
            let outcome: PassOutcome = parse("reaper outcome", &r.outcome)?;
            Ok(ReaperPassRecord {
                id: r.id,
                started_at: r.started_at,
                finished_at: r.finished_at,
                dry_run: r.dry_run != 0,
                outcome,
                summary: r.summary,
                decisions: r.decisions,
            })
        })
        .transpose()
    }

    /// Forgets deliveries received before `before_ms` (dedupe needs them for 3 days at least).
    pub async fn prune_deliveries(&self, before_ms: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM deliveries WHERE received_at < $1")
            .bind(before_ms)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("prune deliveries"))?;
        Ok(r.rows_affected())
    }

    pub async fn delivery_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&self.pool)
            .await
            .map_err(db("count deliveries"))
    }
}
