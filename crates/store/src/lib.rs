//! previewd's records in SQLite (the default: a file, no set-up) or PostgreSQL (several replicas):
//! environments with their desired and observed state, webhook deliveries for deduplication, and an
//! append-only event log per environment.
//!
//! One set of named operations serves both databases through sqlx's `Any` driver with portable SQL
//! (`$1` placeholders, each bound once and in order, integers for times and flags). Migrations live in
//! `migrations/sqlite` and `migrations/postgres` and run at connect. This crate records; it decides
//! nothing.

mod group;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use previewd_domain::{BranchName, CommitSha, Desired, EnvKey, EnvNames, OwnerId, RepoName, Status};
use serde::Serialize;
use sqlx::Arguments;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use group::DeliveryLog;

/// SQLite waits this long for another writer before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// A request waits at most this long for a connection: well under GitHub's 10 s webhook deadline, so a
/// starved pool answers 503 (and GitHub marks the delivery failed) rather than timing out unseen.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per process: the reconciler's workers, the web handlers and the timers share them.
const MAX_CONNECTIONS: u32 = 8;
/// How long a write waits for this process's turn on SQLite: as long as SQLite's own lock was waited for
/// before the process took turns itself (a burst of full intake batches is what it waits behind).
const WRITE_TURN_WAIT: Duration = Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS);
/// SQLite has one writer at a time; this process takes turns itself (see [`Store::write`]), so one
/// connection writes durably and one writes the work queue's bookkeeping (see [`Store::queue`]).
const SQLITE_WRITERS: u32 = 1;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Only the scheme is kept: the rest of a URL may hold a password.
    #[error("unsupported database URL scheme {0:?}: expected sqlite://PATH or postgres://…")]
    Url(String),
    #[error("database {op}: {source}")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database holds an invalid {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    /// The process is stopping: its delivery committer is gone.
    #[error("the store is closing")]
    Closed,
    /// Not tried: the database could not be reached for a delivery committed before this one.
    #[error("the database is unreachable: not tried")]
    Unavailable,
    /// The write came from a holder whose lease was taken over (or has ended): refused, nothing changed.
    #[error("environment {id}: this replica's lease was taken over; its write was refused")]
    Fenced { id: i64 },
}

impl StoreError {
    /// The writer no longer holds the environment: another replica does, and its work stands.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Fenced { .. })
    }
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store: a connection pool and the backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    /// Reads (and, on PostgreSQL, everything).
    pool: AnyPool,
    /// Writes that must survive the machine (`synchronous = FULL` on SQLite).
    writer: AnyPool,
    /// Claims, renewals and releases: on SQLite, a connection whose commits do not wait for an fsync
    /// (`synchronous = NORMAL`: durable when the process dies, perhaps not when the machine does). A
    /// claim lost with the machine is lost with its only holder, the process on it, and is made again;
    /// everything else waits for the disk. On PostgreSQL the same pool as the rest: a claim lost in a
    /// database crash while its holder lives elsewhere would let its epoch be handed out twice.
    queue: AnyPool,
    /// SQLite: this process's writers take turns here, in order, instead of meeting SQLite's lock, whose
    /// busy handler sleeps up to 100 ms at a time before it tries again. `None` on PostgreSQL.
    turn: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
    backend: Backend,
}

/// This process's turn to write to SQLite (nothing on PostgreSQL), held until it is dropped.
type Turn = Option<tokio::sync::OwnedMutexGuard<()>>;

/// A connection to write with, during this process's turn.
struct Writing {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    _turn: Turn,
}

impl std::ops::Deref for Writing {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for Writing {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

/// One environment as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvRecord {
    pub id: i64,
    pub repo: RepoName,
    /// The repository as GitHub spelled it in the last webhook, when one said.
    pub repo_display: Option<String>,
    pub branch: BranchName,
    pub env_key: EnvKey,
    pub stack_name: String,
    pub dns_name: String,
    pub desired: Desired,
    pub desired_seq: i64,
    pub desired_at: i64,
    pub status: Status,
    pub deployed_sha: Option<CommitSha>,
    pub stack_id: Option<String>,
    pub url: Option<String>,
    pub last_error: Option<String>,
    pub rule_priority: Option<i64>,
    pub seeded_at: Option<i64>,
    pub attempts: i64,
    pub retries: i64,
    /// When a complete listing or a direct look-up first lacked the branch; `None` while it is known to exist.
    pub missing_since: Option<i64>,
    /// Kept on purpose: exempt from the time-to-live and never removed by the reaper.
    pub keep: bool,
    /// The last push or branch creation a webhook reported.
    pub pushed_at: Option<i64>,
    /// When the reaper found it past its time-to-live: not wanted, although its branch exists, until the
    /// next push.
    pub expired_at: Option<i64>,
    /// The blueprint's seed steps are to run (from the first create, or a reseed) until `seeded_at`.
    pub seed_pending: bool,
    /// When seeding was last asked for.
    pub seed_requested_at: Option<i64>,
    /// The next seed step (0-based), and the ECS task a running step waits for.
    pub seed_step: i64,
    pub seed_task: Option<String>,
    /// Each seed step's outcome, oldest first.
    pub seed_log: Vec<SeedOutcome>,
    /// Bumped by every write of observed state; GitHub is told about each revision.
    pub observed_rev: i64,
    /// When GitHub is next to be told; `None` once it knows the current state.
    pub feedback_due: Option<i64>,
    pub feedback_retries: i64,
    /// Why GitHub could not be told, the last time it could not.
    pub feedback_error: Option<String>,
    /// The GitHub deployment of the commit last reported, and the last state posted to it.
    pub deployment: Option<DeploymentRecord>,
    /// The fencing token of the environment's latest claim (see [`Claim`]).
    pub lease_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub id: i64,
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
    fn condition(&self, n: usize) -> String {
        match self.epoch {
            Some(_) => format!(" AND lease_epoch = ${n}"),
            None => String::new(),
        }
    }

    fn bind<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        match self.epoch {
            Some(e) => q.bind(e),
            None => q,
        }
    }

    fn check(&self, rows: u64) -> Result<(), StoreError> {
        match (rows, self.epoch) {
            (0, Some(_)) => Err(StoreError::Fenced { id: self.id }),
            _ => Ok(()),
        }
    }
}

/// How much work the queue holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Environments waiting (due now or later) or being worked on.
    pub depth: i64,
    /// When the longest-waiting environment that is due and unclaimed became due.
    pub oldest_due: Option<i64>,
}

/// One seed step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SeedOutcome {
    pub step: i64,
    pub name: String,
    pub kind: String,
    /// `ok` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub at: i64,
}

/// A GitHub deployment previewd created for an environment at a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentRecord {
    pub sha: CommitSha,
    pub id: i64,
    /// The last state posted (`in_progress`, `success`, `failure`, `inactive`), if any.
    pub state: Option<String>,
}

/// Seeding progress to record; see [`Store::seed_progress`].
#[derive(Debug, Clone, Default)]
pub struct SeedProgress {
    pub next_step: i64,
    pub task: Option<String>,
    pub outcome: Option<SeedOutcome>,
    /// Every step ended well: nothing is pending any more and `seeded_at` is set.
    pub finished: bool,
}

/// The comment previewd keeps on a pull request, with a hash of its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrComment {
    pub pr_number: i64,
    pub comment_id: i64,
    pub body_hash: String,
}

/// Which environments a listing shows: all filters optional; deleted ones only when asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFilter {
    pub repo: Option<RepoName>,
    pub status: Option<Status>,
    /// Part of the branch name or key, case-blind.
    pub text: Option<String>,
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

/// One entry of an environment's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub env_id: i64,
    pub at: i64,
    pub kind: String,
    pub message: String,
}

/// A reaper pass as recorded: when, its outcome (`clean`, `removed`, `refused`, `failed`), a one-line
/// summary and its decisions as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaperPassRecord {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub dry_run: bool,
    pub outcome: String,
    pub summary: String,
    pub decisions: String,
}

