//! What the store holds, as records: environments with their desired and observed state, and what goes
//! with them (seed outcomes, GitHub deployments and comments, events, reaper passes, deliveries).
//! Rows are read through `FromRow` into plain columns, then parsed into records: a value the domain does
//! not accept is [`StoreError::Corrupt`].

use std::str::FromStr;

use previewd_domain::{
    BranchName, CommitSha, DeploymentState, Desired, EnvKey, EnvNames, EventKind, OwnerId, PassOutcome, RepoName,
    Status, StepOutcome,
};
use serde::Serialize;

use crate::StoreError;
use crate::queue::Fence;

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
    /// The fencing token of the environment's latest claim (see [`crate::Claim`]).
    pub lease_epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The columns of an environment's row, read as they are stored.
pub(crate) const ENV_COLUMNS: &str = "id, repo, repo_display, branch, env_key, stack_name, dns_name, desired_present, desired_sha, desired_seq, \
     desired_at, status, deployed_sha, stack_id, url, last_error, rule_priority, seeded_at, attempts, retries, missing_since, \
     keep, pushed_at, expired_at, seed_pending, seed_requested_at, seed_step, seed_task, seed_log, observed_rev, feedback_due, \
     feedback_retries, feedback_error, deployment_sha, deployment_id, deployment_state, lease_epoch, created_at, updated_at";

/// An environment's row ([`ENV_COLUMNS`]) as stored, before the domain reads it.
#[derive(sqlx::FromRow)]
pub(crate) struct EnvRow {
    id: i64,
    repo: String,
    repo_display: Option<String>,
    branch: String,
    env_key: String,
    stack_name: String,
    dns_name: String,
    desired_present: i64,
    desired_sha: Option<String>,
    desired_seq: i64,
    desired_at: i64,
    status: String,
    deployed_sha: Option<String>,
    stack_id: Option<String>,
    url: Option<String>,
    last_error: Option<String>,
    rule_priority: Option<i64>,
    seeded_at: Option<i64>,
    attempts: i64,
    retries: i64,
    missing_since: Option<i64>,
    keep: i64,
    pushed_at: Option<i64>,
    expired_at: Option<i64>,
    seed_pending: i64,
    seed_requested_at: Option<i64>,
    seed_step: i64,
    seed_task: Option<String>,
    seed_log: Option<String>,
    observed_rev: i64,
    feedback_due: Option<i64>,
    feedback_retries: i64,
    feedback_error: Option<String>,
    deployment_sha: Option<String>,
    deployment_id: Option<i64>,
    deployment_state: Option<String>,
    lease_epoch: i64,
    created_at: i64,
    updated_at: i64,
}

/// A stored word the domain does not know: the row is corrupt.
pub(crate) fn parse<T: FromStr>(what: &'static str, value: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt { what, value: value.to_owned() })
}

pub(crate) fn sha(v: Option<String>) -> Result<Option<CommitSha>, StoreError> {
    v.map(|s| CommitSha::new(&s).map_err(|_| StoreError::Corrupt { what: "commit", value: s })).transpose()
}

/// A seed log as stored (JSON), oldest first.
pub(crate) fn seed_log(log: Option<String>) -> Result<Vec<SeedOutcome>, StoreError> {
    match log {
        None => Ok(Vec::new()),
        Some(l) => serde_json::from_str(&l).map_err(|_| StoreError::Corrupt { what: "seed log", value: l }),
    }
}

impl TryFrom<EnvRow> for EnvRecord {
    type Error = StoreError;

