//! What GitHub is to be told, and what it was told: the due time of each environment's feedback, its
//! deployment, and the comments previewd keeps on its pull requests.

use previewd_domain::EventKind;

use crate::environments::{lock_row, tell_github};
use crate::records::{DeploymentRecord, PrComment, PullRequest};
use crate::{Store, StoreError, db, events};

impl Store {
    /// Environments GitHub is due to be told about, soonest first, with the due time read (for
    /// [`Store::claim_feedback`]).
    pub async fn feedback_due(&self, now: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        sqlx::query_as(
            "SELECT id, feedback_due FROM environments WHERE feedback_due IS NOT NULL AND feedback_due <= $1 \
             ORDER BY feedback_due, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("feedback due"))
    }

    /// Takes the environment's feedback until `until_ms`, if it is still due at `seen` (no other replica
    /// took it meanwhile): one replica tells GitHub about an environment at a time.
    pub async fn claim_feedback(&self, id: i64, seen: i64, until_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE environments SET feedback_due = $1 WHERE id = $2 AND feedback_due = $3")
            .bind(until_ms)
            .bind(id)
            .bind(seen)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("claim feedback"))?;
        Ok(r.rows_affected() == 1)
    }

    /// The soonest time GitHub is due to be told about anything.
    pub async fn next_feedback_due(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT MIN(feedback_due) FROM environments")
            .fetch_one(&self.pool)
            .await
            .map_err(db("next feedback"))
    }

    /// Notes the GitHub deployment for `sha` and the last state posted to it.
    pub async fn set_deployment(&self, id: i64, d: &DeploymentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE environments SET deployment_sha = $1, deployment_id = $2, deployment_state = $3 WHERE id = $4",
        )
        .bind(d.sha.to_string())
        .bind(d.id)
        .bind(d.state.map(|s| s.as_str()))
        .bind(id)
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("set deployment"))?;
        Ok(())
    }

    /// Forgets the GitHub deployment (deleted on GitHub): the next turn creates one again.
    pub async fn forget_deployment(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE environments SET deployment_sha = NULL, deployment_id = NULL, deployment_state = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("forget deployment"))?;
        Ok(())
    }

    /// GitHub has been told about revision `rev`: nothing more is due unless the environment changed since.
    pub async fn feedback_done(&self, id: i64, rev: i64) -> Result<(), StoreError> {
        // Changed while GitHub was being told: due again now (the claim held the due time meanwhile).
        sqlx::query(
            "UPDATE environments SET feedback_due = CASE WHEN observed_rev = $1 THEN NULL ELSE $2 END, \
             feedback_retries = 0, feedback_error = NULL WHERE id = $3",
        )
        .bind(rev)
        .bind(self.now())
        .bind(id)
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("feedback done"))?;
        Ok(())
    }

    /// GitHub could not be told: try again at `retry_at`. The error is noted, and written to the event log
    /// when it differs from the last one (a retry loop does not flood the log).
    pub async fn feedback_failed(&self, id: i64, retry_at: i64, counted: bool, error: &str) -> Result<(), StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        lock_row(&mut tx, id).await?;
        let last: Option<String> = sqlx::query_scalar("SELECT feedback_error FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read feedback error"))?
            .flatten();
        sqlx::query(
            "UPDATE environments SET feedback_due = $1, feedback_error = $2, \
             feedback_retries = feedback_retries + $3 WHERE id = $4",
        )
        .bind(retry_at)
        .bind(error)
        .bind(i64::from(counted))
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("feedback failed"))?;
        if last.as_deref() != Some(error) {
            events::append(&mut tx, id, now, EventKind::Github, error).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// Asks for GitHub to be told about the environment again (a pull request was opened, say).
    pub async fn touch_feedback(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE environments SET {} WHERE id = $2", tell_github(1)))
            .bind(self.now())
            .bind(id)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("touch feedback"))?;
        Ok(())
    }

    /// The comments previewd keeps on the environment's pull requests.
    pub async fn pr_comments(&self, env_id: i64) -> Result<Vec<PrComment>, StoreError> {
        sqlx::query_as(
            "SELECT pr_number, comment_id, body_hash, author FROM pr_comments WHERE env_id = $1 ORDER BY pr_number",
        )
        .bind(env_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read comments"))
    }

    pub async fn set_pr_comment(&self, env_id: i64, c: &PrComment) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pr_comments (env_id, pr_number, comment_id, body_hash, author) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (env_id, pr_number) DO UPDATE SET comment_id = excluded.comment_id, \
             body_hash = excluded.body_hash, author = excluded.author",
        )
        .bind(env_id)
        .bind(c.pr_number)
        .bind(c.comment_id)
        .bind(c.body_hash.clone())
        .bind(c.author.clone())
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("set comment"))?;
        Ok(())
    }

    /// The open pull requests of these environments' branches (those previewd comments on), by
    /// environment, in one query.
    pub async fn pull_requests(&self, env_ids: &[i64]) -> Result<Vec<PullRequest>, StoreError> {
        if env_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT env_id, pr_number AS number, author FROM pr_comments WHERE env_id IN ({}) \
             ORDER BY env_id, pr_number",
            crate::placeholders(env_ids.len())
        );
        let mut query = sqlx::query_as::<_, PullRequest>(&sql);
        for id in env_ids {
            query = query.bind(*id);
        }
        query.fetch_all(&self.pool).await.map_err(db("read pull requests"))
    }

    pub async fn forget_pr_comment(&self, env_id: i64, pr_number: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pr_comments WHERE env_id = $1 AND pr_number = $2")
            .bind(env_id)
            .bind(pr_number)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("forget comment"))?;
        Ok(())
    }
}
