//! The level-triggered core. Webhooks, timers and people only change desired state and enqueue; the
//! reconciler compares desired state (from the store, confirmed with GitHub) with observed state (the
//! stack in AWS) and takes one step toward agreement, records what it did, and requeues until they
//! agree. Every reconcile looks at the current state, never at the event that woke it, so duplicates,
//! reordering and restarts are harmless.

mod queue;
mod reconcile;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::Aws;
use previewd_domain::{DnsZone, OwnerId, RepoName, Status};
use previewd_github::GitHub;
use previewd_render::{Blueprint, RenderError, RepoLayers};
use previewd_store::{Store, StoreError, now_ms};
use tokio::sync::watch;
use tracing::Instrument as _;

pub use queue::Queue;

/// Deliveries are kept this long for deduplication (GitHub redelivers for up to 3 days).
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A repository previewd serves.
#[derive(Debug, Clone)]
pub struct RepoSetup {
    pub blueprint: String,
    pub zone: DnsZone,
    pub layers: RepoLayers,
}

/// How the reconciler behaves; [`Tuning::default`] suits real AWS, tests shorten the waits.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Reconciles running at once, across all environments.
    pub workers: usize,
    /// Waiting for CloudFormation: the first look after an operation, and the longest gap between looks.
    /// In between, the gap grows with the time the operation has taken, so a long create is not polled
    /// every few seconds.
    pub poll_min: Duration,
    pub poll_max: Duration,
    /// After an error: the first retry delay, doubling per consecutive failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Every environment is looked at again this often (GitHub does not redeliver missed webhooks).
    pub resync_every: Duration,
    /// Stack operations tried for one desired state before the environment is reported `failed`.
    pub max_stack_attempts: i64,
    /// How long one replica may hold an environment; a crashed replica on another host blocks its
    /// environments this long. One reconcile step takes seconds, so this is generous.
    pub lease: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            workers: 4,
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(60),
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            resync_every: Duration::from_secs(300),
            max_stack_attempts: 3,
            lease: Duration::from_secs(120),
        }
    }
}

/// What the reconciler needs to know about this installation.
#[derive(Debug, Clone)]
pub struct Setup {
    pub owner: OwnerId,
    pub stacks_dir: PathBuf,
    pub repos: BTreeMap<RepoName, RepoSetup>,
    /// Where templates over 51,200 bytes are uploaded for a TemplateURL.
    pub template_bucket: Option<String>,
    /// This process, as a lease holder.
    pub instance: String,
    pub tuning: Tuning,
}

/// What a reconcile step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Desired and observed agree (or a person must act): nothing to do until something changes.
    Done,
    /// Look again after this long.
    Requeue(Duration),
}

/// Why a reconcile step stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Worth retrying later: throttling, an outage, a lost connection.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help; the message says what a person should do.
    #[error("{0}")]
    NeedsHuman(String),
}

impl From<StoreError> for ReconcileError {
    fn from(e: StoreError) -> Self {
        ReconcileError::Transient(e.to_string())
    }
}

impl From<previewd_cloud::CloudError> for ReconcileError {
    fn from(e: previewd_cloud::CloudError) -> Self {
        if e.is_retryable() {
            ReconcileError::Transient(e.to_string())
        } else {
            ReconcileError::NeedsHuman(e.to_string())
        }
    }
}

impl From<previewd_github::GithubError> for ReconcileError {
    fn from(e: previewd_github::GithubError) -> Self {
        match e {
            // An answer that will not change by asking again (a settings "file" that is a folder, say).
            previewd_github::GithubError::Unexpected { .. } => ReconcileError::NeedsHuman(e.to_string()),
            _ => ReconcileError::Transient(e.to_string()),
        }
    }
}

impl From<RenderError> for ReconcileError {
    fn from(e: RenderError) -> Self {
        ReconcileError::NeedsHuman(e.to_string())
    }
}

pub(crate) struct Inner {
    pub(crate) setup: Setup,
    pub(crate) store: Store,
    pub(crate) aws: Aws,
    pub(crate) github: GitHub,
    pub(crate) queue: Queue,
    pub(crate) blueprints: HashMap<String, Blueprint>,
    pub(crate) zone_ids: Mutex<HashMap<String, String>>,
    /// One application-stack step per repository at a time in this process: environments of one
    /// repository share that stack, and two of them must not both create it.
    pub(crate) app_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
}

/// The reconciler; cheap to clone.
#[derive(Clone)]
pub struct Reconciler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").field("owner", &self.inner.setup.owner).finish_non_exhaustive()
    }
}