    fn try_from(r: EnvRow) -> Result<Self, StoreError> {
        let corrupt = |what: &'static str, value: &str| StoreError::Corrupt { what, value: value.to_owned() };
        let desired =
            if r.desired_present != 0 { Desired::Present { sha: sha(r.desired_sha)? } } else { Desired::Absent };
        let deployment = match (sha(r.deployment_sha)?, r.deployment_id) {
            (Some(sha), Some(id)) => Some(DeploymentRecord {
                sha,
                id,
                state: r.deployment_state.as_deref().map(|s| parse("deployment state", s)).transpose()?,
            }),
            _ => None,
        };
        Ok(EnvRecord {
            id: r.id,
            repo: RepoName::new(&r.repo).map_err(|_| corrupt("repository", &r.repo))?,
            repo_display: r.repo_display,
            branch: BranchName::new(&r.branch).map_err(|_| corrupt("branch", &r.branch))?,
            env_key: EnvKey::new(&r.env_key).map_err(|_| corrupt("environment key", &r.env_key))?,
            stack_name: r.stack_name,
            dns_name: r.dns_name,
            desired,
            desired_seq: r.desired_seq,
            desired_at: r.desired_at,
            status: parse("status", &r.status)?,
            deployed_sha: sha(r.deployed_sha)?,
            stack_id: r.stack_id,
            url: r.url,
            last_error: r.last_error,
            rule_priority: r.rule_priority,
            seeded_at: r.seeded_at,
            attempts: r.attempts,
            retries: r.retries,
            missing_since: r.missing_since,
            keep: r.keep != 0,
            pushed_at: r.pushed_at,
            expired_at: r.expired_at,
            seed_pending: r.seed_pending != 0,
            seed_requested_at: r.seed_requested_at,
            seed_step: r.seed_step,
            seed_task: r.seed_task,
            seed_log: seed_log(r.seed_log)?,
            observed_rev: r.observed_rev,
            feedback_due: r.feedback_due,
            feedback_retries: r.feedback_retries,
            feedback_error: r.feedback_error,
            deployment,
            lease_epoch: r.lease_epoch,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
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

    /// The record as it is once `o` is written: what a step goes on with after writing it.
    pub fn with_observed(&self, o: Observed) -> EnvRecord {
        let Observed { status, deployed_sha, stack_id, url, last_error, attempts, retries } = o;
        EnvRecord { status, deployed_sha, stack_id, url, last_error, attempts, retries, ..self.clone() }
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

/// One seed step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SeedOutcome {
    pub step: i64,
    pub name: String,
    /// The step's kind, as the blueprint names it.
    pub kind: String,
    pub outcome: StepOutcome,
    pub detail: String,
    pub at: i64,
}

/// A GitHub deployment previewd created for an environment at a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploymentRecord {
    pub sha: CommitSha,
    pub id: i64,
    /// The last state posted, if any.
    pub state: Option<DeploymentState>,
}

/// Seeding progress to record; see [`crate::Store::seed_progress`].
#[derive(Debug, Clone, Default)]
pub struct SeedProgress {
    pub next_step: i64,
    pub task: Option<String>,
    pub outcome: Option<SeedOutcome>,
    /// Every step ended well: nothing is pending any more and `seeded_at` is set.
    pub finished: bool,
}

/// The comment previewd keeps on a pull request, with a hash of its text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PrComment {
    pub pr_number: i64,
    pub comment_id: i64,
    pub body_hash: String,
    /// Who opened the pull request, as GitHub last said.
    pub author: Option<String>,
}

/// An open pull request of an environment's branch, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PullRequest {
    #[serde(skip)]
    pub env_id: i64,
    pub number: i64,
    pub author: Option<String>,
}

/// One entry of an environment's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub env_id: i64,
    pub at: i64,
    pub kind: EventKind,
    pub message: String,
}

/// A reaper pass as recorded: when, its outcome, a one-line summary and its decisions as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaperPassRecord {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub dry_run: bool,
    pub outcome: PassOutcome,
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

impl Delivery {
    /// What becomes of it once recorded.
    pub fn outcome(&self) -> previewd_domain::DeliveryOutcome {
        match self.change {
            Some(_) => previewd_domain::DeliveryOutcome::Recorded,
            None => previewd_domain::DeliveryOutcome::Ignored,
        }
    }
}
