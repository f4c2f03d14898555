//! The level-triggered core. Webhooks, timers and people only change desired state and enqueue; the
//! reconciler compares desired state (from the store, confirmed with GitHub) with observed state (the
//! stack in AWS) and takes one step toward agreement, records what it did, and requeues until they
//! agree. Every reconcile looks at the current state, never at the event that woke it, so duplicates,
//! reordering and restarts are harmless.

mod batch;
mod feedback;
mod fleet;
mod queue;
mod reaper;
mod reconcile;
mod seed;
mod settings_files;
mod sightings;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::Aws;
use previewd_domain::{DnsZone, OwnerId, RepoName};
use previewd_github::GitHub;
use previewd_render::{Blueprint, RenderError, RepoLayers};
use previewd_store::{Claim, EnvRecord, Store, StoreError, now_ms};
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::Instrument as _;

pub use previewd_store::Lane;
pub use queue::Queue;
pub use reaper::{Decision, Outcome, ReaperSetup, Report, Verdict};
pub use seed::HOOK_SIGNATURE_HEADER;

/// A dispatcher never polls the store more often than this, whatever it is told.
const IDLE_FLOOR: Duration = Duration::from_millis(20);
/// How often `drain` looks whether its environments are done.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// The lock row that keeps the fleet observer to one replica.
pub const FLEET_LOCK: &str = "fleet-observer";
/// The lock row a scheduled reaper pass takes for its tick, so replicas run one pass per tick.
pub const REAPER_TICK_LOCK: &str = "reaper-tick";
/// A tick's lock ends this long before the next tick, so clocks a little apart still see it free.
const TICK_MARGIN_MS: i64 = 250;
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
    /// How long one replica holds an environment before it must renew (a third of it, while a step runs);
    /// work whose holder dies is taken over this long after its last renewal.
    pub lease: Duration,
    /// With nothing due, a dispatcher looks in the store at least this often (another replica may have
    /// made work due; its own process's requests wake it at once).
    pub idle_poll: Duration,
    /// On stop, running steps may finish for this long; the rest are abandoned and handed back, due.
    pub stop_grace: Duration,
    /// DeleteObjects batches (1,000 keys each) one teardown step may take before the next step.
    pub empty_batches_per_step: usize,
    /// GitHub's API may lag its webhooks this long: a `delete` arriving this soon after a push is
    /// confirmed only once GitHub has had the time to show a re-created branch.
    pub api_lag: Duration,
    /// Looks at stacks being waited on, and DNS changes, that come within this long of each other share
    /// one AWS call (nobody waits on these: they are polls and teardowns).
    pub batch_window: Duration,
    /// One reconcile step may take this long. A step that takes longer (a seed script waiting on a lock in
    /// its database, say) is cut off and reported, and the environment is looked at again after a backoff:
    /// no step holds its environment, and a worker, for ever.
    pub step_limit: Duration,
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
            idle_poll: Duration::from_secs(1),
            stop_grace: Duration::from_secs(20),
            empty_batches_per_step: previewd_cloud::EMPTY_STEP_BATCHES,
            api_lag: Duration::from_secs(30),
            batch_window: Duration::from_millis(200),
            step_limit: Duration::from_secs(15 * 60),
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
    pub(crate) settings_files: Mutex<settings_files::SettingsFiles>,
    /// One application-stack step per repository at a time in this process: environments of one
    /// repository share that stack, and two of them must not both create it.
    pub(crate) app_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
    /// For seed hooks.
    pub(crate) http: reqwest::Client,
    /// One admission under a repository's cap at a time in this process.
    pub(crate) admit_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
    /// Repositories whose last admission found them at their cap.
    pub(crate) full: Mutex<HashSet<RepoName>>,
    /// What the last listing of stacks showed.
    pub(crate) sightings: Arc<sightings::Sightings>,
    pub(crate) looks: batch::Looks,
    pub(crate) dns_changes: batch::DnsChanges,
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
            queue: Queue::new(store.clone()),
            store,
            aws,
            github,
            blueprints,
            zone_ids: Mutex::new(HashMap::new()),
            settings_files: Mutex::new(settings_files::SettingsFiles::default()),
            app_locks: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            admit_locks: Mutex::new(HashMap::new()),
            full: Mutex::new(HashSet::new()),
            sightings: Arc::default(),
            looks: batch::Batcher::new(batch::MAX_LOOKS),
            dns_changes: batch::Batcher::new(batch::MAX_DNS_CHANGES),
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

    /// Runs the dispatcher, the fleet observer (every `resync_every`) and the reaper (on its cron schedule)
    /// until `shutdown` turns true; a reconcile under way finishes first, or is handed back after
    /// `stop_grace` (what it started in AWS is recorded and picked up again by whichever replica is next).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), ReaperScheduleError> {
        let mut scheduler = self.schedule_reaper().await?;
        let mut workers = tokio::task::JoinSet::new();
        let this = self.clone();
        let stop = shutdown.clone();
        workers.spawn(async move { this.dispatch(stop).await });
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

    /// Takes due work from the store and runs it, `workers` steps at a time, until `stop`; then lets the
    /// running steps finish for up to `stop_grace` and abandons the rest (handed back, due at once).
    async fn dispatch(&self, mut stop: watch::Receiver<bool>) {
        let t = &self.inner.setup.tuning;
        let slots = Arc::new(tokio::sync::Semaphore::new(t.workers.max(1)));
        let (abandon, abandoned) = watch::channel(false);
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = stop.wait_for(|s| *s) => break,
            };
            let until = now_ms() + t.lease.as_millis() as i64;
            match self.inner.store.claim_due(self.instance(), until).await {
                Ok(Some((claim, env))) => {
                    let (this, abandoned) = (self.clone(), abandoned.clone());
                    running.spawn(async move {
                        this.work(claim, env, abandoned).await;
                        drop(slot);
                        this.inner.queue.wake();
                    });
                    // The step starts before this looks for more work (whose claim would go first).
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = ?e, "cannot take due work"),
            }
            drop(slot);
            // Nothing due now: sleep until something is, this process asks, or another replica may have.
            let wait = match self.inner.store.next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64).min(t.idle_poll),
                _ => t.idle_poll,
            };
            tokio::select! {
                _ = self.inner.queue.woken() => {}
                _ = tokio::time::sleep(wait.max(IDLE_FLOOR)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let finish = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(t.stop_grace, finish).await.is_err() {
            tracing::warn!("stopping: steps still running after the grace are handed back");
            let _ = abandon.send(true);
            while running.join_next().await.is_some() {}
        }
    }

    /// The reaper, on its cron schedule (seconds first).
    async fn schedule_reaper(&self) -> Result<JobScheduler, ReaperScheduleError> {
        let schedule = self.inner.setup.reaper.schedule.clone();
        let scheduler = JobScheduler::new().await?;
        let this = self.clone();
        let tick_schedule = schedule.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let (this, schedule) = (this.clone(), tick_schedule.clone());
            Box::pin(async move {
                // One pass per tick across replicas: the first to fire takes the tick, until just before
                // the next one; the others let it be (and record nothing).
                let now = now_ms();
                let until = next_tick(&schedule, now).map_or(now + 60_000, |next| next - TICK_MARGIN_MS).max(now + 1);
                match this.inner.store.try_lock(REAPER_TICK_LOCK, this.instance(), until).await {
                    // A pass still running from an earlier tick (or `previewd reap`) covers this one.
                    Ok(true) if this.inner.store.lock_holder(reaper::LOCK).await.is_ok_and(|h| h.is_some()) => {
                        tracing::warn!("the reaper's previous pass is still running: this tick is skipped");
                    }
                    Ok(true) => {
                        this.reap(false).instrument(tracing::info_span!("reaper")).await;
                    }
                    Ok(false) => tracing::debug!("another replica runs this tick's reaper pass"),
                    Err(e) => tracing::warn!(error = ?e, "cannot take the reaper's tick; the next tick tries again"),
                };
            })
        })?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(scheduler)
    }

    /// Runs this process's dispatcher until none of `ids` is due or held any more (whichever replica did
    /// the work), or `limit` has passed; returns whether they all finished. `previewd reap` uses it to
    /// carry removals out when no server is running.
    pub async fn drain(&self, ids: &[i64], limit: Duration) -> bool {
        let (stop, stopped) = watch::channel(false);
        let this = self.clone();
        let dispatcher = tokio::spawn(async move { this.dispatch(stopped).await });
        let finished = tokio::time::timeout(limit, async {
            loop {
                match self.inner.store.pending(ids).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = ?e, "cannot read the queue"),
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await
        .is_ok();
        let _ = stop.send(true);
        let _ = dispatcher.await;
        finished
    }

    /// The environment's settings and the layer that set each, as its last reconcile rendered them: the
    /// branch's `.previewd.toml` is included when this process has read it at the deployed commit (no
    /// GitHub call is made here). Empty for a repository no longer configured.
    pub fn settings(&self, env: &previewd_store::EnvRecord) -> Result<Vec<SettingView>, RenderError> {
        let Some(repo) = self.inner.setup.repos.get(&env.repo) else { return Ok(Vec::new()) };
        let Some(blueprint) = self.inner.blueprints.get(&repo.blueprint) else { return Ok(Vec::new()) };
        let own = env.deployed_sha.as_ref().and_then(|sha| {
            let files = self.inner.settings_files.lock().unwrap_or_else(|p| p.into_inner());
            let text = files.get(&env.repo, sha)?.clone()?;
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

    /// One reconcile step of a claimed environment while its lease is renewed; then the lease is handed
    /// back with when to look again. A step whose lease is lost (taken over, or not renewable before it
    /// ends) is dropped where it stands and writes nothing more; one abandoned at stop is handed back due.
    async fn work(&self, claim: Claim, env: EnvRecord, mut abandoned: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "reconcile",
            env_id = claim.id,
            repo = tracing::field::Empty,
            branch = tracing::field::Empty,
            env = tracing::field::Empty,
            stack = tracing::field::Empty,
        );
        async {
            let requeue = tokio::select! {
                step = self.step(&claim, env) => match step {
                    Some(requeue) => requeue,
                    None => return tracing::warn!("lease taken over during the step: its write was refused"),
                },
                () = self.keep_lease(&claim) => {
                    return tracing::warn!("lease lost during the step: abandoned, another replica takes over");
                }
                _ = abandoned.wait_for(|a| *a) => Some(Duration::ZERO),
            };
            let at = requeue.map(|d| now_ms().saturating_add(d.as_millis() as i64));
            match self.inner.store.release(&claim, at).await {
                Ok(()) => {}
                Err(e) if e.is_fenced() => tracing::warn!("lease taken over before release"),
                // The lease ends by itself; the environment is due again then.
                Err(e) => tracing::warn!(error = ?e, "cannot release environment"),
            }
        }
        .instrument(span)
        .await
    }

    /// Renews `claim`'s lease every third of it; returns when it is lost: taken over, or not renewed
    /// (the store failing) before it ends.
    async fn keep_lease(&self, claim: &Claim) {
        let lease = self.inner.setup.tuning.lease;
        let mut ends = tokio::time::Instant::now() + lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let asked = tokio::time::Instant::now();
            let renewal = self.inner.store.renew(claim, self.instance(), now_ms() + lease.as_millis() as i64);
            // A renewal still unanswered when the lease ends proves nothing: the lease is lost then.
            let Ok(renewed) = tokio::time::timeout(ends.saturating_duration_since(asked), renewal).await else {
                return;
            };
            match renewed {
                Ok(true) => ends = asked + lease,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = ?e, "cannot renew the lease");
                    if tokio::time::Instant::now() + lease / 3 >= ends {
                        return;
                    }
                }
            }
        }
    }

    /// One reconcile with the error policy applied: when to look again, or `None` when the lease was
    /// taken over (nothing of this step is recorded then).
    async fn step(&self, claim: &Claim, env: EnvRecord) -> Option<Option<Duration>> {
        let started = std::time::Instant::now();
        let mut kind = "gone";
        let limit = self.inner.setup.tuning.step_limit;
        let stepped = tokio::time::timeout(limit, reconcile::reconcile(&self.inner, claim, env, &mut kind)).await;
        let cut_off = stepped.is_err();
        let result = stepped.unwrap_or_else(|_| {
            Err(ReconcileError::Transient(format!(
                "the step did not finish within [reconciler] step_limit ({}): cut off, to be tried again",
                reconcile::humanize(limit.as_millis() as i64)
            )))
        });
        let outcome = match &result {
            _ if cut_off => "cut_off",
            Ok(Action::Done) => "done",
            Ok(Action::Requeue(_)) => "requeue",
            Err(ReconcileError::Store(e)) if e.is_fenced() => "fenced",
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
            && let Err(e) = self.inner.store.reset_retries(claim.fence()).await
        {
            tracing::warn!(error = ?e, "cannot reset retries");
        }
        match result {
            Ok(Action::Done) => Some(None),
            Ok(Action::Requeue(d)) => Some(Some(d)),
            Err(ReconcileError::Store(e)) if e.is_fenced() => None,
            Err(e) => self.error_policy(claim, e).await,
        }
    }

    /// Transient errors retry with jittered exponential backoff; the rest mark the environment `failed`
    /// with a message for a person, and wait for the next change. `None`: the lease was taken over.
    async fn error_policy(&self, claim: &Claim, error: ReconcileError) -> Option<Option<Duration>> {
        let t = &self.inner.setup.tuning;
        let Ok(Some(env)) = self.inner.store.get(claim.id).await else { return Some(Some(t.retry_max)) };
        let mut observed = env.observed();
        // Errors quote what contributors wrote: kept and shown one line, bounded, without control characters.
        let message = previewd_domain::text::message(&error.to_string());
        observed.last_error = Some(message.clone());
        let requeue = match error.needs_human() {
            false => {
                observed.retries += 1;
                tracing::warn!(error = %message, retries = observed.retries, "will retry");
                // GitHub said when: not before then.
                Some(t.backoff(observed.retries).max(error.retry_after().unwrap_or_default()))
            }
            true => {
                observed.status = previewd_domain::Status::Failed;
                tracing::error!(error = %message, "needs a person");
                None
            }
        };
        let kind = if requeue.is_some() { "retry" } else { "failed" };
        // Under the claim's own fence: the record just read may already be another holder's.
        match self.inner.store.update_observed(claim.fence(), &observed, Some((kind, &message))).await {
            Ok(()) => Some(requeue),
            Err(e) if e.is_fenced() => None,
            Err(e) => {
                tracing::warn!(error = ?e, "cannot record error");
                Some(Some(t.retry_min))
            }
        }
    }
}

/// When `schedule` (cron, seconds first, as tokio-cron-scheduler reads it) next fires after `after_ms`.
fn next_tick(schedule: &str, after_ms: i64) -> Option<i64> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    // Whole seconds: croner carries a fraction over into the answer.
    let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms - after_ms.rem_euclid(1_000))?;
    cron.find_next_occurrence(&after, false).ok().map(|t| t.timestamp_millis())
}

/// `d` scaled by a random factor in [0.8, 1.2), so many environments failing together do not retry
/// together.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_is_read_from_the_schedule() {
        // 2026-01-01T00:00:00.500Z
        let t = 1_767_225_600_500;
        assert_eq!(next_tick("0 0 * * * *", t), Some(1_767_225_600_000 + 3_600_000), "hourly, on the hour");
        assert_eq!(next_tick("*/5 * * * * *", t), Some(1_767_225_605_000));
        assert_eq!(next_tick("not a schedule", t), None);
    }
}
