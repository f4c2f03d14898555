//! The work queue: environments due for a reconcile, handed out under leases whose epoch fences every
//! write the holder makes ([`Fence`]). Webhook-lane work goes first.

use previewd_domain::{CommitSha, RepoName, Status};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;

use crate::records::{ENV_COLUMNS, EnvRecord, EnvRow};
use crate::{Backend, Store, StoreError, db};

/// Which work an environment waits behind: due work in the webhook lane is handed out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Someone is waiting for the result: a webhook, or a person on the dashboard.
    Webhook = 0,
    /// Nobody is waiting: resync, the fleet observer, the reaper, polls.
    Background = 1,
}

/// An environment taken from the work queue under a lease: its id, the fencing token its writes carry,
/// and the request count it saw (a request made while it works keeps the environment due on release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Claim {
    pub id: i64,
    #[sqlx(rename = "lease_epoch")]
    pub epoch: i64,
    due_seq: i64,
}

impl Claim {
    pub fn fence(&self) -> Fence {
        Fence { id: self.id, epoch: Some(self.epoch) }
    }
}

/// Whose write of an environment's observed state this is. A write under a lease is applied only while
/// that lease is the environment's latest claim; a replica whose lease was taken over is refused
/// ([`StoreError::Fenced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub id: i64,
    epoch: Option<i64>,
}

impl Fence {
    pub fn lease(id: i64, epoch: i64) -> Self {
        Self { id, epoch: Some(epoch) }
    }

    /// No lease is checked: for set-up in tests and tools that hold no lease. The reconciler never uses it.
    pub fn unleased(id: i64) -> Self {
        Self { id, epoch: None }
    }

    /// The condition a fenced `UPDATE` adds, binding the epoch as `$n` when there is one.
    pub(crate) fn condition(&self, n: usize) -> String {
        match self.epoch {
            Some(_) => format!(" AND lease_epoch = ${n}"),
            None => String::new(),
        }
    }

    pub(crate) fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self.epoch {
            Some(e) => q.bind(e),
            None => q,
        }
    }

    pub(crate) fn check(&self, rows: u64) -> Result<(), StoreError> {
        match (rows, self.epoch) {
            (0, Some(_)) => Err(StoreError::Fenced { id: self.id }),
            _ => Ok(()),
        }
    }
}

/// How much work the queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct QueueStats {
    /// Environments waiting (due now or later) or being worked on.
    pub depth: i64,
    /// When the longest-waiting environment that is due and unclaimed became due.
    #[sqlx(rename = "oldest")]
    pub oldest_due: Option<i64>,
}

/// The `SET` of a request for a reconcile: due at `$3`/`$4` (or kept due sooner) in lane `$1`/`$2` (or the
/// more urgent lane it is in), and the request counted, so a holder releasing it learns it was asked for
/// meanwhile. SQL evaluates every `SET` expression against the row as it was.
const MARK_DUE: &str = "due_seq = due_seq + 1, \
     due_lane = CASE WHEN due_at IS NULL OR due_lane > $1 THEN $2 ELSE due_lane END, \
     due_at = CASE WHEN due_at IS NULL OR due_at > $3 THEN $4 ELSE due_at END";

/// Makes `id` due at `due_at` (or keeps it due sooner) in `lane` (or the more urgent lane it is in), and
/// counts the request (see [`MARK_DUE`]).
pub async fn mark_due(conn: &mut AnyConnection, id: i64, lane: Lane, due_at: i64) -> Result<(), StoreError> {
    let lane = lane as i64;
    sqlx::query(&format!("UPDATE environments SET {MARK_DUE} WHERE id = $5"))
        .bind(lane)
        .bind(lane)
        .bind(due_at)
        .bind(due_at)
        .bind(id)
        .execute(conn)
        .await
        .map_err(db("enqueue"))?;
    Ok(())
}