/// What a webhook asks for: a branch's desired state, with the names its environment goes by.
#[derive(Debug, Clone)]
pub struct DesiredChange {
    pub repo: RepoName,
    /// The repository as GitHub spells it, when the change came from GitHub.
    pub repo_display: Option<String>,
    pub branch: BranchName,
    /// The names a new environment takes (readable), unless another environment of the repository holds
    /// its key...
    pub names: EnvNames,
    /// ...then these (hashed, unique). An existing environment keeps the names it has.
    pub fallback: Option<EnvNames>,
    pub desired: Desired,
    /// Why, for the event log ("push a1b2c3d", "delete").
    pub reason: String,
}

/// The outcome of recording a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// This delivery id was recorded before: nothing changed.
    Duplicate,
    /// Recorded; the environment whose desired state changed, if any.
    New { env_id: Option<i64> },
}

/// A webhook delivery to record: GitHub's delivery id, the event, and the desired state it carries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub event: String,
    pub change: Option<DesiredChange>,
}

/// What the reconciler observed and did, written back in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub status: Status,
    pub deployed_sha: Option<CommitSha>,
    pub stack_id: Option<String>,
    pub url: Option<String>,
    pub last_error: Option<String>,
    /// Stack operations tried for the current desired state.
    pub attempts: i64,
    /// Transient errors in a row (the retry backoff grows with them).
    pub retries: i64,
}

impl EnvRecord {
    /// Every name the environment goes by: those recorded when it was first seen are its names for life.
    pub fn names(&self, owner: &OwnerId) -> EnvNames {
        EnvNames::recorded(owner, &self.repo, &self.branch, &self.env_key, &self.stack_name, &self.dns_name)
    }

    /// Writes under the lease this record was read under.
    pub fn fence(&self) -> Fence {
        Fence::lease(self.id, self.lease_epoch)
    }

    pub fn observed(&self) -> Observed {
        Observed {
            status: self.status,
            deployed_sha: self.deployed_sha.clone(),
            stack_id: self.stack_id.clone(),
            url: self.url.clone(),
            last_error: self.last_error.clone(),
            attempts: self.attempts,
            retries: self.retries,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

const ENV_COLUMNS: &str = "id, repo, repo_display, branch, env_key, stack_name, dns_name, desired_present, desired_sha, desired_seq, \
     desired_at, status, deployed_sha, stack_id, url, last_error, rule_priority, seeded_at, attempts, retries, missing_since, \
     keep, pushed_at, expired_at, seed_pending, seed_requested_at, seed_step, seed_task, seed_log, observed_rev, feedback_due, \
     feedback_retries, feedback_error, deployment_sha, deployment_id, deployment_state, lease_epoch, created_at, updated_at";

/// What every write of observed state sets besides: GitHub is to be told; `$n` binds the time now.
fn feedback_due(n: usize) -> String {
    format!("observed_rev = observed_rev + 1, feedback_due = COALESCE(feedback_due, ${n})")
}

fn env_from_row(row: &AnyRow) -> Result<EnvRecord, StoreError> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(db("read environment"));
    let get_os = |c: &str| row.try_get::<Option<String>, _>(c).map_err(db("read environment"));
    let get_i = |c: &str| row.try_get::<i64, _>(c).map_err(db("read environment"));
    let get_oi = |c: &str| row.try_get::<Option<i64>, _>(c).map_err(db("read environment"));
    let corrupt = |what: &'static str, value: &str| StoreError::Corrupt { what, value: value.to_owned() };
    let sha = |v: Option<String>| -> Result<Option<CommitSha>, StoreError> {
        v.map(|s| CommitSha::new(&s).map_err(|_| corrupt("commit", &s))).transpose()
    };
    let repo = get_s("repo")?;
    let branch = get_s("branch")?;
    let env_key = get_s("env_key")?;
    let status = get_s("status")?;
    let desired = if get_i("desired_present")? != 0 {
        Desired::Present { sha: sha(get_os("desired_sha")?)? }
    } else {
        Desired::Absent
    };
    Ok(EnvRecord {
        id: get_i("id")?,
        repo: RepoName::new(&repo).map_err(|_| corrupt("repository", &repo))?,
        repo_display: get_os("repo_display")?,
        branch: BranchName::new(&branch).map_err(|_| corrupt("branch", &branch))?,
        env_key: EnvKey::new(&env_key).map_err(|_| corrupt("environment key", &env_key))?,
        stack_name: get_s("stack_name")?,
        dns_name: get_s("dns_name")?,
        desired,
        desired_seq: get_i("desired_seq")?,
        desired_at: get_i("desired_at")?,
        status: Status::from_str(&status).map_err(|_| corrupt("status", &status))?,
        deployed_sha: sha(get_os("deployed_sha")?)?,
        stack_id: get_os("stack_id")?,
        url: get_os("url")?,
        last_error: get_os("last_error")?,
        rule_priority: get_oi("rule_priority")?,
        seeded_at: get_oi("seeded_at")?,
        attempts: get_i("attempts")?,
        retries: get_i("retries")?,
        missing_since: get_oi("missing_since")?,
        keep: get_i("keep")? != 0,
        pushed_at: get_oi("pushed_at")?,
        expired_at: get_oi("expired_at")?,
        seed_pending: get_i("seed_pending")? != 0,
        seed_requested_at: get_oi("seed_requested_at")?,
        seed_step: get_i("seed_step")?,
        seed_task: get_os("seed_task")?,
        seed_log: match get_os("seed_log")? {
            None => Vec::new(),
            Some(log) => serde_json::from_str(&log).map_err(|_| corrupt("seed log", &log))?,
        },
        observed_rev: get_i("observed_rev")?,
        feedback_due: get_oi("feedback_due")?,
        feedback_retries: get_i("feedback_retries")?,
        feedback_error: get_os("feedback_error")?,
        deployment: match (get_os("deployment_sha")?, get_oi("deployment_id")?) {
            (Some(s), Some(id)) => Some(DeploymentRecord {
                sha: CommitSha::new(&s).map_err(|_| corrupt("commit", &s))?,
                id,
                state: get_os("deployment_state")?,
            }),
            _ => None,
        },
        lease_epoch: get_i("lease_epoch")?,
        created_at: get_i("created_at")?,
        updated_at: get_i("updated_at")?,
    })
}

/// SQLite connections: WAL (readers never wait for the writer), `synchronous` as given, and a wait for
/// the writer's lock. A file connection cannot break, so it is not tested before each use (a round trip
/// to its thread).
fn sqlite_options(options: AnyPoolOptions, synchronous: &'static str) -> AnyPoolOptions {
    options
        .test_before_acquire(false)
        .after_connect(move |conn, _| Box::pin(async move { sqlite_setup(conn, synchronous).await }))
}

async fn sqlite_setup(conn: &mut sqlx::AnyConnection, synchronous: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str()).await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str()).await?;
    Ok(())
}

