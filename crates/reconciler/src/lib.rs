//! The level-triggered core. Webhooks, timers and people only change desired state and enqueue; the
//! reconciler compares desired state (from the store, confirmed with GitHub) with observed state (the
//! stack in AWS) and takes one step toward agreement, records what it did, and requeues until they
//! agree. Every reconcile looks at the current state, never at the event that woke it, so duplicates,
//! reordering and restarts are harmless.
//!
//! The rooms, from the bottom up: [`setup`] and [`error`] (what it is given, how a step ends, the pure
//! error policy) and [`probe`] (whether an environment's URL answers as its app); `context` (what every
//! part works with) with `batch`, `sightings`, `settings_files` and `queue`; the work: `reconcile`
//! (observe → plan → act), `seed`, `feedback`, `fleet`, `reaper`; and what drives it: `dispatch`,
//! `schedules`, `views`. Imports run down this list, never up it.

mod artifacts;
mod batch;
mod context;
mod dispatch;
mod durations;
pub mod error;
mod feedback;
mod fleet;
pub mod probe;
mod queue;
mod reaper;
mod reconcile;
mod schedules;
mod seed;
mod settings_files;
pub mod setup;
mod sightings;
mod views;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::Aws;
use previewd_domain::OwnerId;
use previewd_github::GitHub;
use previewd_render::{Blueprint, RenderError};
use previewd_store::{Store, now_ms};

use crate::context::Inner;

pub use error::{Action, ReconcileError};
pub use previewd_domain::PassOutcome as Outcome;
pub use previewd_store::Lane;
pub use queue::Queue;
pub use reaper::{Decision, Report, Verdict};
pub use reconcile::BRANCH_SETTINGS_FILE;
pub use schedules::{FLEET_LOCK, REAPER_TICK_LOCK, ReaperScheduleError, check_schedule};
pub use seed::HOOK_SIGNATURE_HEADER;
pub use setup::{FeedbackSetup, ReaperSetup, RepoSetup, Setup, Tuning};
pub use views::SettingView;

/// Readiness probes in flight at once in this process (they cost no AWS or GitHub call).
const PROBES_AT_ONCE: usize = 32;

/// Deliveries are kept this long for deduplication (GitHub redelivers for up to 3 days).
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

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
            images: artifacts::Images::default(),
            durations: durations::Durations::default(),
            prober: probe::Prober::new(PROBES_AT_ONCE),
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

    /// One reaper pass now (see [`reaper`](crate::reaper)); a dry run changes nothing.
    pub async fn reap(&self, dry_run: bool) -> Report {
        self.inner.reap(dry_run).await
    }

    /// One pass of the fleet observer, and old deliveries forgotten; returns how many environments it
    /// enqueued. Failures are logged: the next pass looks again.
    pub async fn resync(&self) -> usize {
        self.resync_pass().await.0
    }

    /// As [`Reconciler::resync`], and whether the pass saw everything (the stacks, every repository's
    /// branches and names): only such a pass is a success for `previewd_fleet_observer_last_success…`.
    pub async fn resync_pass(&self) -> (usize, bool) {
        let (enqueued, complete) = match self.inner.resync_fleet().await {
            Ok(pass) => pass,
            Err(e) => {
                tracing::warn!(error = %e, "resync failed");
                (0, false)
            }
        };
        if complete {
            previewd_metrics::METRICS.fleet_observer_last_success.set(now_ms() as f64 / 1000.0);
        }
        let cutoff = now_ms() - DELIVERY_RETENTION.as_millis() as i64;
        if let Err(e) = self.inner.store.prune_deliveries(cutoff).await {
            tracing::warn!(error = %e, "cannot forget old deliveries");
        }
        tracing::debug!(enqueued, complete, "resync");
        (enqueued, complete)
    }
}
