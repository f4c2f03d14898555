//! Intake: webhook deliveries recorded with the desired state they carry, each delivery id once, in
//! the transaction that makes the environment due. One delivery at a time here; a batch in
//! [`crate::batch`], which leaves every environment as recording its deliveries one by one would.

use previewd_domain::{DeliveryOutcome, Desired, EventKind, Status};
use sqlx::{AnyConnection, Connection as _};

use crate::batch::{BatchPlan, record_batch, record_batch_at_once};
use crate::environments::desired_columns;
use crate::queue::{Lane, mark_due, wake_commit};
use crate::records::{Delivery, DesiredChange, Recorded, parse};
use crate::{ACQUIRE_TIMEOUT, Backend, Store, StoreError, db, events, sqlite_setup};

/// The row a delivery reads before it changes an environment.
#[derive(sqlx::FromRow)]
struct BranchRow {
    id: i64,
    desired_present: i64,
    desired_sha: Option<String>,
    status: String,
}

impl Store {
    /// Records a webhook delivery and the desired state it carries in one transaction: either both are
    /// durable when this returns `Ok`, or neither. A delivery id seen before changes nothing.
    pub async fn record_webhook(
        &self,
        delivery_id: &str,
        event: &str,
        change: Option<&DesiredChange>,
    ) -> Result<Recorded, StoreError> {
        let mut w = self.write().await?;
        record_one(&mut w, delivery_id, event, change, self.backend, self.now()).await
    }

    /// Records many deliveries in one transaction (one commit, one fsync), in order; a delivery id seen
    /// before, or earlier in `batch`, changes nothing. All are durable when this returns `Ok`, or none is.
    pub async fn record_webhooks(&self, batch: &[Delivery]) -> Result<Vec<Recorded>, StoreError> {
        let mut w = self.write().await?;
        record_many(&mut w, batch, self.backend, self.now()).await
    }

    /// Records a delivery that asks for GitHub to be told about a branch's environment again (a pull
    /// request was opened: it gets its comment), in one transaction: the delivery, and the environment's
    /// feedback made due. A delivery id seen before changes nothing; a branch without an environment is
    /// recorded with none.
    pub async fn record_feedback_request(
        &self,
        delivery_id: &str,
        event: &str,
        repo: &previewd_domain::RepoName,
        branch: &previewd_domain::BranchName,
    ) -> Result<Recorded, StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        if !insert_delivery(&mut tx, delivery_id, event, DeliveryOutcome::Recorded, now).await? {
            tx.rollback().await.map_err(db("rollback"))?;
            return Ok(Recorded::Duplicate);
        }
        let env_id: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE environments SET {} WHERE repo = $2 AND branch = $3 RETURNING id",
            crate::environments::tell_github(1)
        ))
        .bind(now)
        .bind(repo.as_str())
        .bind(branch.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("touch feedback"))?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(Recorded::New { env_id })
    }

    /// Records a delivery saying that checks concluded on commit `sha` of `repo`, and makes due every
    /// environment waiting at that commit ([`crate::queue::wake_commit`]), in one transaction. `None` for a
    /// delivery id seen before (nothing is woken again); else how many environments were made due.
    pub async fn record_commit_checked(
        &self,
        delivery_id: &str,
        event: &str,
        repo: &previewd_domain::RepoName,
        sha: &previewd_domain::CommitSha,
    ) -> Result<Option<u64>, StoreError> {
        let now = self.now();
        let (_turn, mut tx) = self.begin_write().await?;
        if !insert_delivery(&mut tx, delivery_id, event, DeliveryOutcome::Recorded, now).await? {
            tx.rollback().await.map_err(db("rollback"))?;
            return Ok(None);
        }
        let woken = wake_commit(&mut tx, repo, sha, now).await?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(Some(woken))
    }

    /// A connection for the delivery committer alone ([`crate::DeliveryLog`]), opened as the writer's are
    /// but outside the pool: a batch then pays neither the pool's hand-off nor the round trips sqlx makes
    /// to test a connection as it leaves and returns to the pool. Waited for no longer than the pool is.
    pub(crate) async fn open_writer(&self) -> Result<AnyConnection, StoreError> {
        let options = self.writer.connect_options();
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, AnyConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Db { op: "connect", source: sqlx::Error::PoolTimedOut })?
            .map_err(db("connect"))?;
        if self.backend == Backend::Sqlite {
            sqlite_setup(&mut conn, "FULL").await.map_err(db("connect"))?;
        } else {
            // Every statement of the intake finds its rows by an index. A plan PostgreSQL keeps for a
            // prepared statement, made while a table was small, would scan it whole ever after: the
            // environments a burst updates grow dead rows fast, and such scans took a tenth of the
            // database's time in the intake benchmark.
            use sqlx::Executor as _;
            conn.execute("SET enable_seqscan = off").await.map_err(db("connect"))?;
            // GitHub gives up on a delivery after 10 s, and redelivers: a batch still running then is of
            // no use, and would hold every delivery behind it.
            conn.execute("SET statement_timeout = '10s'").await.map_err(db("connect"))?;
        }
        Ok(conn)
    }
}