fn desired_columns(d: &Desired) -> (i64, Option<String>) {
    match d {
        Desired::Present { sha } => (1, sha.as_ref().map(|s| s.to_string())),
        Desired::Absent => (0, None),
    }
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing, WAL, fully synchronous so an acknowledged webhook
    /// survives a crash) or `postgres://…`, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            let scheme: String = url.split(':').next().unwrap_or("").chars().take(20).collect();
            return Err(StoreError::Url(scheme));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_owned(),
        };
        let options = || AnyPoolOptions::new().max_connections(MAX_CONNECTIONS).acquire_timeout(ACQUIRE_TIMEOUT);
        if backend == Backend::Postgres {
            let pool = options().connect(&url).await.map_err(db("connect"))?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            return Ok(Self { writer: pool.clone(), queue: pool.clone(), pool, turn: None, backend });
        }
        let pool = sqlite_options(options(), "FULL").connect(&url).await.map_err(db("connect"))?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let writer = sqlite_options(options().max_connections(SQLITE_WRITERS), "FULL");
        let queue = sqlite_options(options().max_connections(SQLITE_WRITERS), "NORMAL");
        Ok(Self {
            writer: writer.connect(&url).await.map_err(db("connect"))?,
            queue: queue.connect(&url).await.map_err(db("connect"))?,
            pool,
            turn: Some(std::sync::Arc::default()),
            backend,
        })
    }

    /// This process's turn to write (SQLite; at once on PostgreSQL).
    async fn take_turn(&self) -> Result<Turn, StoreError> {
        let Some(turn) = &self.turn else { return Ok(None) };
        match tokio::time::timeout(WRITE_TURN_WAIT, turn.clone().lock_owned()).await {
            Ok(turn) => Ok(Some(turn)),
            Err(_) => Err(StoreError::Db { op: "wait to write", source: sqlx::Error::PoolTimedOut }),
        }
    }

    /// This process's turn to write, then a connection of `pool`.
    async fn writing(&self, pool: &AnyPool) -> Result<Writing, StoreError> {
        let turn = self.take_turn().await?;
        let conn = pool.acquire().await.map_err(db("acquire"))?;
        Ok(Writing { conn, _turn: turn })
    }

    /// A connection for a write that must survive the machine.
    async fn write(&self) -> Result<Writing, StoreError> {
        self.writing(&self.writer).await
    }

    /// A transaction that writes, in this process's turn (dropped after the transaction ends).
    async fn begin_write(&self) -> Result<(Turn, sqlx::Transaction<'static, sqlx::Any>), StoreError> {
        let turn = self.take_turn().await?;
        Ok((turn, self.writer.begin().await.map_err(db("begin"))?))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.queue.close().await;
        self.writer.close().await;
        self.pool.close().await;
    }

    /// Records a webhook delivery and the desired state it carries in one transaction: either both are
    /// durable when this returns `Ok`, or neither. A delivery id seen before changes nothing.
    pub async fn record_webhook(
        &self,
        delivery_id: &str,
        event: &str,
        change: Option<&DesiredChange>,
    ) -> Result<Recorded, StoreError> {
        let mut w = self.write().await?;
        record_one(&mut w, delivery_id, event, change, self.backend).await
    }

    /// Records many deliveries in one transaction (one commit, one fsync), in order; a delivery id seen
    /// before, or earlier in `batch`, changes nothing. All are durable when this returns `Ok`, or none is.
    pub async fn record_webhooks(&self, batch: &[Delivery]) -> Result<Vec<Recorded>, StoreError> {
        let mut w = self.write().await?;
        record_many(&mut w, batch, self.backend).await
    }

    /// A connection for the delivery committer alone ([`DeliveryLog`]), opened as the writer's are but
    /// outside the pool: a batch then pays neither the pool's hand-off nor the round trips sqlx makes to
    /// test a connection as it leaves and returns to the pool. Waited for no longer than the pool is.
    pub(crate) async fn open_writer(&self) -> Result<sqlx::AnyConnection, StoreError> {
        use sqlx::Connection as _;
        let options = self.writer.connect_options();
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::AnyConnection::connect_with(&options))
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

    /// As [`Store::record_webhooks`], on `conn` (from [`Store::open_writer`]).
    pub(crate) async fn record_webhooks_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        batch: &[Delivery],
    ) -> Result<Vec<Recorded>, StoreError> {
        let _turn = self.take_turn().await?;
        record_many(conn, batch, self.backend).await
    }

    /// As [`Store::record_webhook`], on `conn` (from [`Store::open_writer`]).
    pub(crate) async fn record_webhook_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        delivery: &Delivery,
    ) -> Result<Recorded, StoreError> {
        let _turn = self.take_turn().await?;
        record_one(conn, &delivery.id, &delivery.event, delivery.change.as_ref(), self.backend).await
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
        let now = now_ms();
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
        commit_with_event(tx, r.rows_affected() == 1, id, now, "desired", reason).await
    }

    pub async fn get(&self, id: i64) -> Result<Option<EnvRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get environment"))?;
        row.as_ref().map(env_from_row).transpose()
    }

    pub async fn find(&self, repo: &RepoName, branch: &BranchName) -> Result<Option<EnvRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments WHERE repo = $1 AND branch = $2"))
            .bind(repo.as_str())
            .bind(branch.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("find environment"))?;
        row.as_ref().map(env_from_row).transpose()
    }

    /// Every environment, newest activity first.
    pub async fn list(&self) -> Result<Vec<EnvRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ENV_COLUMNS} FROM environments ORDER BY updated_at DESC, id DESC"))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list environments"))?;
        rows.iter().map(env_from_row).collect()
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
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b.clone());
        }
        let rows = query
            .bind(filter.limit.max(0))
            .bind(filter.offset.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list environments"))?;
        Ok((rows.iter().map(env_from_row).collect::<Result<_, _>>()?, total))
    }

    /// Asks for the environment to be deployed again at its desired commit: a new generation of its
    /// desired state, attempts forgotten, a `failed` one back to `pending`, an expired one alive again
    /// (its time-to-live counts afresh, as after a push).
    pub async fn redeploy(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let now = now_ms();
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
        let status = Status::from_str(&status).map_err(|_| StoreError::Corrupt { what: "status", value: status })?;
        sqlx::query(&format!(
            "UPDATE environments SET desired_seq = desired_seq + 1, desired_at = $1, status = $2, attempts = 0, \
                 retries = 0, expired_at = NULL, pushed_at = $3, updated_at = $4, {} WHERE id = $6",
            feedback_due(5)
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
        commit_with_event(tx, true, id, now, "redeploy", reason).await
    }

    /// Writes what the reconciler observed, and (if given) an event, in one transaction; refused when
    /// `fence`'s lease was taken over.
    pub async fn update_observed(
        &self,
        fence: Fence,
        o: &Observed,
        event: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let (_turn, mut tx) = self.begin_write().await?;
        let sql = format!(
            "UPDATE environments SET status = $1, deployed_sha = $2, stack_id = $3, url = $4, last_error = $5, \
                 attempts = $6, retries = $7, updated_at = $8, {} WHERE id = $10{}",
            feedback_due(9),
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
            append_event(&mut tx, fence.id, now, kind, message).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// Appends to an environment's event log.
    pub async fn add_event(&self, id: i64, kind: &str, message: &str) -> Result<(), StoreError> {
        let mut conn = self.write().await?;
        append_event(&mut conn, id, now_ms(), kind, message).await
    }

    /// The newest `limit` events of an environment, oldest first.
    pub async fn events(&self, id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, env_id, at, kind, message FROM events WHERE env_id = $1 ORDER BY id DESC LIMIT $2")
                .bind(id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(db("read events"))?;
        let mut events = rows
            .iter()
            .map(|r| {
                Ok(EventRecord {
                    id: r.try_get("id").map_err(db("read events"))?,
                    env_id: r.try_get("env_id").map_err(db("read events"))?,
                    at: r.try_get("at").map_err(db("read events"))?,
                    kind: r.try_get("kind").map_err(db("read events"))?,
                    message: r.try_get("message").map_err(db("read events"))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        events.reverse();
        Ok(events)
    }

    /// Asks for a reconcile of `id` at `due_at` (or sooner, if it was due sooner already), in `lane` (a
    /// webhook-lane request upgrades background work; nothing downgrades it). Durable when this returns.
    pub async fn enqueue(&self, id: i64, lane: Lane, due_at: i64) -> Result<(), StoreError> {
        let mut conn = self.write().await?;
        mark_due(&mut conn, id, lane, due_at).await
    }

    /// Takes the next due environment no live lease holds (webhook lane first, then the longest due)
    /// for `holder` until `until_ms`: `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never wait for
    /// each other; SQLite's single writer makes the one statement atomic. While the lease lasts the
    /// environment stays due at its end, so work whose holder dies is taken over then.
    /// The claimed environment's record comes with it, as the claim left it.
    pub async fn claim_due(&self, holder: &str, until_ms: i64) -> Result<Option<(Claim, EnvRecord)>, StoreError> {
        let now = now_ms();
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "UPDATE environments SET lease_owner = $1, lease_until = $2, lease_epoch = lease_epoch + 1, due_at = $3 \
             WHERE id = (SELECT id FROM environments WHERE due_at <= $4 AND (lease_owner IS NULL OR lease_until < $5) \
             ORDER BY due_lane, due_at, id LIMIT 1{skip_locked}) RETURNING {ENV_COLUMNS}, due_seq"
        ))
        .bind(holder)
        .bind(until_ms)
        .bind(until_ms)
        .bind(now)
        .bind(now)
        .fetch_optional(&mut *self.writing(&self.queue).await?)
        .await
        .map_err(db("claim"))?;
        row.as_ref().map(|r| Ok((claim_from_row(r)?, env_from_row(r)?))).transpose()
    }

    /// Takes `id`'s lease for `holder` until `until_ms`, due or not, unless a live lease holds it: for a
    /// tool or test that must hold one environment still.
    pub async fn claim(&self, id: i64, holder: &str, until_ms: i64) -> Result<Option<Claim>, StoreError> {
        let row = sqlx::query(
            "UPDATE environments SET lease_owner = $1, lease_until = $2, lease_epoch = lease_epoch + 1, \
             due_at = CASE WHEN due_at IS NULL THEN NULL ELSE $3 END \
             WHERE id = $4 AND (lease_owner IS NULL OR lease_until < $5) RETURNING id, lease_epoch, due_seq",
        )
        .bind(holder)
        .bind(until_ms)
        .bind(until_ms)
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&mut *self.writing(&self.queue).await?)
        .await
        .map_err(db("claim"))?;
        row.as_ref().map(claim_from_row).transpose()
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
        let now = now_ms();
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_owner IS NOT NULL AND lease_until >= $1 THEN lease_until ELSE due_at END) \
             FROM environments WHERE due_at IS NOT NULL",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read queue"))
    }

    /// How much work the queue holds, counted in SQL.
    pub async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT COUNT(*) AS depth, \
             MIN(CASE WHEN due_at <= $1 AND (lease_owner IS NULL OR lease_until < $2) THEN due_at END) AS oldest \
             FROM environments WHERE due_at IS NOT NULL",
        )
        .bind(now)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read queue"))?;
        Ok(QueueStats {
            depth: row.try_get("depth").map_err(db("read queue"))?,
            oldest_due: row.try_get("oldest").map_err(db("read queue"))?,
        })
    }

    /// How many of `ids` are still due or being worked on.
    /// The environment's place in the queue when it is due: its lane (0 = webhook) and how many requests
    /// made it due (for tests and diagnostics).
    pub async fn due_state(&self, id: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT due_lane, due_seq FROM environments WHERE id = $1 AND due_at IS NOT NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read queue"))?;
        row.map(|r| {
            Ok((r.try_get("due_lane").map_err(db("read queue"))?, r.try_get("due_seq").map_err(db("read queue"))?))
        })
        .transpose()
    }

    pub async fn pending(&self, ids: &[i64]) -> Result<i64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let marks: Vec<String> = (1..=ids.len()).map(|n| format!("${n}")).collect();
        let sql =
            format!("SELECT COUNT(*) FROM environments WHERE due_at IS NOT NULL AND id IN ({})", marks.join(", "));
        let mut q = sqlx::query_scalar(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        q.fetch_one(&self.pool).await.map_err(db("read queue"))
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

    /// Asks for the blueprint's seed steps to run (again) from the first: after the stack's first create,
    /// or on a reseed. The earlier outcomes are forgotten.
    pub async fn request_seed(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let (_turn, mut tx) = self.begin_write().await?;
        let r = sqlx::query(&format!(
            "UPDATE environments SET seed_pending = 1, seed_requested_at = $1, seed_step = 0, seed_task = NULL, \
             seed_log = NULL, seeded_at = NULL, updated_at = $2, {} WHERE id = $4",
            feedback_due(3)
        ))
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db("request seed"))?;
        commit_with_event(tx, r.rows_affected() == 1, id, now, "seed", reason).await
    }

    /// Records seeding progress: the step to run next, the ECS task it waits for, the outcome of the step
    /// that ended (appended to the log, and to the event log), and whether every step is done (then
    /// `seeded_at` is set).
    pub async fn seed_progress(&self, fence: Fence, progress: SeedProgress) -> Result<(), StoreError> {
        let now = now_ms();
        let (_turn, mut tx) = self.begin_write().await?;
        let id = fence.id;
        lock_row(&mut tx, id).await?;
        let log: Option<String> = sqlx::query_scalar("SELECT seed_log FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("read seed log"))?
            .flatten();
        let mut log: Vec<SeedOutcome> = match log {
            None => Vec::new(),
            Some(l) => serde_json::from_str(&l).map_err(|_| StoreError::Corrupt { what: "seed log", value: l })?,
        };
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
            feedback_due(7),
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
            append_event(&mut tx, id, now, "seed", &message).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// The repository's live environments, `except` one: those that hold AWS resources or are about to
    /// (provisioning, ready, deleting, or failed with a stack). A failure that created nothing (a branch's
    /// settings refused) holds no place under the cap.
    pub async fn count_live(&self, repo: &RepoName, except: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM environments WHERE repo = $1 AND id <> $2 \
             AND (status IN ('provisioning', 'ready', 'deleting') OR (status = 'failed' AND stack_id IS NOT NULL))",
        )
        .bind(repo.as_str())
        .bind(except)
        .fetch_one(&self.pool)
        .await
        .map_err(db("count live environments"))
    }

    /// Environments GitHub is due to be told about, soonest first, with the due time read (for
    /// [`Store::claim_feedback`]).
    pub async fn feedback_due(&self, now: i64, limit: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, feedback_due FROM environments WHERE feedback_due IS NOT NULL AND feedback_due <= $1 \
             ORDER BY feedback_due, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("feedback due"))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id").map_err(db("feedback due"))?,
                    r.try_get("feedback_due").map_err(db("feedback due"))?,
                ))
            })
            .collect()
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
        .bind(d.state.clone())
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
        .bind(now_ms())
        .bind(id)
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("feedback done"))?;
        Ok(())
    }

    /// GitHub could not be told: try again at `retry_at`. The error is noted, and written to the event log
    /// when it differs from the last one (a retry loop does not flood the log).
    pub async fn feedback_failed(&self, id: i64, retry_at: i64, counted: bool, error: &str) -> Result<(), StoreError> {
        let now = now_ms();
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
            append_event(&mut tx, id, now, "github", error).await?;
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(())
    }

    /// Asks for GitHub to be told about the environment again (a pull request was opened, say).
    pub async fn touch_feedback(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query(&format!("UPDATE environments SET {} WHERE id = $2", feedback_due(1)))
            .bind(now_ms())
            .bind(id)
            .execute(&mut *self.write().await?)
            .await
            .map_err(db("touch feedback"))?;
        Ok(())
    }

    /// The comments previewd keeps on the environment's pull requests.
    pub async fn pr_comments(&self, env_id: i64) -> Result<Vec<PrComment>, StoreError> {
        let rows = sqlx::query(
            "SELECT pr_number, comment_id, body_hash FROM pr_comments WHERE env_id = $1 ORDER BY pr_number",
        )
        .bind(env_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read comments"))?;
        rows.iter()
            .map(|r| {
                Ok(PrComment {
                    pr_number: r.try_get("pr_number").map_err(db("read comments"))?,
                    comment_id: r.try_get("comment_id").map_err(db("read comments"))?,
                    body_hash: r.try_get("body_hash").map_err(db("read comments"))?,
                })
            })
            .collect()
    }

    pub async fn set_pr_comment(&self, env_id: i64, c: &PrComment) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO pr_comments (env_id, pr_number, comment_id, body_hash) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (env_id, pr_number) DO UPDATE SET comment_id = excluded.comment_id, body_hash = excluded.body_hash",
        )
        .bind(env_id)
        .bind(c.pr_number)
        .bind(c.comment_id)
        .bind(c.body_hash.clone())
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("set comment"))?;
        Ok(())
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

    /// Records a desired state that no webhook carried (an owner-tagged stack adopted by the reaper), in
    /// one transaction with its event. Unlike a webhook it makes nothing due: the caller enqueues.
    pub async fn record_desired(&self, change: &DesiredChange) -> Result<i64, StoreError> {
        let (_turn, mut tx) = self.begin_write().await?;
        lock_branch(&mut tx, change).await?;
        let id = upsert_desired(&mut tx, change, now_ms(), self.backend, false, None).await?;
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
        let now = now_ms();
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
        commit_with_event(tx, r.rows_affected() == 1, id, now, "expired", reason).await
    }

    /// Marks the environment kept (or not), with the reason in its event log.
    pub async fn set_keep(&self, id: i64, keep: bool, reason: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let (_turn, mut tx) = self.begin_write().await?;
        sqlx::query("UPDATE environments SET keep = $1, updated_at = $2 WHERE id = $3")
            .bind(i64::from(keep))
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db("set keep"))?;
        commit_with_event(tx, true, id, now, "keep", reason).await.map(|_| ())
    }

    /// Takes the named lock for `holder` until `until_ms`, unless another holder has an unexpired one.
    pub async fn try_lock(&self, name: &str, holder: &str, until_ms: i64) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "INSERT INTO locks (name, holder, until) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
             SET holder = excluded.holder, until = excluded.until WHERE locks.until < $4 OR locks.holder = $5",
        )
        .bind(name)
        .bind(holder)
        .bind(until_ms)
        .bind(now_ms())
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
            .bind(now_ms())
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
        .bind(pass.outcome.clone())
        .bind(pass.summary.clone())
        .bind(pass.decisions.clone())
        .fetch_one(&mut *self.write().await?)
        .await
        .map_err(db("record reaper pass"))
    }

    /// Environments by status, counted in SQL (a metric must not load the fleet).
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.counts("SELECT status AS k, COUNT(*) AS n FROM environments GROUP BY status", "count environments").await
    }

    /// Reaper passes (not dry runs) by outcome, counted in SQL: a Prometheus counter that survives restarts.
    pub async fn reaper_pass_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT outcome AS k, COUNT(*) AS n FROM reaper_passes WHERE dry_run = 0 GROUP BY outcome";
        self.counts(sql, "count reaper passes").await
    }

    /// `(k, n)` rows of a grouped count.
    async fn counts(&self, sql: &'static str, op: &'static str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await.map_err(db(op))?;
        rows.iter().map(|r| Ok((r.try_get("k").map_err(db(op))?, r.try_get("n").map_err(db(op))?))).collect()
    }

    /// The newest reaper pass that was not a dry run, if any.
    pub async fn last_reaper_pass(&self) -> Result<Option<ReaperPassRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, started_at, finished_at, dry_run, outcome, summary, decisions FROM reaper_passes \
             WHERE dry_run = 0 ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read reaper pass"))?;
        row.map(|r| {
            Ok(ReaperPassRecord {
                id: r.try_get("id").map_err(db("read reaper pass"))?,
                started_at: r.try_get("started_at").map_err(db("read reaper pass"))?,
                finished_at: r.try_get("finished_at").map_err(db("read reaper pass"))?,
                dry_run: r.try_get::<i64, _>("dry_run").map_err(db("read reaper pass"))? != 0,
                outcome: r.try_get("outcome").map_err(db("read reaper pass"))?,
                summary: r.try_get("summary").map_err(db("read reaper pass"))?,
                decisions: r.try_get("decisions").map_err(db("read reaper pass"))?,
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

/// Ends a change of one environment: with its event when `changed`, else rolled back. Returns `changed`.
async fn commit_with_event(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    changed: bool,
    id: i64,
    at: i64,
    kind: &str,
    message: &str,
) -> Result<bool, StoreError> {
    if !changed {
        tx.rollback().await.map_err(db("rollback"))?;
        return Ok(false);
    }
    append_event(&mut tx, id, at, kind, message).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(true)
}

async fn append_event(
    conn: &mut sqlx::AnyConnection,
    env_id: i64,
    at: i64,
    kind: &str,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO events (env_id, at, kind, message) VALUES ($1, $2, $3, $4)")
        .bind(env_id)
        .bind(at)
        .bind(kind)
        .bind(message)
        .execute(conn)
        .await
        .map_err(db("append event"))?;
    Ok(())
}

async fn exists(tx: &mut sqlx::AnyConnection, c: &DesiredChange) -> Result<bool, StoreError> {
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
    tx: &mut sqlx::AnyConnection,
    c: &DesiredChange,
    backend: Backend,
) -> Result<Option<AnyRow>, StoreError> {
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT id, desired_present, desired_sha, status FROM environments WHERE repo = $1 AND branch = $2{lock}"
    );
    sqlx::query(&sql)
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
async fn upsert_desired(
    tx: &mut sqlx::AnyConnection,
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
        (None, Some(row)) => row.try_get("id").map_err(db("read environment"))?,
        (None, None) => {
            return Err(StoreError::Corrupt {
                what: "environment key",
                value: format!("every key for {}:{} is taken", c.repo, c.branch),
            });
        }
    };
    if let (None, Some(row)) = (inserted, row) {
        let was_present: i64 = row.try_get("desired_present").map_err(db("read environment"))?;
        let old_sha: Option<String> = row.try_get("desired_sha").map_err(db("read environment"))?;
        let status: String = row.try_get("status").map_err(db("read environment"))?;
        let status = Status::from_str(&status).map_err(|_| StoreError::Corrupt { what: "status", value: status })?;
        // A `create` event carries no commit: keep the one a push already told us.
        let sha = if present == 1 && sha.is_none() && was_present == 1 { old_sha } else { sha };
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
        .bind(present)
        .bind(present)
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
    append_event(tx, id, now, "webhook", &c.reason).await?;
    Ok(id)
}

/// One delivery: the delivery id, and the desired state it carries. See [`Store::record_webhook`].
async fn record_delivery(
    tx: &mut sqlx::AnyConnection,
    delivery_id: &str,
    event: &str,
    change: Option<&DesiredChange>,
    now: i64,
    backend: Backend,
) -> Result<Recorded, StoreError> {
    let outcome = if change.is_some() { "recorded" } else { "ignored" };
    let inserted = sqlx::query(
        "INSERT INTO deliveries (id, event, received_at, outcome) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(delivery_id)
    .bind(event)
    .bind(now)
    .bind(outcome)
    .execute(&mut *tx)
    .await
    .map_err(db("record delivery"))?;
    if inserted.rows_affected() == 0 {
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
async fn record_one(
    conn: &mut sqlx::AnyConnection,
    delivery_id: &str,
    event: &str,
    change: Option<&DesiredChange>,
    backend: Backend,
) -> Result<Recorded, StoreError> {
    use sqlx::Connection as _;
    let now = now_ms();
    let mut tx = conn.begin().await.map_err(db("begin"))?;
    let recorded = record_delivery(&mut tx, delivery_id, event, change, now, backend).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(recorded)
}

/// A batch of deliveries on `conn`, in the caller's turn to write: on PostgreSQL in one statement when it
/// can be ([`record_batch_at_once`]), else in a transaction ([`record_batch`]).
async fn record_many(
    conn: &mut sqlx::AnyConnection,
    batch: &[Delivery],
    backend: Backend,
) -> Result<Vec<Recorded>, StoreError> {
    use sqlx::Connection as _;
    let now = now_ms();
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

/// What a batch of deliveries asks for, as if every delivery were new: each delivery id's first
/// occurrence, and the branches they change, each with its deliveries folded ([`BranchUpdate`]).
struct BatchPlan<'a> {
    /// Indexes of the first occurrence of each delivery id; a later one is a duplicate.
    firsts: Vec<usize>,
    /// By branch, that branch's deliveries (indexes, in order) and what they change together.
    branches: BTreeMap<(&'a str, &'a str), (Vec<usize>, BranchUpdate)>,
}

impl<'a> BatchPlan<'a> {
    fn new(batch: &'a [Delivery]) -> Self {
        let mut seen = HashSet::new();
        let firsts: Vec<usize> = (0..batch.len()).filter(|&i| seen.insert(batch[i].id.as_str())).collect();
        Self::of(batch, firsts)
    }

    /// The plan for `deliveries` of `batch` only.
    fn of(batch: &'a [Delivery], deliveries: Vec<usize>) -> Self {
        let mut by_branch: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for &i in &deliveries {
            if let Some(c) = &batch[i].change {
                by_branch.entry((c.repo.as_str(), c.branch.as_str())).or_default().push(i);
            }
        }
        let branches = by_branch
            .into_iter()
            .map(|(key, is)| {
                let update = BranchUpdate::fold(is.iter().filter_map(|&i| batch[i].change.as_ref()));
                (key, (is, update))
            })
            .collect();
        Self { firsts: deliveries, branches }
    }

    /// The deliveries' rows for `INSERT INTO deliveries`, read by [`json_rows`] with [`DELIVERY_COLUMNS`].
    fn deliveries(&self, batch: &[Delivery]) -> Vec<serde_json::Value> {
        let outcome = |d: &Delivery| if d.change.is_some() { "recorded" } else { "ignored" };
        self.firsts
            .iter()
            .map(|&i| serde_json::json!({ "id": batch[i].id, "event": batch[i].event, "outcome": outcome(&batch[i]) }))
            .collect()
    }

    /// The branches' rows for [`BranchUpdate::set_clause`], read with [`UPDATE_COLUMNS`].
    fn updates(&self) -> Vec<serde_json::Value> {
        self.branches.iter().map(|(&(repo, branch), (_, u))| u.json(repo, branch)).collect()
    }

    /// Each delivery's answer: a duplicate unless it is a first occurrence, and then the environment it
    /// changed (`env_id` by repo and branch), if any.
    fn recorded(&self, batch: &[Delivery], env_ids: &HashMap<(String, String), i64>) -> Vec<Recorded> {
        let mut recorded = vec![Recorded::Duplicate; batch.len()];
        let key = |c: &DesiredChange| (c.repo.to_string(), c.branch.to_string());
        for &i in &self.firsts {
            recorded[i] =
                Recorded::New { env_id: batch[i].change.as_ref().and_then(|c| env_ids.get(&key(c)).copied()) };
        }
        recorded
    }

    /// One event row per delivery that changes a branch, in the batch's order, read with [`EVENT_COLUMNS`].
    fn events(&self, batch: &[Delivery]) -> Vec<serde_json::Value> {
        let mut rows: Vec<_> = self.branches.values().flat_map(|(is, _)| is.iter().copied()).collect();
        rows.sort_unstable();
        rows.iter()
            .filter_map(|&i| batch[i].change.as_ref())
            .map(|c| serde_json::json!({ "repo": c.repo.as_str(), "branch": c.branch.as_str(), "message": c.reason }))
            .collect()
    }
}

const DELIVERY_COLUMNS: [(&str, &str); 3] = [("id", "text"), ("event", "text"), ("outcome", "text")];
const UPDATE_COLUMNS: [(&str, &str); 8] = [
    ("repo", "text"),
    ("branch", "text"),
    ("present", "bigint"),
    ("sha", "text"),
    ("keep_sha", "bigint"),
    ("n", "bigint"),
    ("any_present", "bigint"),
    ("display", "text"),
];
const EVENT_COLUMNS: [(&str, &str); 3] = [("repo", "text"), ("branch", "text"), ("message", "text")];

/// One environment's deliveries of a batch, folded into what they change without reading the row first:
/// applied by [`BranchUpdate::set_clause`] to the row as it was, they leave what applying them one at a time
/// would ([`upsert_desired`]).
#[derive(Debug, Default)]
struct BranchUpdate {
    present: i64,
    sha: Option<String>,
    /// Every delivery carried a present state without a commit (a `create`): the recorded commit stays if
    /// the branch was wanted already, as it does one delivery at a time. `sha` is then `None`.
    keep_sha: bool,
    /// Some delivery said the branch exists: no longer missing or expired, pushed now.
    any_present: bool,
    /// The last spelling of the repository a delivery carried.
    display: Option<String>,
    n: i64,
}

impl BranchUpdate {
    /// `SET` of an `UPDATE environments … FROM {rows} AS v`, with `$2` the webhook lane and `$3` now. SQL
    /// evaluates every `SET` expression against the row as it was (see `mark_due`, whose arithmetic this
    /// repeats). The status moves as [`Status::on_new_desire`] moves it, once: it moves nowhere further.
    fn set_clause() -> &'static str {
        static SET: std::sync::LazyLock<String> = std::sync::LazyLock::new(BranchUpdate::make_set_clause);
        &SET
    }

    fn make_set_clause() -> String {
        let moves: String = Status::ALL
            .into_iter()
            .filter(|s| s.on_new_desire() != *s)
            .map(|s| format!(" WHEN '{}' THEN '{}'", s.as_str(), s.on_new_desire().as_str()))
            .collect();
        format!(
            "SET desired_present = v.present, \
             desired_sha = CASE WHEN v.keep_sha = 1 AND desired_present = 1 THEN desired_sha ELSE v.sha END, \
             desired_seq = desired_seq + v.n, desired_at = $3, status = CASE status{moves} ELSE status END, \
             attempts = 0, retries = 0, \
             missing_since = CASE WHEN v.any_present = 1 THEN NULL ELSE missing_since END, \
             expired_at = CASE WHEN v.any_present = 1 THEN NULL ELSE expired_at END, \
             pushed_at = CASE WHEN v.any_present = 1 THEN $3 ELSE pushed_at END, \
             repo_display = COALESCE(v.display, repo_display), updated_at = $3, \
             observed_rev = observed_rev + v.n, feedback_due = COALESCE(feedback_due, $3), \
             due_seq = due_seq + v.n, \
             due_lane = CASE WHEN due_at IS NULL OR due_lane > $2 THEN $2 ELSE due_lane END, \
             due_at = CASE WHEN due_at IS NULL OR due_at > $3 THEN $3 ELSE due_at END"
        )
    }

    fn fold<'c>(changes: impl IntoIterator<Item = &'c DesiredChange>) -> Self {
        // `None`: as recorded before the batch.
        let mut present: Option<i64> = None;
        let mut u = BranchUpdate::default();
        for c in changes {
            let (p, s) = desired_columns(&c.desired);
            if p == 1 && s.is_none() {
                // A `create` event carries no commit: keep the one a push already told us.
                match present {
                    Some(1) => {}
                    Some(_) => u.sha = None,
                    None => u.keep_sha = true,
                }
            } else {
                (u.sha, u.keep_sha) = (s, false);
            }
            present = Some(p);
            u.any_present |= p == 1;
            u.display = c.repo_display.clone().or(u.display);
            u.n += 1;
        }
        u.present = present.unwrap_or(0);
        u
    }

    fn json(&self, repo: &str, branch: &str) -> serde_json::Value {
        serde_json::json!({
            "repo": repo, "branch": branch, "present": self.present, "sha": self.sha,
            "keep_sha": i64::from(self.keep_sha), "n": self.n, "any_present": i64::from(self.any_present),
            "display": self.display,
        })
    }
}

/// PostgreSQL: a batch in one statement, so in one round trip with no `BEGIN` or `COMMIT` of its own,
/// when every delivery is new and every branch it changes is recorded (the usual case: GitHub
/// redelivers rarely, and a branch is new once). Otherwise it changes nothing and answers `None`. The
/// branches' rows are locked in (repo, branch) order, as every batch locks them. A delivery id inserted
/// meanwhile by another replica fails the statement, and with it the whole batch.
async fn record_batch_at_once(
    conn: &mut sqlx::AnyConnection,
    batch: &[Delivery],
    plan: &BatchPlan<'_>,
    now: i64,
) -> Result<Option<Vec<Recorded>>, StoreError> {
    // Its text is made once: it is the same for every batch.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH v AS (SELECT * FROM {v}), d AS (SELECT * FROM {d}), \
         env AS (SELECT id, repo, branch FROM environments WHERE (repo, branch) IN (SELECT repo, branch FROM v) \
           ORDER BY repo, branch FOR UPDATE), \
         ok AS (SELECT (SELECT count(*) FROM env) = $6 \
           AND NOT EXISTS (SELECT 1 FROM deliveries WHERE id IN (SELECT id FROM d)) AS ok), \
         ins AS (INSERT INTO deliveries (id, event, received_at, outcome) SELECT d.id, d.event, $3, d.outcome \
           FROM d WHERE (SELECT ok FROM ok) RETURNING 1), \
         upd AS (UPDATE environments {set} FROM v, env \
           WHERE (SELECT ok FROM ok) AND environments.id = env.id AND env.repo = v.repo AND env.branch = v.branch \
           RETURNING environments.id, environments.repo, environments.branch), \
         ev AS (INSERT INTO events (env_id, at, kind, message) SELECT env.id, $3, 'webhook', e.message \
           FROM {e} JOIN env ON env.repo = e.repo AND env.branch = e.branch WHERE (SELECT ok FROM ok) \
           ORDER BY e.ord RETURNING 1) \
         SELECT (SELECT ok FROM ok)::int::bigint AS ok, (SELECT count(*) FROM ins) AS ins, \
           (SELECT count(*) FROM ev) AS ev, upd.id, upd.repo, upd.branch FROM (SELECT 1) AS one \
           LEFT JOIN upd ON true",
            v = json_rows_at(Backend::Postgres, 1, "v", &UPDATE_COLUMNS),
            d = json_rows_at(Backend::Postgres, 4, "d", &DELIVERY_COLUMNS),
            e = json_rows_at(Backend::Postgres, 5, "e", &EVENT_COLUMNS),
            set = BranchUpdate::set_clause(),
        )
    });
    let events = plan.events(batch);
    let mut args = json_args(&plan.updates(), &[Lane::Webhook as i64, now])?;
    bind_json(&mut args, &plan.deliveries(batch))?;
    bind_json(&mut args, &events)?;
    bind(&mut args, plan.branches.len() as i64)?;
    let rows = match sqlx::query_with(SQL.as_str(), args).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        // Another replica recorded one of these deliveries meanwhile (a unique violation), or holds it
        // uncommitted while it waits for a row this statement locked (a deadlock, which PostgreSQL ends):
        // nothing was written, and the transaction tells the duplicates.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "40P01")) => return Ok(None),
        Err(e) => return Err(db("record deliveries")(e)),
    };
    // From here the statement has committed: its answer is read, and not second-guessed into an error
    // that would have the deliveries recorded again.
    let first = rows.first().ok_or(StoreError::Corrupt { what: "batch", value: "no answer".into() })?;
    let int = |c: &str| first.try_get::<i64, _>(c).map_err(db("record deliveries"));
    if int("ok")? != 1 {
        return Ok(None);
    }
    let ids = env_ids(&rows, "record deliveries")?;
    let done = (int("ins")?, ids.len(), int("ev")?);
    let asked = (plan.firsts.len() as i64, plan.branches.len(), events.len() as i64);
    if done != asked {
        tracing::error!(
            ?done,
            ?asked,
            "a batch wrote other counts than it asked for (deliveries, environments, events)"
        );
    }
    Ok(Some(plan.recorded(batch, &ids)))
}

/// The environments a statement answers with (`id`, `repo`, `branch`; a row whose `id` is NULL names
/// none), by repository and branch.
fn env_ids(rows: &[AnyRow], op: &'static str) -> Result<HashMap<(String, String), i64>, StoreError> {
    let mut ids = HashMap::new();
    for row in rows {
        if let Some(id) = row.try_get::<Option<i64>, _>("id").map_err(db(op))? {
            ids.insert((row.try_get("repo").map_err(db(op))?, row.try_get("branch").map_err(db(op))?), id);
        }
    }
    Ok(ids)
}

/// A batch of deliveries in a few statements, whatever its size: one insert of the delivery ids (those it
/// did not insert are duplicates), one update of the environments they change (on PostgreSQL after
/// locking them in (repo, branch) order, as every batch locks them) and one insert of their events. Each
/// environment ends as if its deliveries had been recorded one by one, in order ([`record_delivery`]); a
/// branch seen for the first time is inserted that way.
async fn record_batch(
    tx: &mut sqlx::AnyConnection,
    batch: &[Delivery],
    plan: BatchPlan<'_>,
    now: i64,
    backend: Backend,
) -> Result<Vec<Recorded>, StoreError> {
    // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT's FROM as a join's.
    let sql = format!(
        "INSERT INTO deliveries (id, event, received_at, outcome) SELECT d.id, d.event, $2, d.outcome FROM {} \
         WHERE true ON CONFLICT (id) DO NOTHING RETURNING id",
        json_rows(backend, "d", &DELIVERY_COLUMNS)
    );
    let args = json_args(&plan.deliveries(batch), &[now])?;
    let new: HashSet<String> = sqlx::query_scalar_with(&sql, args)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("record delivery"))?
        .into_iter()
        .collect();
    // The new deliveries only, if some were not.
    let plan = if new.len() == plan.firsts.len() {
        plan
    } else {
        BatchPlan::of(batch, plan.firsts.into_iter().filter(|&i| new.contains(&batch[i].id)).collect())
    };
    let mut ids = HashMap::new();
    if !plan.branches.is_empty() {
        let updates = plan.updates();
        if backend == Backend::Postgres {
            let sql = format!(
                "SELECT id FROM environments WHERE (repo, branch) IN (SELECT v.repo, v.branch FROM {}) \
                 ORDER BY repo, branch FOR UPDATE",
                json_rows(backend, "v", &UPDATE_COLUMNS)
            );
            sqlx::query_with(&sql, json_args(&updates, &[])?)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("lock environment"))?;
        }
        let sql = format!(
            "UPDATE environments {} FROM {} WHERE environments.repo = v.repo AND environments.branch = v.branch \
             RETURNING environments.id, environments.repo, environments.branch",
            BranchUpdate::set_clause(),
            json_rows(backend, "v", &UPDATE_COLUMNS)
        );
        let args = json_args(&updates, &[Lane::Webhook as i64, now])?;
        let rows = sqlx::query_with(&sql, args).fetch_all(&mut *tx).await.map_err(db("update desired"))?;
        ids = env_ids(&rows, "update desired")?;
    }
    let mut events = Vec::new();
    for (&(repo, branch), (deliveries, _)) in &plan.branches {
        let key = (repo.to_owned(), branch.to_owned());
        match ids.get(&key) {
            Some(&id) => events.extend(deliveries.iter().map(|&i| (i, id))),
            // A branch seen for the first time: inserted, then changed, one delivery at a time.
            None => {
                for (n, &i) in deliveries.iter().enumerate() {
                    let c = batch[i].change.as_ref().expect("grouped by its change");
                    ids.insert(key.clone(), upsert_desired(tx, c, now, backend, n == 0, Some(Lane::Webhook)).await?);
                }
            }
        }
    }
    if !events.is_empty() {
        // In the batch's order: the log reads by id.
        events.sort_unstable();
        let rows: Vec<_> = events
            .iter()
            .filter_map(|&(i, id)| {
                Some(serde_json::json!({ "env_id": id, "message": batch[i].change.as_ref()?.reason }))
            })
            .collect();
        let sql = format!(
            "INSERT INTO events (env_id, at, kind, message) SELECT e.env_id, $2, 'webhook', e.message FROM {} \
             ORDER BY e.ord",
            json_rows(backend, "e", &[("env_id", "bigint"), ("message", "text")])
        );
        sqlx::query_with(&sql, json_args(&rows, &[now])?).execute(&mut *tx).await.map_err(db("append event"))?;
    }
    Ok(plan.recorded(batch, &ids))
}

