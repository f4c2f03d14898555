//! Seeding: whether an environment's seed steps are to run, and how far they got.

use previewd_domain::EventKind;

use crate::environments::{lock_row, tell_github};
use crate::records::{SeedOutcome, SeedProgress, seed_log};
use crate::{Fence, Store, StoreError, db, events};

impl Store {
    /// Asks for the blueprint's seed steps to run (again) from the first: after the stack's first create,
    /// or on a reseed. The earlier outcomes are forgotten.
    pub async fn request_seed(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        let r = sqlx::query(&format!(
            "UPDATE environments SET seed_pending = 1, seed_requested_at = $1, seed_step = 0, seed_task = NULL, \
             seed_log = NULL, seeded_at = NULL, updated_at = $2, {} WHERE id = $4",
            tell_github(3)
        ))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("request seed"))?;
        events::commit_with(tx, r.rows_affected() == 1, id, now, EventKind::Seed, reason).await
    }

    /// Records seeding progress: the step to run next, the ECS task it waits for, the outcome of the step
    /// that ended (appended to the log, and to the event log), and whether every step is done (then
    /// `seeded_at` is set).
    pub async fn seed_progress(&self, fence: Fence, progress: SeedProgress) -> Result<(), StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        let id = fence.id;
        lock_row(&mut tx, id).await?;
        let log: Option<String> = sqlx::query_scalar("SELECT seed_log FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read seed log"))?
            .flatten();
        let mut log: Vec<SeedOutcome> = seed_log(log)?;
        if let Some(o) = &progress.outcome {
            log.push(o.clone());
        }
        let log =
            serde_json::to_string(&log).map_err(|e| StoreError::Corrupt { what: "seed log", value: e.to_string() })?;
        let seeded = progress.finished.then_some(now);
        let sql = format!(
            "UPDATE environments SET seed_step = $1, seed_task = $2, seed_log = $3, \
             seed_pending = CASE WHEN $4 = 1 THEN 0 ELSE seed_pending END, seeded_at = COALESCE($5, seeded_at), \
             updated_at = $6, {} WHERE id = $8{}",
            tell_github(7),
            fence.condition(9)
        );
        let q = sqlx::query(&sql)
            .bind(progress.next_step)
            .bind(progress.task.clone())
            .bind(log)
            .bind(i64::from(progress.finished))
            .bind(seeded)
            .bind(now)
            .bind(now)
            .bind(id);
        let r = fence.bind(q).execute(&mut *tx).await.map_err(db("seed progress"))?;
        fence.check(r.rows_affected())?;
        if let Some(o) = &progress.outcome {
            let message = format!("step {} ({}, {}): {}: {}", o.step + 1, o.name, o.kind, o.outcome, o.detail);
            events::append(&mut tx, id, now, EventKind::Seed, &message).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }
}
