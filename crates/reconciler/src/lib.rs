//! The level-triggered core. Webhooks, timers and people only change desired state and enqueue; the
//! reconciler compares desired state (from the store, confirmed with GitHub) with observed state (the
//! stack in AWS) and takes one step toward agreement, records what it did, and requeues until they
//! agree. Every reconcile looks at the current state, never at the event that woke it, so duplicates,
//! reordering and restarts are harmless.

mod feedback;
mod fleet;
mod queue;
mod reaper;
mod reconcile;
mod seed;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::Aws;
use previewd_domain::{DnsZone, OwnerId, RepoName};
use previewd_github::GitHub;
use previewd_render::{Blueprint, RenderError, RepoLayers};
use previewd_store::{Store, StoreError, now_ms};
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::Instrument as _;

pub use queue::{Lane, Queue};
pub use reaper::{Decision, Outcome, ReaperSetup, Report, Verdict};
pub use seed::HOOK_SIGNATURE_HEADER;

/// The lock row that keeps the fleet observer to one replica.
pub const FLEET_LOCK: &str = "fleet-observer";
/// Deliveries are kept this long for deduplication (GitHub redelivers for up to 3 days).
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A repository previewd serves.
#[derive(Debug, Clone)]
pub struct RepoSetup {
    pub blueprint: String,
    pub zone: DnsZone,
    pub layers: RepoLayers,
    /// Live environments at most: a new branch over it is `skipped`, visibly, until one goes.
    pub max_environments: usize,
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
    /// DeleteObjects batches (1,000 keys each) one teardown step may take before the next step.
    pub empty_batches_per_step: usize,
    /// GitHub's API may lag its webhooks this long: a `delete` arriving this soon after a push is
    /// confirmed only once GitHub has had the time to show a re-created branch.
    pub api_lag: Duration,
}

impl Tuning {
    /// The wait before retrying after the `nth` failure in a row (1 for the first): from `retry_min`,
    /// doubling, up to `retry_max`, jittered.
    pub fn backoff(&self, nth: i64) -> Duration {
        let exp = nth.clamp(1, 16) as u32 - 1;
        jitter(self.retry_min.saturating_mul(2u32.saturating_pow(exp)).min(self.retry_max))
    }
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
            empty_batches_per_step: previewd_cloud::EMPTY_STEP_BATCHES,
            api_lag: Duration::from_secs(30),
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
    /// The role CloudFormation assumes for every stack operation (RoleARN).
    pub stack_role_arn: Option<String>,
    /// This process, as a lease holder.
    pub instance: String,
    pub tuning: Tuning,
    pub reaper: ReaperSetup,
    /// Signs the body a seed step's HTTP hook receives (`x-previewd-signature-256`).
    pub seed_hook_secret: Option<previewd_domain::Secret>,
    /// How GitHub hears about environments; `None`: it does not.
    pub feedback: Option<FeedbackSetup>,
}

/// GitHub feedback: deployments with statuses, and one comment on each open pull request.
#[derive(Debug, Clone)]
pub struct FeedbackSetup {
    /// The dashboard's address as people reach it (`https://previewd.example.com`), for `log_url`.
    pub dashboard_url: Option<String>,
    /// At least this long between two content-creating requests: GitHub's secondary limit is 80 a minute.
    pub write_gap: Duration,
}

/// What a reconcile step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Desired and observed agree (or a person must act): nothing to do until something changes.
    Done,
    /// Look again after this long.
    Requeue(Duration),
}

/// The reaper's schedule could not be set up (a cron expression it cannot parse, say).
#[derive(Debug, thiserror::Error)]
#[error("reaper schedule: {0}")]
pub struct ReaperScheduleError(#[from] JobSchedulerError);

/// One setting of an environment, with the layer that set it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SettingView {
    pub key: String,
    pub value: serde_json::Value,
    /// `blueprint defaults`, `stage staging`, `preview`, `branch pattern <glob>`, `branch overrides`.
    pub layer: String,
    pub source: String,
}

/// What AWS shows of an environment's stack, for people.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StackView {
    pub status: Option<String>,
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Newest first: `timestamp, logical id, status, reason`.
    pub events: Vec<(String, String, String, Option<String>)>,
    /// Why AWS could not be read, if it could not.
    pub error: Option<String>,
}

/// Stack events shown on an environment's page.
const STACK_EVENTS_SHOWN: usize = 20;

/// Checks a reaper schedule (cron, seconds first) before anything starts.
pub fn check_schedule(schedule: &str) -> Result<(), ReaperScheduleError> {
    Job::new_async(schedule, |_, _| Box::pin(async {}))?;
    Ok(())
}