impl Reconciler {
    /// Loads every configured repository's blueprint, so a bad one stops start-up rather than a reconcile.
    pub fn new(setup: Setup, store: Store, aws: Aws, github: GitHub) -> Result<Self, RenderError> {
        let mut blueprints = HashMap::new();
        for repo in setup.repos.values() {
            if !blueprints.contains_key(&repo.blueprint) {
                blueprints.insert(repo.blueprint.clone(), Blueprint::load(&setup.stacks_dir, &repo.blueprint)?);
            }
        }
        let inner = Inner {
            setup,
            store,
            aws,
            github,
            queue: Queue::new(),
            blueprints,
            zone_ids: Mutex::new(HashMap::new()),
            app_locks: Mutex::new(HashMap::new()),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The queue the web layer enqueues on.
    pub fn queue(&self) -> Queue {
        self.inner.queue.clone()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Runs the workers and the resync timer until `shutdown` turns true; a reconcile under way finishes
    /// first (what it started in AWS is recorded and picked up again after a restart).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..self.inner.setup.tuning.workers.max(1) {
            let this = self.clone();
            let mut stop = shutdown.clone();
            workers.spawn(async move {
                loop {
                    let id = tokio::select! {
                        id = this.inner.queue.next() => id,
                        _ = stop.wait_for(|s| *s) => break,
                    };
                    let requeue =
                        this.work(id).instrument(tracing::info_span!("reconcile", worker = n, env_id = id)).await;
                    this.inner.queue.done(id, requeue);
                }
            });
        }
        let this = self.clone();
        workers.spawn(async move {
            loop {
                if let Err(e) = this.resync().await {
                    tracing::warn!(error = ?e, "resync failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(this.inner.setup.tuning.resync_every) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        });
        while workers.join_next().await.is_some() {}
    }

    /// Enqueues every environment that is not settled, and forgets old deliveries. Settled: deleted and
    /// not wanted, or `failed` while wanted (a person acts, or a new push asks again: retrying a
    /// deployment on a timer would repeat what already failed).
    pub async fn resync(&self) -> Result<usize, StoreError> {
        let envs = self.inner.store.list().await?;
        let mut n = 0;
        for env in envs {
            let wanted = env.desired != previewd_domain::Desired::Absent;
            // A failed teardown is tried again: a stack left behind costs money until it goes.
            let settled = (env.status == Status::Failed && wanted) || (env.status == Status::Deleted && !wanted);
            if !settled {
                self.inner.queue.enqueue(env.id);
                n += 1;
            }
        }
        let cutoff = now_ms() - DELIVERY_RETENTION.as_millis() as i64;
        self.inner.store.prune_deliveries(cutoff).await?;
        tracing::debug!(enqueued = n, "resync");
        Ok(n)
    }

    /// One reconcile of one environment, under its lease, with the error policy applied; returns when to
    /// look again.
    async fn work(&self, id: i64) -> Option<Duration> {
        let t = &self.inner.setup.tuning;
        let until = now_ms() + t.lease.as_millis() as i64;
        match self.inner.store.claim(id, &self.inner.setup.instance, until).await {
            Ok(true) => {}
            Ok(false) => return Some(t.lease / 2), // another replica has it
            Err(e) => {
                tracing::warn!(error = ?e, "cannot claim environment");
                return Some(t.retry_min);
            }
        }
        let result = reconcile::reconcile(&self.inner, id).await;
        if result.is_ok()
            && let Err(e) = self.inner.store.reset_retries(id).await
        {
            tracing::warn!(error = ?e, "cannot reset retries");
        }
        let requeue = match result {
            Ok(Action::Done) => None,
            Ok(Action::Requeue(d)) => Some(d),
            Err(e) => self.error_policy(id, e).await,
        };
        if let Err(e) = self.inner.store.release(id, &self.inner.setup.instance).await {
            tracing::warn!(error = ?e, "cannot release environment");
        }
        requeue
    }

    /// Transient errors retry with jittered exponential backoff; the rest mark the environment `failed`
    /// with a message for a person, and wait for the next change.
    async fn error_policy(&self, id: i64, error: ReconcileError) -> Option<Duration> {
        let t = &self.inner.setup.tuning;
        let Ok(Some(env)) = self.inner.store.get(id).await else { return Some(t.retry_max) };
        let mut observed = env.observed();
        let message = error.to_string();
        observed.last_error = Some(message.clone());
        let requeue = match error {
            ReconcileError::Transient(_) => {
                observed.retries += 1;
                let exp = observed.retries.clamp(1, 16) as u32 - 1;
                let base = t.retry_min.saturating_mul(2u32.saturating_pow(exp)).min(t.retry_max);
                tracing::warn!(error = %message, retries = observed.retries, "will retry");
                Some(jitter(base))
            }
            ReconcileError::NeedsHuman(_) => {
                observed.status = Status::Failed;
                tracing::error!(error = %message, "needs a person");
                None
            }
        };
        let kind = if requeue.is_some() { "retry" } else { "failed" };
        if let Err(e) = self.inner.store.update_observed(id, &observed, Some((kind, &message))).await {
            tracing::warn!(error = ?e, "cannot record error");
            return Some(t.retry_min);
        }
        requeue
    }
}

/// `d` scaled by a random factor in [0.8, 1.2), so many environments failing together do not retry
/// together.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}