/// A batch's rows, sent as one JSON array (`$1`, see [`json_args`]), as a table `alias` with `columns`
/// (name, PostgreSQL type) and `ord`, each row's place in the array. The statement's text is the same
/// whatever the batch's size, so it is parsed and planned once per connection, not once per batch.
fn json_rows(backend: Backend, alias: &str, columns: &[(&str, &str)]) -> String {
    json_rows_at(backend, 1, alias, columns)
}

/// As [`json_rows`], from parameter `$param`.
fn json_rows_at(backend: Backend, param: usize, alias: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    match backend {
        Backend::Postgres => {
            let typed: Vec<String> = columns.iter().map(|(name, ty)| format!("{name} {ty}")).collect();
            format!(
                "ROWS FROM (json_to_recordset(${param}::json) AS ({})) WITH ORDINALITY AS {alias}({}, ord)",
                typed.join(", "),
                names.join(", ")
            )
        }
        Backend::Sqlite => {
            let read: Vec<String> = names.iter().map(|name| format!("value ->> '{name}' AS {name}")).collect();
            format!("(SELECT {}, key AS ord FROM json_each(${param})) AS {alias}", read.join(", "))
        }
    }
}

/// The arguments of a batch statement: its rows as one JSON parameter (`$1`, read by [`json_rows`]),
/// then `extra` (`$2`, …).
fn json_args(rows: &[serde_json::Value], extra: &[i64]) -> Result<AnyArguments<'static>, StoreError> {
    let mut args = AnyArguments::default();
    bind_json(&mut args, rows)?;
    for &v in extra {
        bind(&mut args, v)?;
    }
    Ok(args)
}