/// Why a reconcile step stopped short. Errors from the layers below are kept whole, with their chain;
/// [`ReconcileError::needs_human`] says which kind the error policy sees.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Worth retrying later: throttling, an outage, a lost connection.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help; the message says what a person should do.
    #[error("{0}")]
    NeedsHuman(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cloud(#[from] previewd_cloud::CloudError),
    #[error(transparent)]
    GitHub(#[from] previewd_github::GithubError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl ReconcileError {
    /// How long GitHub asked to wait, when it answered with a rate limit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::GitHub(g) => g.retry_after(),
            _ => None,
        }
    }

    /// Retrying will not help: the environment is `failed` until a person acts or a push asks again.
    pub fn needs_human(&self) -> bool {
        match self {
            ReconcileError::Transient(_) | ReconcileError::Store(_) => false,
            ReconcileError::NeedsHuman(_) | ReconcileError::Render(_) => true,
            ReconcileError::Cloud(e) => !e.is_retryable(),
            // An answer that will not change by asking again (a settings "file" that is a folder, say).
            ReconcileError::GitHub(e) => matches!(e, previewd_github::GithubError::Unexpected { .. }),
        }
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
    /// Branch settings files by repository and commit (a file at a commit never changes).
    pub(crate) settings_files: Mutex<HashMap<(RepoName, previewd_domain::CommitSha), Option<String>>>,
    /// One application-stack step per repository at a time in this process: environments of one
    /// repository share that stack, and two of them must not both create it.
    pub(crate) app_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
    /// For seed hooks.
    pub(crate) http: reqwest::Client,
    /// One admission under a repository's cap at a time in this process.
    pub(crate) admit_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
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
            settings_files: Mutex::new(HashMap::new()),
            app_locks: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            admit_locks: Mutex::new(HashMap::new()),
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

    pub fn owner(&self) -> &OwnerId {
        &self.inner.setup.owner
    }

    /// This process as a lease and lock holder.
    pub fn instance(&self) -> &str {
        &self.inner.setup.instance
    }

    /// Runs the workers, the fleet observer (every `resync_every`) and the reaper (on its cron schedule)
    /// until `shutdown` turns true; a reconcile under way finishes first (what it started in AWS is
    /// recorded and picked up again after a restart).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), ReaperScheduleError> {
        let mut scheduler = self.schedule_reaper().await?;
        let mut workers = self.spawn_workers(shutdown.clone());
        let this = self.clone();
        let stop = shutdown.clone();
        workers.spawn(async move { feedback::run(&this.inner, stop).await });
        let this = self.clone();
        workers.spawn(async move {
            let (store, me) = (&this.inner.store, this.inner.setup.instance.as_str());
            let every = this.inner.setup.tuning.resync_every;
            let mut starting = true;
            loop {
                // One replica observes the fleet: it holds a lock row it renews every pass; when it dies the
                // lock expires after two passes and another replica takes it. A replica that starts looks
                // once whoever holds it (a restart after a crash catches up at once; a second look is
                // harmless: it only enqueues).
                let until = now_ms() + every.saturating_mul(2).as_millis() as i64;
                let held = match store.try_lock(FLEET_LOCK, me, until).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = ?e, "cannot take the fleet observer's lock");
                        false
                    }
                };
                if held || starting {
                    this.resync().await;
                } else {
                    tracing::debug!("another replica observes the fleet");
                }
                starting = false;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            // Handed over at once on a clean stop.
            if let Err(e) = store.unlock(FLEET_LOCK, me).await {
                tracing::warn!(error = ?e, "cannot release the fleet observer's lock");
            }
        });
        while workers.join_next().await.is_some() {}
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "cannot stop the reaper's scheduler");
        }
        Ok(())
    }

    fn spawn_workers(&self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinSet<()> {
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
                    // The environment's names are filled in once the reconcile has read its record.
                    let span = tracing::info_span!(
                        "reconcile",
                        worker = n,
                        env_id = id,
                        repo = tracing::field::Empty,
                        branch = tracing::field::Empty,
                        env = tracing::field::Empty,
                        stack = tracing::field::Empty,
                    );
                    let requeue = this.work(id).instrument(span).await;
                    this.inner.queue.done(id, requeue);
                }
            });
        }
        workers
    }

    /// The reaper, on its cron schedule (seconds first).
    async fn schedule_reaper(&self) -> Result<JobScheduler, ReaperScheduleError> {
        let schedule = self.inner.setup.reaper.schedule.clone();
        let scheduler = JobScheduler::new().await?;
        let this = self.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let this = this.clone();
            Box::pin(async move {
                this.reap(false).instrument(tracing::info_span!("reaper")).await;
            })
        })?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(scheduler)
    }

    /// Runs the workers until the queue holds nothing, or `limit` has passed; returns whether it drained.
    /// `previewd reap` uses it to carry removals out when no server is running.
    pub async fn drain(&self, limit: Duration) -> bool {
        let (stop, stopped) = watch::channel(false);
        let mut workers = self.spawn_workers(stopped);
        let drained = tokio::time::timeout(limit, self.inner.queue.drained()).await.is_ok();
        let _ = stop.send(true);
        while workers.join_next().await.is_some() {}
        drained
    }

    /// The environment's settings and the layer that set each, as its last reconcile rendered them: the
    /// branch's `.previewd.toml` is included when this process has read it at the deployed commit (no
    /// GitHub call is made here). Empty for a repository no longer configured.
    pub fn settings(&self, env: &previewd_store::EnvRecord) -> Result<Vec<SettingView>, RenderError> {
        let Some(repo) = self.inner.setup.repos.get(&env.repo) else { return Ok(Vec::new()) };
        let Some(blueprint) = self.inner.blueprints.get(&repo.blueprint) else { return Ok(Vec::new()) };
        let own = env.deployed_sha.as_ref().and_then(|sha| {
            let files = self.inner.settings_files.lock().unwrap_or_else(|p| p.into_inner());
            let text = files.get(&(env.repo.clone(), sha.clone()))?.clone()?;
            let source = format!("{} at {}", reconcile::BRANCH_SETTINGS_FILE, sha.short());
            previewd_render::Layer::parse(previewd_render::LayerKind::Branch, source, &text).ok()
        });
        let settings =
            blueprint.environment_settings(previewd_domain::Stage::Staging, &env.branch, &repo.layers, own.as_ref())?;
        Ok(settings
            .iter()
            .map(|(key, s)| SettingView {
                key: key.to_owned(),
                value: serde_json::to_value(&s.value).unwrap_or_default(),
                layer: s.origin.kind.to_string(),
                source: s.origin.source.clone(),
            })
            .collect())
    }

    /// How many seed steps the environment's blueprint declares (0 for a repository no longer configured).
    pub fn seed_steps(&self, env: &previewd_store::EnvRecord) -> usize {
        let Some(repo) = self.inner.setup.repos.get(&env.repo) else { return 0 };
        self.inner.blueprints.get(&repo.blueprint).map_or(0, |b| b.seed.len())
    }

    /// The environment's stack as AWS shows it now: status, outputs, newest events. Read-only; an AWS
    /// error is reported in the view, not raised.
    pub async fn stack(&self, env: &previewd_store::EnvRecord) -> StackView {
        let aws = &self.inner.aws;
        let stack = match aws.describe_stack(&env.stack_name).await {
            Ok(Some(s)) if s.tag(reconcile::TAG_OWNER) == Some(self.inner.setup.owner.as_str()) => s,
            Ok(_) => return StackView::default(),
            Err(e) => return StackView { error: Some(e.to_string()), ..StackView::default() },
        };
        let events = match aws.stack_events(&stack.id).await {
            Ok(events) => events
                .into_iter()
                .take(STACK_EVENTS_SHOWN)
                .map(|e| (e.timestamp, e.logical_id, e.status, e.reason))
                .collect(),
            Err(e) => return StackView { error: Some(e.to_string()), ..StackView::default() },
        };
        StackView { status: Some(stack.status), outputs: stack.outputs, events, error: None }
    }

    /// One reaper pass now (see [`reaper`](crate::reaper)); a dry run changes nothing.
    pub async fn reap(&self, dry_run: bool) -> Report {
        self.inner.reap(dry_run).await
    }

    /// One pass of the fleet observer, and old deliveries forgotten; returns how many environments it
    /// enqueued. Failures are logged: the next pass looks again.
    pub async fn resync(&self) -> usize {
        let enqueued = match self.inner.resync_fleet().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "resync failed");
                0
            }
        };
        let cutoff = now_ms() - DELIVERY_RETENTION.as_millis() as i64;
        if let Err(e) = self.inner.store.prune_deliveries(cutoff).await {
            tracing::warn!(error = ?e, "cannot forget old deliveries");
        }
        tracing::debug!(enqueued, "resync");
        enqueued
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
        let started = std::time::Instant::now();
        let mut kind = "gone";
        let result = reconcile::reconcile(&self.inner, id, &mut kind).await;
        let outcome = match &result {
            Ok(Action::Done) => "done",
            Ok(Action::Requeue(_)) => "requeue",
            Err(e) if e.needs_human() => "failed",
            Err(_) => "retry",
        };
        let m = &previewd_metrics::METRICS;
        let labels = previewd_metrics::StepLabels { kind: kind.to_owned(), outcome: outcome.to_owned() };
        m.reconcile_steps.get_or_create(&labels).inc();
        m.reconcile_seconds
            .get_or_create(&previewd_metrics::KindLabel { kind: kind.to_owned() })
            .observe(started.elapsed().as_secs_f64());
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
        let requeue = match error.needs_human() {
            false => {
                observed.retries += 1;
                tracing::warn!(error = ?error, retries = observed.retries, "will retry");
                // GitHub said when: not before then.
                Some(t.backoff(observed.retries).max(error.retry_after().unwrap_or_default()))
            }
            true => {
                observed.status = previewd_domain::Status::Failed;
                tracing::error!(error = ?error, "needs a person");
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