/// Makes due at `now`, in the webhook lane, every environment of `repo` that wants commit `sha`, waits for
/// something of it (its timeline says what) and is not being torn down (nor was torn down: deleting,
/// deleted, or expired by the reaper), as [`mark_due`] does; how many. What the commit's checks say is the
/// reconciler's to read; a ready or failed environment is not woken by every check of its commit.
pub async fn wake_commit(
    conn: &mut AnyConnection,
    repo: &RepoName,
    sha: &CommitSha,
    now: i64,
) -> Result<u64, StoreError> {
    let lane = Lane::Webhook as i64;
    let woken = sqlx::query(&format!(
        "UPDATE environments SET {MARK_DUE} WHERE repo = $5 AND desired_present = 1 AND desired_sha = $6 \
         AND status <> $7 AND status <> $8 AND expired_at IS NULL \
         AND id IN (SELECT env_id FROM timelines WHERE sha = $9 AND waiting_for IS NOT NULL)"
    ))
    .bind(lane)
    .bind(lane)
    .bind(now)
    .bind(now)
    .bind(repo.as_str())
    .bind(sha.as_str())
    .bind(Status::Deleting.as_str())
    .bind(Status::Deleted.as_str())
    .bind(sha.as_str())
    .execute(conn)
    .await
    .map_err(db("wake commit"))?;
    Ok(woken.rows_affected())
}

/// See [`Store::claim_due`].
pub async fn claim_due(
    conn: &mut AnyConnection,
    backend: Backend,
    holder: &str,
    until_ms: i64,
    now: i64,
) -> Result<Option<(Claim, EnvRecord)>, StoreError> {
    let skip_locked = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let row: Option<AnyRow> = sqlx::query(&format!(
        "UPDATE environments SET lease_owner = $1, lease_until = $2, lease_epoch = lease_epoch + 1, due_at = $3 \
         WHERE id = (SELECT id FROM environments WHERE due_at <= $4 AND (lease_owner IS NULL OR lease_until < $5) \
         ORDER BY due_lane, due_at, id LIMIT 1{skip_locked}) RETURNING {ENV_COLUMNS}, due_seq"
    ))
    .bind(holder)
    .bind(until_ms)
    .bind(until_ms)
    .bind(now)
    .bind(now)
    .fetch_optional(conn)
    .await
    .map_err(db("claim"))?;
    row.map(|r| {
        use sqlx::FromRow as _;
        let claim = Claim::from_row(&r).map_err(db("claim"))?;
        let env = EnvRecord::try_from(EnvRow::from_row(&r).map_err(db("claim"))?)?;
        Ok((claim, env))
    })
    .transpose()
}

impl Store {
    /// Asks for a reconcile of `id` at `due_at` (or sooner, if it was due sooner already), in `lane` (a
    /// webhook-lane request upgrades background work; nothing downgrades it). Durable when this returns.
    pub async fn enqueue(&self, id: i64, lane: Lane, due_at: i64) -> Result<(), StoreError> {
        mark_due(&mut *self.write().await?, id, lane, due_at).await
    }

    /// Makes due now every environment of `repo` waiting at commit `sha` (see [`wake_commit`]): its checks
    /// concluded. Durable when this returns; how many were made due.
    pub async fn wake_commit(&self, repo: &RepoName, sha: &CommitSha) -> Result<u64, StoreError> {
        wake_commit(&mut *self.write().await?, repo, sha, self.now()).await
    }

    /// Takes the next due environment no live lease holds (webhook lane first, then the longest due)
    /// for `holder` until `until_ms`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never wait for
    /// each other; SQLite's single writer makes the one statement atomic. While the lease lasts the
    /// environment stays due at its end, so work whose holder dies is taken over then.
    /// The claimed environment's record comes with it, as the claim left it.
    pub async fn claim_due(&self, holder: &str, until_ms: i64) -> Result<Option<(Claim, EnvRecord)>, StoreError> {
        claim_due(&mut *self.writing(&self.queue).await?, self.backend, holder, until_ms, self.now()).await
    }