/// Records a delivery with its outcome; `false` when its id was seen before.
async fn insert_delivery(
    tx: &mut AnyConnection,
    delivery_id: &str,
    event: &str,
    outcome: DeliveryOutcome,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO deliveries (id, event, received_at, outcome) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(delivery_id)
    .bind(event)
    .bind(now)
    .bind(outcome.as_str())
    .execute(&mut *tx)
    .await
    .map_err(db("record delivery"))?;
    Ok(inserted.rows_affected() == 1)
}

async fn exists(tx: &mut AnyConnection, c: &DesiredChange) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM environments WHERE repo = $1 AND branch = $2")
        .bind(c.repo.as_str())
        .bind(c.branch.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("read environment"))?;
    Ok(n > 0)
}

/// The environment's row, locked until the transaction ends (on SQLite the transaction already holds the
/// write lock: its first statement wrote), so what is computed from it is not stale at the update.
async fn read_environment_row(
    tx: &mut AnyConnection,
    c: &DesiredChange,
    backend: Backend,
) -> Result<Option<BranchRow>, StoreError> {
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT id, desired_present, desired_sha, status FROM environments WHERE repo = $1 AND branch = $2{lock}"
    );
    sqlx::query_as(&sql)
        .bind(c.repo.as_str())
        .bind(c.branch.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("read environment"))
}

