//! Environments: reading them, and every change of their desired or observed state that is not a
//! webhook's (those are in [`crate::intake`]).

use previewd_domain::{Desired, EventKind, RepoName, Status};
use sqlx::AnyConnection;

use crate::records::{DesiredChange, ENV_COLUMNS, EnvRecord, EnvRow, Observed, parse};
use crate::{Fence, Store, StoreError, db, events, intake};

/// Which environments a listing shows: all filters optional; deleted ones only when asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFilter {
    pub repo: Option<RepoName>,
    pub status: Option<Status>,
    /// Part of the branch name or key, case-blind.
    pub text: Option<String>,
    /// Exactly this branch (Git's names are case-sensitive).
    pub branch: Option<String>,
    pub include_deleted: bool,
    pub sort: Sort,
    pub limit: i64,
    pub offset: i64,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// Newest activity first.
    #[default]
    Updated,
    Branch,
    Status,
    Repo,
}

impl Sort {
    pub fn parse(s: &str) -> Option<Sort> {
        Some(match s {
            "updated" => Sort::Updated,
            "branch" => Sort::Branch,
            "status" => Sort::Status,
            "repo" => Sort::Repo,
            _ => return None,
        })
    }

    fn order_by(self) -> &'static str {
        match self {
            Sort::Updated => "updated_at DESC, id DESC",
            Sort::Branch => "branch, repo, id",
            Sort::Status => "status, updated_at DESC, id DESC",
            Sort::Repo => "repo, branch, id",
        }
    }
}

/// What every write of observed state sets besides: GitHub is to be told; `$n` binds the time now.
pub(crate) fn tell_github(n: usize) -> String {
    format!("observed_rev = observed_rev + 1, feedback_due = COALESCE(feedback_due, ${n})")
}

/// The columns a desired state is stored in.
pub(crate) fn desired_columns(d: &Desired) -> (i64, Option<String>) {
    match d {
        Desired::Present { sha } => (1, sha.as_ref().map(|s| s.to_string())),
        Desired::Absent => (0, None),
    }
}

/// The condition "holds AWS resources or is about to" ([`Status::holds_resources`]) in SQL.
fn holding_resources() -> String {
    let words = |has_stack| {
        let holding: Vec<String> = Status::ALL
            .into_iter()
            .filter(|s| s.holds_resources(has_stack) && (!has_stack || !s.holds_resources(false)))
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        holding.join(", ")
    };
    format!("(status IN ({}) OR (status IN ({}) AND stack_id IS NOT NULL))", words(false), words(true))
}

pub(crate) fn rows(rows: Vec<EnvRow>) -> Result<Vec<EnvRecord>, StoreError> {
    rows.into_iter().map(EnvRecord::try_from).collect()
}