    /// Takes `id`'s lease for `holder` until `until_ms`, due or not, unless a live lease holds it: for a
    /// tool or test that must hold one environment still.
    pub async fn claim(&self, id: i64, holder: &str, until_ms: i64) -> Result<Option<Claim>, StoreError> {
        sqlx::query_as(
            "UPDATE environments SET lease_owner = $1, lease_until = $2, lease_epoch = lease_epoch + 1, \
             due_at = CASE WHEN due_at IS NULL THEN NULL ELSE $3 END \
             WHERE id = $4 AND (lease_owner IS NULL OR lease_until < $5) RETURNING id, lease_epoch, due_seq",
        )
        .bind(holder)
        .bind(until_ms)
        .bind(until_ms)
        .bind(id)
        .bind(self.now())
        .fetch_optional(&mut *self.writing(&self.queue).await?)
        .await
        .map_err(db("claim"))
    }

    /// Extends the lease of `claim` to `until_ms`; `false` when it was taken over (or released).
    pub async fn renew(&self, claim: &Claim, holder: &str, until_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE environments SET lease_until = $1 WHERE id = $2 AND lease_epoch = $3 AND lease_owner = $4",
        )
        .bind(until_ms)
        .bind(claim.id)
        .bind(claim.epoch)
        .bind(holder)
        .execute(&mut *self.writing(&self.queue).await?)
        .await
        .map_err(db("renew lease"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Ends the lease of `claim`: the environment is due again at `requeue_at` if given, at once if a
    /// reconcile was asked for while it was held, and otherwise not until something asks. Refused
    /// ([`StoreError::Fenced`]) when the lease was taken over: the new holder's plan stands.
    pub async fn release(&self, claim: &Claim, requeue_at: Option<i64>) -> Result<(), StoreError> {
        let q = match requeue_at {
            Some(at) => sqlx::query(
                "UPDATE environments SET lease_owner = NULL, lease_until = NULL, \
                 due_at = CASE WHEN due_seq <> $1 AND due_at < $2 THEN due_at ELSE $3 END \
                 WHERE id = $4 AND lease_epoch = $5",
            )
            .bind(claim.due_seq)
            .bind(at)
            .bind(at),
            // Nothing more to do unless asked meanwhile; the lane is forgotten with the work.
            None => sqlx::query(
                "UPDATE environments SET lease_owner = NULL, lease_until = NULL, \
                 due_at = CASE WHEN due_seq <> $1 THEN due_at ELSE NULL END, \
                 due_lane = CASE WHEN due_seq <> $2 THEN due_lane ELSE 1 END \
                 WHERE id = $3 AND lease_epoch = $4",
            )
            .bind(claim.due_seq)
            .bind(claim.due_seq),
        };
        let r = q
            .bind(claim.id)
            .bind(claim.epoch)
            .execute(&mut *self.writing(&self.queue).await?)
            .await
            .map_err(db("release"))?;
        claim.fence().check(r.rows_affected())
    }

    /// The earliest time an environment can next be claimed (a held one: when its lease ends), for a
    /// dispatcher to sleep until.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND lease_until >= $1 THEN lease_until ELSE due_at END) \
             FROM environments WHERE due_at IS NOT NULL",
        )
        .bind(self.now())
        .fetch_one(&self.pool)
        .await
        .map_err(db("read queue"))
    }

    /// How much work the queue holds, counted in SQL.
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let now = self.now();
        sqlx::query_as(
            "SELECT COUNT(*) AS depth, \
             MIN(CASE WHEN due_at <= $1 AND (lease_owner IS NULL OR lease_until < $2) THEN due_at END) AS oldest \
             FROM environments WHERE due_at IS NOT NULL",
        )
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read queue"))
    }

    /// The environment's place in the queue when it is due: its lane (0 = webhook) and how many requests
    /// made it due (for tests and diagnostics).
    pub async fn due_state(&self, id: i64) -> Result<Option<(i64, i64)>, StoreError> {
        sqlx::query_as("SELECT due_lane, due_seq FROM environments WHERE id = $1 AND due_at IS NOT NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read queue"))
    }

    /// How many of `ids` are still due or being worked on.
    pub async fn pending(&self, ids: &[i64]) -> Result<i64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT COUNT(*) FROM environments WHERE due_at IS NOT NULL AND id IN ({})",
            crate::placeholders(ids.len())
        );
        let mut q = sqlx::query_scalar(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        q.fetch_one(&self.pool).await.map_err(db("read queue"))
    }
}