fn bind_json(args: &mut AnyArguments<'static>, rows: &[serde_json::Value]) -> Result<(), StoreError> {
    let json = serde_json::to_string(rows).map_err(|e| StoreError::Corrupt { what: "batch", value: e.to_string() })?;
    args.add(json).map_err(|e| StoreError::Db { op: "bind", source: sqlx::Error::Encode(e) })
}

fn bind(args: &mut AnyArguments<'static>, v: i64) -> Result<(), StoreError> {
    args.add(v).map_err(|e| StoreError::Db { op: "bind", source: sqlx::Error::Encode(e) })
}

/// Takes the write lock before a transaction reads what it then changes: SQLite refuses to turn a read
/// into a write once another writer has committed since ("database is locked", no busy wait), and on
/// PostgreSQL the row stays as read until the commit.
async fn lock_row(tx: &mut sqlx::AnyConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE environments SET updated_at = updated_at WHERE id = $1")
        .bind(id)
        .execute(tx)
        .await
        .map_err(db("lock environment"))?;
    Ok(())
}

/// As [`lock_row`], by repository and branch: for a transaction that may not know the id yet.
async fn lock_branch(tx: &mut sqlx::AnyConnection, c: &DesiredChange) -> Result<(), StoreError> {
    sqlx::query("UPDATE environments SET updated_at = updated_at WHERE repo = $1 AND branch = $2")
        .bind(c.repo.as_str())
        .bind(c.branch.as_str())
        .execute(tx)
        .await
        .map_err(db("lock environment"))?;
    Ok(())
}