/// Inserts the environment or records its new desired state, and makes it due in `due` (see
/// [`mark_due`]) when given. A branch said to exist is no longer missing and its push time is noted; the
/// status an existing environment shows next is the domain's to say ([`Status::on_new_desire`]).
/// `unseen`: this transaction has just read that no row exists (one more read is spared).
pub(crate) async fn upsert_desired(
    tx: &mut AnyConnection,
    c: &DesiredChange,
    now: i64,
    backend: Backend,
    unseen: bool,
    due: Option<Lane>,
) -> Result<i64, StoreError> {
    let (present, sha) = desired_columns(&c.desired);
    let pushed_at = (present == 1).then_some(now);
    // Most deliveries are for an environment that exists: one read finds it, and nothing is inserted.
    // Otherwise the first choice of names, then the fallback: the unique index on (repo, env_key) decides
    // which is free, across replicas (a conflict on (repo, branch) means another just inserted it). A new
    // row is due as it is inserted.
    let mut inserted = None;
    let mut row = if unseen { None } else { read_environment_row(tx, c, backend).await? };
    if row.is_none() {
        for names in std::iter::once(&c.names).chain(c.fallback.as_ref()) {
            inserted = sqlx::query_scalar::<_, i64>(
                "INSERT INTO environments (repo, branch, env_key, stack_name, dns_name, desired_present, desired_sha, \
                 desired_at, status, pushed_at, created_at, updated_at, repo_display, observed_rev, feedback_due, \
                 due_at, due_lane, due_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 1, $14, $15, $16, $17) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(c.repo.as_str())
            .bind(c.branch.as_str())
            .bind(names.env_key.as_str())
            .bind(names.stack_name.as_str())
            .bind(names.dns_name.as_str())
            .bind(present)
            .bind(sha.clone())
            .bind(now)
            .bind(Status::Pending.as_str())
            .bind(pushed_at)
            .bind(now)
            .bind(now)
            .bind(c.repo_display.clone())
            .bind(now)
            .bind(due.map(|_| now))
            .bind(due.unwrap_or(Lane::Background) as i64)
            .bind(i64::from(due.is_some()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("insert environment"))?;
            if inserted.is_some() {
                break;
            }
            // A conflict on (repo, branch): another replica just inserted it, and it is changed below.
            if exists(tx, c).await? {
                row = read_environment_row(tx, c, backend).await?;
                break;
            }
        }
    }
    let id = match (inserted, &row) {
        (Some(id), _) => id,
        (None, Some(row)) => row.id,
        (None, None) => {
            return Err(StoreError::Corrupt {
                what: "environment key",
                value: format!("every key for {}:{} is taken", c.repo, c.branch),
            });
        }
    };
    if let (None, Some(row)) = (inserted, row) {
        let recorded = match row.desired_present {
            0 => Desired::Absent,
            _ => Desired::Present { sha: crate::records::sha(row.desired_sha)? },
        };
        let status: Status = parse("status", &row.status)?;
        let fold = Desired::fold(Some(&recorded), [&c.desired]);
        let (_, sha) = desired_columns(&fold.desired(None));
        let present = i64::from(fold.present);
        let any_present = i64::from(fold.any_present);
        sqlx::query(
            "UPDATE environments SET desired_present = $1, desired_sha = $2, desired_seq = desired_seq + 1, \
             desired_at = $3, status = $4, attempts = 0, retries = 0, \
             missing_since = CASE WHEN $5 = 1 THEN NULL ELSE missing_since END, \
             expired_at = CASE WHEN $6 = 1 THEN NULL ELSE expired_at END, \
             pushed_at = COALESCE($7, pushed_at), repo_display = COALESCE($8, repo_display), updated_at = $9, \
             observed_rev = observed_rev + 1, feedback_due = COALESCE(feedback_due, $10) WHERE id = $11",
        )
        .bind(present)
        .bind(sha)
        .bind(now)
        .bind(status.on_new_desire().as_str())
        .bind(any_present)
        .bind(any_present)
        .bind(pushed_at)
        .bind(c.repo_display.clone())
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("update desired"))?;
        if let Some(lane) = due {
            mark_due(tx, id, lane, now).await?;
        }
    }
    events::append(tx, id, now, EventKind::Webhook, &c.reason).await?;
    Ok(id)
}

/// One delivery: the delivery id, and the desired state it carries. See [`Store::record_webhook`].
async fn record_delivery(
    tx: &mut AnyConnection,
    delivery_id: &str,
    event: &str,
    change: Option<&DesiredChange>,
    now: i64,
    backend: Backend,
) -> Result<Recorded, StoreError> {
    let outcome = if change.is_some() { DeliveryOutcome::Recorded } else { DeliveryOutcome::Ignored };
    if !insert_delivery(tx, delivery_id, event, outcome, now).await? {
        return Ok(Recorded::Duplicate);
    }
    let env_id = match change {
        None => None,
        Some(c) => {
            // Due in the same transaction: a change acknowledged is a change some replica will reconcile.
            Some(upsert_desired(tx, c, now, backend, false, Some(Lane::Webhook)).await?)
        }
    };
    Ok(Recorded::New { env_id })
}

/// One delivery in a transaction of its own on `conn`, in the caller's turn to write.
pub(crate) async fn record_one(
    conn: &mut AnyConnection,
    delivery_id: &str,
    event: &str,
    change: Option<&DesiredChange>,
    backend: Backend,
    now: i64,
) -> Result<Recorded, StoreError> {
    let mut tx = conn.begin().await.map_err(db("begin"))?;
    let recorded = record_delivery(&mut tx, delivery_id, event, change, now, backend).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(recorded)
}

/// A batch of deliveries on `conn`, in the caller's turn to write: on PostgreSQL in one statement when it
/// can be ([`record_batch_at_once`]), else in a transaction ([`record_batch`]).
pub(crate) async fn record_many(
    conn: &mut AnyConnection,
    batch: &[Delivery],
    backend: Backend,
    now: i64,
) -> Result<Vec<Recorded>, StoreError> {
    let plan = BatchPlan::new(batch);
    if backend == Backend::Postgres
        && let Some(recorded) = record_batch_at_once(conn, batch, &plan, now).await?
    {
        return Ok(recorded);
    }
    let mut tx = conn.begin().await.map_err(db("begin"))?;
    let recorded = record_batch(&mut tx, batch, plan, now, backend).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(recorded)
}
