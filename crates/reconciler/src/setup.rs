//! How the reconciler is set up: the repositories it serves, its timings, and the rest of this
//! installation it must know.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use previewd_domain::{DnsZone, OwnerId, RepoName};
use previewd_render::RepoLayers;

/// A dispatcher never polls the store more often than this, whatever it is told.
pub(crate) const IDLE_FLOOR: Duration = Duration::from_millis(20);
/// How often `drain` looks whether its environments are done.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(200);

/// The lock row that keeps the fleet observer to one replica.
pub const FLEET_LOCK: &str = "fleet-observer";
/// The lock row a scheduled reaper pass takes for its tick, so replicas run one pass per tick.
pub const REAPER_TICK_LOCK: &str = "reaper-tick";
/// A tick's lock ends this long before the next tick, so clocks a little apart still see it free.
pub(crate) const TICK_MARGIN_MS: i64 = 250;
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

/// `d` scaled by a random factor in [0.8, 1.2), so many environments failing together do not retry
/// together.
pub(crate) fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.8 + fastrand::f64() * 0.4)
}

/// How the reaper behaves.
#[derive(Debug, Clone)]
pub struct ReaperSetup {
    /// Cron, seconds first.
    pub schedule: String,
    pub grace: Duration,
    /// A pass that would remove more than this share of a repository's environments removes nothing.
    pub max_share: f64,
    /// ... unless it removes at most this many.
    pub min_removals: usize,
}

impl Default for ReaperSetup {
    fn default() -> Self {
        Self { schedule: "0 0 * * * *".to_owned(), grace: Duration::from_secs(600), max_share: 0.5, min_removals: 3 }
    }
}