/// One environment by id.
pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Option<EnvRecord>, StoreError> {
    let row: Option<EnvRow> = sqlx::query_as(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
        .map_err(db("get environment"))?;
    row.map(EnvRecord::try_from).transpose()
}

/// Takes the write lock before a transaction reads what it then changes: SQLite refuses to turn a read
/// into a write once another writer has committed since ("database is locked", no busy wait), and on
/// PostgreSQL the row stays as read until the commit.
pub async fn lock_row(tx: &mut AnyConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE environments SET updated_at = updated_at WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await
        .map_err(db("lock environment"))?;
    Ok(())
}

/// Writes what the reconciler observed, and (if given) an event; refused when `fence`'s lease was taken
/// over.
pub async fn update_observed(
    tx: &mut AnyConnection,
    fence: Fence,
    o: &Observed,
    event: Option<(EventKind, &str)>,
    now: i64,
) -> Result<(), StoreError> {
    let sql = format!(
        "UPDATE environments SET status = $1, deployed_sha = $2, stack_id = $3, url = $4, last_error = $5, \
             attempts = $6, retries = $7, updated_at = $8, {} WHERE id = $10{}",
        tell_github(9),
        fence.condition(11)
    );
    let q = sqlx::query(&sql)
        .bind(o.status.as_str())
        .bind(o.deployed_sha.as_ref().map(|s| s.to_string()))
        .bind(o.stack_id.clone())
        .bind(o.url.clone())
        .bind(o.last_error.clone())
        .bind(o.attempts)
        .bind(o.retries)
        .bind(now)
        .bind(now)
        .bind(fence.id);
    let r = fence.bind(q).execute(&mut *tx).await.map_err(db("update observed"))?;
    fence.check(r.rows_affected())?;
    if let Some((kind, message)) = event {
        events::append(tx, fence.id, now, kind, message).await?;
    }
    Ok(())
}

impl Store {
    pub async fn get(&self, id: i64) -> Result<Option<EnvRecord>, StoreError> {
        get(&mut *self.read().await?, id).await
    }

    pub async fn find(
        &self,
        repo: &RepoName,
        branch: &previewd_domain::BranchName,
    ) -> Result<Option<EnvRecord>, StoreError> {
        let row: Option<EnvRow> =
            sqlx::query_as(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE repo = $1 AND branch = $2"))
                .bind(repo.as_str())
                .bind(branch.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("find environment"))?;
        row.map(EnvRecord::try_from).transpose()
    }

    /// Every environment, newest activity first.
    pub async fn list(&self) -> Result<Vec<EnvRecord>, StoreError> {
        let sql = format!("SELECT {ENV_COLUMNS} FROM environments ORDER BY updated_at DESC, id DESC");
        rows(sqlx::query_as(&sql).fetch_all(&self.pool).await.map_err(db("list environments"))?)
    }

    /// One page of environments matching `filter` (newest activity first), and how many match in all.
    /// Filtered and counted in SQL: a fleet of thousands is never loaded to show fifty.
    pub async fn list_page(&self, filter: &EnvFilter) -> Result<(Vec<EnvRecord>, i64), StoreError> {
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        if let Some(repo) = &filter.repo {
            binds.push(repo.to_string());
            clauses.push(format!("repo = ${}", binds.len()));
        }
        if let Some(status) = filter.status {
            binds.push(status.as_str().to_owned());
            clauses.push(format!("status = ${}", binds.len()));
        } else if !filter.include_deleted {
            binds.push(Status::Deleted.as_str().to_owned());
            clauses.push(format!("status <> ${}", binds.len()));
        }
        if let Some(text) = filter.text.as_deref().filter(|t| !t.is_empty()) {
            // LIKE's own wildcards in the text match themselves.
            let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            // Each placeholder is bound once (SQLite and PostgreSQL agree on that much).
            binds.push(format!("%{escaped}%"));
            binds.push(format!("%{escaped}%"));
            let n = binds.len();
            clauses.push(format!("(LOWER(branch) LIKE ${} ESCAPE '\\' OR env_key LIKE ${n} ESCAPE '\\')", n - 1));
        }
        if let Some(branch) = &filter.branch {
            binds.push(branch.clone());
            clauses.push(format!("branch = ${}", binds.len()));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let count_sql = format!("SELECT COUNT(*) FROM environments{filter_sql}");
        let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
        for b in &binds {
            count = count.bind(b.clone());
        }
        let total = count.fetch_one(&self.pool).await.map_err(db("count environments"))?;
        let sql = format!(
            "SELECT {ENV_COLUMNS} FROM environments{filter_sql} ORDER BY {} LIMIT ${} OFFSET ${}",
            filter.sort.order_by(),
            binds.len() + 1,
            binds.len() + 2
        );
        let mut query = sqlx::query_as::<_, EnvRow>(&sql);
        for b in &binds {
            query = query.bind(b.clone());
        }
        let page = query
            .bind(filter.limit.max(0))
            .bind(filter.offset.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list environments"))?;
        Ok((rows(page)?, total))
    }

    /// Changes an environment's desired state (the reconciler does when GitHub's answer differs from what
    /// webhooks said; the reaper when it has proof of absence), with the reason in the event log, but only
    /// while it is still at generation `seen_seq`: a webhook recorded since the caller looked wins, and
    /// `false` says so.
    pub async fn set_desired(
        &self,
        id: i64,
        seen_seq: i64,
        desired: &Desired,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let (present, sha) = desired_columns(desired);
        let (_turn, mut tx) = self.begin_write().await?;
        let r = sqlx::query(
            "UPDATE environments SET desired_present = $1, desired_sha = $2, desired_seq = desired_seq + 1, \
             desired_at = $3, missing_since = CASE WHEN $4 = 1 THEN NULL ELSE missing_since END, updated_at = $5 \
             WHERE id = $6 AND desired_seq = $7",
        )
        .bind(present)
        .bind(sha)
        .bind(now)
        .bind(present)
        .bind(now)
        .bind(id)
        .bind(seen_seq)
        .execute(&mut *tx)
        .await
        .map_err(db("set desired"))?;
        events::commit_with(tx, r.rows_affected() == 1, id, now, EventKind::Desired, reason).await
    }

    /// Asks for the environment to be deployed again at its desired commit: a new generation of its
    /// desired state, attempts forgotten, a `failed` one back to `pending`, an expired one alive again
    /// (its time-to-live counts afresh, as after a push).
    pub async fn redeploy(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        lock_row(&mut tx, id).await?;
        let Some(status) = sqlx::query_scalar::<_, String>("SELECT status FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read environment"))?
        else {
            return Ok(false);
        };
        let status: Status = parse("status", &status)?;
        sqlx::query(&format!(
            "UPDATE environments SET desired_seq = desired_seq + 1, desired_at = $1, status = $2, attempts = 0, \
                 retries = 0, expired_at = NULL, pushed_at = $3, updated_at = $4, {} WHERE id = $6",
            tell_github(5)
        ))
        .bind(now)
        .bind(status.on_new_desire().as_str())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("redeploy"))?;
        events::commit_with(tx, true, id, now, EventKind::Redeploy, reason).await
    }

    /// Writes what the reconciler observed, and (if given) an event, in one transaction; refused when
    /// `fence`'s lease was taken over.
    pub async fn update_observed(
        &self,
        fence: Fence,
        o: &Observed,
        event: Option<(EventKind, &str)>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        update_observed(&mut tx, fence, o, event, now).await?;
        tx.commit().await.map_err(db("commit"))
    }

    /// The environment's listener rule priority: kept once given, otherwise the first free one from
    /// `hint` on (1..=`max`), unique per repository.
    pub async fn allocate_priority(&self, id: i64, repo: &RepoName, hint: i64, max: i64) -> Result<i64, StoreError> {
        let current = || async {
            let env = self.get(id).await?.ok_or(StoreError::Corrupt { what: "environment", value: id.to_string() })?;
            Ok::<_, StoreError>(env.rule_priority)
        };
        if let Some(p) = current().await? {
            return Ok(p);
        }
        // The unique index on (repo, rule_priority) decides which candidate is free.
        for k in 0..max {
            let candidate = (hint - 1 + k).rem_euclid(max) + 1;
            let r = sqlx::query("UPDATE environments SET rule_priority = $1 WHERE id = $2 AND rule_priority IS NULL")
                .bind(candidate)
                .bind(id)
                .execute(&mut *self.write().await?)
                .await;
            match r {
                Ok(r) if r.rows_affected() == 1 => return Ok(candidate),
                // Given one meanwhile (a concurrent reconcile): that one stands.
                Ok(_) => {
                    return current().await?.ok_or(StoreError::Corrupt { what: "environment", value: id.to_string() });
                }
                Err(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation()) => continue,
                Err(e) => return Err(db("allocate priority")(e)),
            }
        }
        Err(StoreError::Corrupt { what: "rule priority", value: format!("all {max} taken in {repo}") })
    }

    /// Gives the environment the next free priority after `taken` (which something else holds on the
    /// listener), as [`Store::allocate_priority`] gives one: its record of `taken` goes first.
    pub async fn move_priority(&self, id: i64, repo: &RepoName, taken: i64, max: i64) -> Result<i64, StoreError> {
        sqlx::query("UPDATE environments SET rule_priority = NULL WHERE id = $1 AND rule_priority = $2")
            .bind(id)
            .bind(taken)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("move priority"))?;
        self.allocate_priority(id, repo, taken % max + 1, max).await
    }

    /// After a reconcile step that went through: the next error starts the backoff afresh.
    pub async fn reset_retries(&self, fence: Fence) -> Result<(), StoreError> {
        let sql = format!("UPDATE environments SET retries = 0 WHERE id = $1 AND retries <> 0{}", fence.condition(2));
        fence
            .bind(sqlx::query(&sql).bind(fence.id))
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("reset retries"))?;
        Ok(())
    }

    /// The repository's environments that hold AWS resources or are about to, `except` one
    /// ([`Status::holds_resources`]): those take a place under the repository's cap.
    pub async fn count_holding(&self, repo: &RepoName, except: i64) -> Result<i64, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT COUNT(*) FROM environments WHERE repo = $1 AND id <> $2 AND {}", holding_resources())
        });
        sqlx::query_scalar(&SQL)
            .bind(repo.as_str())
            .bind(except)
            .fetch_one(&self.pool)
            .await
            .map_err(db("count live environments"))
    }

    /// Records a desired state that no webhook carried (an owner-tagged stack adopted by the reaper), in
    /// one transaction with its event. Unlike a webhook it makes nothing due: the caller enqueues.
    pub async fn record_desired(&self, change: &DesiredChange) -> Result<i64, StoreError> {
        let (_turn, mut tx) = self.begin_write().await?;
        sqlx::query("UPDATE environments SET updated_at = updated_at WHERE repo = $1 AND branch = $2")
            .bind(change.repo.as_str())
            .bind(change.branch.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("lock environment"))?;
        let id = intake::upsert_desired(&mut tx, change, self.now(), self.backend, false, None).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(id)
    }

    /// Notes that a listing or look-up lacked the branch at `at`, unless an earlier absence is already
    /// noted (the grace counts from the first). Returns whether anything changed.
    pub async fn mark_missing(&self, id: i64, at: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE environments SET missing_since = $1 WHERE id = $2 AND missing_since IS NULL")
            .bind(at)
            .bind(id)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("mark missing"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Notes that the branch was seen again. Returns whether anything changed.
    pub async fn mark_seen(&self, id: i64) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE environments SET missing_since = NULL WHERE id = $1 AND missing_since IS NOT NULL")
            .bind(id)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("mark seen"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Records that the environment outlived its time-to-live: it is torn down although its branch
    /// exists, until the next push. Only while it is still at generation `seen_seq` (a push since wins).
    pub async fn expire(&self, id: i64, seen_seq: i64, reason: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        let r =
            sqlx::query("UPDATE environments SET expired_at = $1, updated_at = $2 WHERE id = $3 AND desired_seq = $4")
                .bind(now)
                .bind(now)
                .bind(id)
                .bind(seen_seq)
                .execute(&mut *tx)
                .await
                .map_err(db("expire"))?;
        events::commit_with(tx, r.rows_affected() == 1, id, now, EventKind::Expired, reason).await
    }

    /// Marks the environment kept (or not), with the reason in its event log.
    pub async fn set_keep(&self, id: i64, keep: bool, reason: &str) -> Result<(), StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        sqlx::query("UPDATE environments SET keep = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(keep))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("set keep"))?;
        events::commit_with(tx, true, id, now, EventKind::Keep, reason).await.map(|_| ())
    }
}
