//! previewd's records in SQLite (the default: a file, no set-up) or PostgreSQL (several replicas):
//! environments with their desired and observed state, webhook deliveries for deduplication, and an
//! append-only event log per environment.
//!
//! One set of named operations serves both databases through sqlx's `Any` driver with portable SQL
//! (`$1` placeholders, each bound once and in order, integers for times and flags). Migrations live in
//! `migrations/sqlite` and `migrations/postgres` and run at connect. This crate records; it decides
//! nothing: what a change means (a fold of desired states, which statuses hold resources, what a new
//! desire does to a status) is the domain's.
//!
//! One room per concern: [`records`] (what is stored, read through `FromRow`), [`environments`],
//! [`intake`] and [`batch`] (webhook deliveries), [`queue`] (leases and fences), [`events`],
//! [`feedback`] (what GitHub was told), [`seed`], [`stacks`] (what the reconciler last saw), [`upkeep`] (locks, reaper passes, counts) and
//! [`group`] (group commit). Operations that must share a transaction are free functions over a
//! connection, given the time; [`Store`] picks the connection (and, on SQLite, this process's turn to
//! write) and reads the time from its clock.

mod batch;
pub mod environments;
pub mod events;
mod feedback;
mod group;
pub mod intake;
pub mod queue;
mod records;
mod seed;
mod stacks;
mod timelines;
mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

pub use environments::{EnvFilter, Sort};
pub use group::DeliveryLog;
pub use queue::{Claim, Fence, Lane, QueueStats};
pub use records::{
    Delivery, DeploymentRecord, DesiredChange, EnvRecord, EventRecord, Observed, PrComment, PullRequest,
    ReaperPassRecord, Recorded, SeedOutcome, SeedProgress,
};
pub use stacks::{StackEvent, StackObservation};
pub use timelines::Timeline;

/// SQLite waits this long for another writer before giving up with "database is locked".
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// A request waits at most this long for a connection: well under GitHub's 10 s webhook deadline, so a
/// starved pool answers 503 (and GitHub marks the delivery failed) rather than timing out unseen.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
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

/// `$1, $2, …, $n`: the placeholders of an `IN (…)` list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
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
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    backend: Backend,
    /// Where the time written into records comes from.
    clock: Clock,
}

/// Milliseconds since the Unix epoch, as the store is to write them: the system's clock, or a test's.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn new(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(now_ms)
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// SQLite connections: WAL (readers never wait for the writer), `synchronous` as given, and a wait for
/// the writer's lock. A file connection cannot break, so it is not tested before each use (a round trip
/// to its thread).
fn sqlite_options(options: AnyPoolOptions, synchronous: &'static str) -> AnyPoolOptions {
    options
        .test_before_acquire(false)
        .after_connect(move |conn, _| Box::pin(async move { sqlite_setup(conn, synchronous).await }))
}

pub(crate) async fn sqlite_setup(conn: &mut sqlx::AnyConnection, synchronous: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str()).await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str()).await?;
    Ok(())
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
            // One connection first, alone: a pool that cannot connect says only that it timed out, and
            // hides why ("connection refused", a wrong password, a missing database).
            use sqlx::Connection as _;
            let first = tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::AnyConnection::connect(&url))
                .await
                .map_err(|_| StoreError::Db { op: "connect", source: sqlx::Error::PoolTimedOut })?
                .map_err(db("connect"))?;
            let _ = first.close().await;
            let pool = options().connect(&url).await.map_err(db("connect"))?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            return Ok(Self {
                writer: pool.clone(),
                queue: pool.clone(),
                pool,
                turn: None,
                backend,
                clock: Clock::default(),
            });
        }
        let pool = sqlite_options(options(), "FULL").connect(&url).await.map_err(db("connect"))?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let writer = sqlite_options(options().max_connections(SQLITE_WRITERS), "FULL");
        let queue = sqlite_options(options().max_connections(SQLITE_WRITERS), "NORMAL");
        Ok(Self {
            writer: writer.connect(&url).await.map_err(db("connect"))?,
            queue: queue.connect(&url).await.map_err(db("connect"))?,
            pool,
            turn: Some(Arc::default()),
            backend,
            clock: Clock::default(),
        })
    }

    /// The same store, writing the time `clock` tells (a test's).
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// The time now, by the store's clock.
    pub fn now(&self) -> i64 {
        (self.clock.0)()
    }

    /// A connection to read with.
    async fn read(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, StoreError> {
        self.pool.acquire().await.map_err(db("acquire"))
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
}
