//! How each environment's current commit came up, phase by phase, and what it waits for now (the Ready
//! issue): one row per environment, started afresh for each commit by the reconciler, read by the API,
//! the dashboard and the pull request comment.

use std::collections::HashMap;

use previewd_domain::CommitSha;
use serde::Serialize;

use crate::records::sha;
use crate::{Fence, Store, StoreError, db};

/// The phases of one commit's way to `ready`, in milliseconds since the epoch; `None` until reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The commit these phases belong to.
    pub sha: CommitSha,
    pub pushed_at: Option<i64>,
    pub artifact_at: Option<i64>,
    pub infrastructure_at: Option<i64>,
    pub answered_at: Option<i64>,
    pub ready_at: Option<i64>,
    /// What the environment waits for now, since when, and the last answer it got (a probe's, a check's).
    pub waiting_for: Option<String>,
    pub waiting_since: Option<i64>,
    pub last_answer: Option<String>,
}

impl Timeline {
    /// A commit's timeline before any phase is reached.
    pub fn new(sha: CommitSha, pushed_at: Option<i64>) -> Self {
        Self {
            sha,
            pushed_at,
            artifact_at: None,
            infrastructure_at: None,
            answered_at: None,
            ready_at: None,
            waiting_for: None,
            waiting_since: None,
            last_answer: None,
        }
    }
}

const COLUMNS: &str = "env_id, sha, pushed_at, artifact_at, infrastructure_at, answered_at, ready_at, waiting_for, waiting_since, last_answer";

#[derive(sqlx::FromRow)]
struct TimelineRow {
    env_id: i64,
    sha: String,
    pushed_at: Option<i64>,
    artifact_at: Option<i64>,
    infrastructure_at: Option<i64>,
    answered_at: Option<i64>,
    ready_at: Option<i64>,
    waiting_for: Option<String>,
    waiting_since: Option<i64>,
    last_answer: Option<String>,
}

impl TryFrom<TimelineRow> for (i64, Timeline) {
    type Error = StoreError;

    fn try_from(r: TimelineRow) -> Result<Self, StoreError> {
        let commit = sha(Some(r.sha))?.ok_or(StoreError::Corrupt { what: "commit", value: String::new() })?;
        Ok((
            r.env_id,
            Timeline {
                sha: commit,
                pushed_at: r.pushed_at,
                artifact_at: r.artifact_at,
                infrastructure_at: r.infrastructure_at,
                answered_at: r.answered_at,
                ready_at: r.ready_at,
                waiting_for: r.waiting_for,
                waiting_since: r.waiting_since,
                last_answer: r.last_answer,
            },
        ))
    }
}

impl Store {
    /// The environment's timeline, if the reconciler has started one.
    pub async fn timeline(&self, env_id: i64) -> Result<Option<Timeline>, StoreError> {
        let row: Option<TimelineRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM timelines WHERE env_id = $1"))
            .bind(env_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read timeline"))?;
        row.map(|r| <(i64, Timeline)>::try_from(r).map(|(_, t)| t)).transpose()
    }

    /// The timelines of the environments `ids` (a page of a listing), by environment id: one query.
    pub async fn timelines(&self, ids: &[i64]) -> Result<HashMap<i64, Timeline>, StoreError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!("SELECT {COLUMNS} FROM timelines WHERE env_id IN ({})", crate::placeholders(ids.len()));
        let query = ids.iter().fold(sqlx::query_as::<_, TimelineRow>(&sql), |q, id| q.bind(*id));
        let rows = query.fetch_all(&self.pool).await.map_err(db("read timelines"))?;
        rows.into_iter().map(<(i64, Timeline)>::try_from).collect()
    }

    /// Records the environment's timeline; refused when `fence`'s lease was taken over.
    pub async fn record_timeline(&self, fence: Fence, t: &Timeline) -> Result<(), StoreError> {
        // `WHERE` before `ON CONFLICT`: SQLite would read a bare `SELECT`'s `ON` as a join's.
        let sql = format!(
            "INSERT INTO timelines ({COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM environments WHERE id = $11{}) \
             ON CONFLICT (env_id) DO UPDATE SET sha = excluded.sha, pushed_at = excluded.pushed_at, \
             artifact_at = excluded.artifact_at, infrastructure_at = excluded.infrastructure_at, \
             answered_at = excluded.answered_at, ready_at = excluded.ready_at, waiting_for = excluded.waiting_for, \
             waiting_since = excluded.waiting_since, last_answer = excluded.last_answer",
            fence.condition(12)
        );
        let q = sqlx::query(&sql)
            .bind(fence.id)
            .bind(t.sha.as_str().to_owned())
            .bind(t.pushed_at)
            .bind(t.artifact_at)
            .bind(t.infrastructure_at)
            .bind(t.answered_at)
            .bind(t.ready_at)
            .bind(t.waiting_for.clone())
            .bind(t.waiting_since)
            .bind(t.last_answer.clone())
            .bind(fence.id);
        let r = fence.bind(q).execute(&mut *self.write().await?).await.map_err(db("record timeline"))?;
        fence.check(r.rows_affected())
    }
}