fn claim_from_row(r: &AnyRow) -> Result<Claim, StoreError> {
    Ok(Claim {
        id: r.try_get("id").map_err(db("claim"))?,
        epoch: r.try_get("lease_epoch").map_err(db("claim"))?,
        due_seq: r.try_get("due_seq").map_err(db("claim"))?,
    })
}

/// Makes `id` due at `due_at` (or keeps it due sooner) in `lane` (or the more urgent lane it is in), and
/// counts the request, so a holder releasing it learns it was asked for meanwhile. SQL evaluates every
/// `SET` expression against the row as it was.
async fn mark_due(conn: &mut sqlx::AnyConnection, id: i64, lane: Lane, due_at: i64) -> Result<(), StoreError> {
    let lane = lane as i64;
    sqlx::query(
        "UPDATE environments SET due_seq = due_seq + 1, \
         due_lane = CASE WHEN due_at IS NULL OR due_lane > $1 THEN $2 ELSE due_lane END, \
         due_at = CASE WHEN due_at IS NULL OR due_at > $3 THEN $4 ELSE due_at END WHERE id = $5",
    )
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

#[cfg(test)]
mod tests {
    use previewd_domain::DnsZone;
    use sqlx::{Connection as _, Executor as _};

    use super::*;

    fn change(branch: &str, desired: Desired) -> DesiredChange {
        let repo = RepoName::new("acme/shop").expect("repo");
        let branch = BranchName::new(branch).expect("branch");
        let zone = DnsZone::new("p.example.com").expect("zone");
        let names = EnvNames::new(&OwnerId::new("t").expect("owner"), &repo, &branch, &zone);
        DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "test".into() }
    }

    pub(crate) fn push(id: &str, branch: &str, sha: Option<char>) -> Delivery {
        let sha = sha.map(|c| CommitSha::new(&c.to_string().repeat(40)).expect("sha"));
        Delivery { id: id.into(), event: "push".into(), change: Some(change(branch, Desired::Present { sha })) }
    }

    /// The one-statement path on PostgreSQL, called directly (the store suite cannot tell which path a
    /// batch took): it records a batch of new deliveries for recorded branches, and leaves everything as
    /// it was, answering `None`, when a delivery was seen before, a branch is new, or another replica
    /// inserts one of the ids while it runs.
    #[tokio::test]
    async fn postgres_records_a_usual_batch_in_one_statement_and_nothing_else() {
        let admin = std::env::var("PREVIEWD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        if admin == "skip" {
            eprintln!("PostgreSQL skipped: PREVIEWD_TEST_POSTGRES_URL=skip");
            return;
        }
        sqlx::any::install_default_drivers();
        let name = format!("previewd_unit_{}", std::process::id());
        let pool = AnyPool::connect(&admin).await.expect("PostgreSQL reachable (or PREVIEWD_TEST_POSTGRES_URL=skip)");
        pool.execute(format!("DROP DATABASE IF EXISTS {name}").as_str()).await.expect("drop");
        pool.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create");
        let (base, _) = admin.rsplit_once('/').expect("url with a database");
        let store = Store::connect(&format!("{base}/{name}")).await.expect("connect");
        let mut conn = store.open_writer().await.expect("writer");

        let a = store.record_webhook("a-0", "push", push("a-0", "a", Some('1')).change.as_ref()).await.expect("a");
        let b = store.record_webhook("b-0", "push", push("b-0", "b", Some('1')).change.as_ref()).await.expect("b");
        let (Recorded::New { env_id: Some(a) }, Recorded::New { env_id: Some(b) }) = (a.clone(), b.clone()) else {
            panic!("{a:?} {b:?}")
        };
        let state = async |store: &Store| {
            let env = |id| async move { store.get(id).await.expect("get").expect("env") };
            let (ea, eb) = (env(a).await, env(b).await);
            let events =
                store.events(a, 100).await.expect("events").len() + store.events(b, 100).await.expect("events").len();
            (
                store.delivery_count().await.expect("count"),
                ea.desired,
                ea.desired_seq,
                eb.desired,
                eb.desired_seq,
                events,
            )
        };

        // A push then a `create` (no commit) on `a`, a ping, and a push on `b` twice by the same id.
        let ping = Delivery { id: "p-1".into(), event: "ping".into(), change: None };
        let batch = [
            push("a-1", "a", Some('2')),
            push("a-2", "a", None),
            ping,
            push("b-1", "b", Some('3')),
            push("b-1", "b", Some('4')),
        ];
        let plan = BatchPlan::new(&batch);
        let recorded =
            record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.expect("batch").expect("in one statement");
        let new = |env_id| Recorded::New { env_id };
        assert_eq!(recorded, [new(Some(a)), new(Some(a)), new(None), new(Some(b)), Recorded::Duplicate]);
        let sha = |c: char| Some(CommitSha::new(&c.to_string().repeat(40)).expect("sha"));
        let after = state(&store).await;
        assert_eq!(
            after,
            (6, Desired::Present { sha: sha('2') }, 3, Desired::Present { sha: sha('3') }, 2, 5),
            "deliveries, each branch's desired state and generation, and the events"
        );

        // A delivery seen before, or a branch not recorded yet: not in one statement, and nothing changed.
        for batch in [
            [push("a-3", "a", Some('5')), push("b-1", "b", Some('5'))],
            [push("a-4", "a", Some('5')), push("c-0", "c", Some('5'))],
        ] {
            let plan = BatchPlan::new(&batch);
            assert_eq!(record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.expect("batch"), None);
            assert_eq!(state(&store).await, after);
            assert!(
                store
                    .find(&RepoName::new("acme/shop").expect("repo"), &BranchName::new("c").expect("branch"))
                    .await
                    .expect("find")
                    .is_none()
            );
        }

        // Another replica inserting one of the ids while this statement runs: the statement waits for it,
        // then fails on the id, and that is not an error but a batch for the transaction to sort out.
        let mut other = store.open_writer().await.expect("other");
        let mut tx = other.begin().await.expect("begin");
        sqlx::query("INSERT INTO deliveries (id, event, received_at, outcome) VALUES ('a-5', 'push', 0, 'recorded')")
            .execute(&mut *tx)
            .await
            .expect("insert");
        let racing = tokio::spawn(async move {
            let batch = [push("a-5", "a", Some('6'))];
            let plan = BatchPlan::new(&batch);
            record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.map(|r| (r, conn))
        });
        // Until the statement waits for the other transaction's id.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&store.pool)
        .await
        .expect("activity")
            == 0
        {
            assert!(std::time::Instant::now() < deadline, "the statement never waited for the other id");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tx.commit().await.expect("commit");
        let (answer, conn) = racing.await.expect("task").expect("a conflict is no error");
        assert_eq!(answer, None);
        let (_, desired, seq, ..) = state(&store).await;
        assert_eq!((desired, seq), (after.1.clone(), after.2), "the environment is as it was");

        conn.close().await.expect("close");
        other.close().await.expect("close");
        store.close().await;
        pool.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.expect("drop");
    }
}
