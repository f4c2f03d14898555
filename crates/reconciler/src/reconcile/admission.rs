//! Admission under a repository's cap of environments holding resources: a new environment is let
//! in (`provisioning`) or waits, visibly `skipped`, until one goes. Decided while the stack is looked at
//! and GitHub asked, since no answer changes another.

use previewd_domain::plan::GitHubAnswer;
use previewd_domain::{EventKind, Status};
use previewd_store::{EnvRecord, Observed};

use super::observe;
use crate::context::Inner;
use crate::error::ReconcileError;
use crate::setup::RepoSetup;

/// Where an environment stands with its repository's cap as a step begins.
pub(super) enum Admitting {
    /// Already let in, or leaving: nothing to decide.
    No,
    /// Let in under the cap; to be recorded.
    Admitted(Admission),
    /// Not yet decided.
    ToDecide,
}

/// Decides `admission` if it is still to be decided, records it while GitHub is asked for the branch
/// (unless `tearing_down`), and returns GitHub's answer with what the admission recorded, if it did;
/// `None` when the environment is over the cap.
pub(super) async fn admit_and_ask(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    admission: Admitting,
    tearing_down: bool,
) -> Result<Option<(GitHubAnswer, Option<Observed>)>, ReconcileError> {
    let admission = match admission {
        Admitting::No => None,
        Admitting::Admitted(a) => Some(a),
        Admitting::ToDecide => match admit(inner, env, repo).await? {
            Some(a) => Some(a),
            None => return Ok(None),
        },
    };
    let admitting = async {
        match admission {
            Some(a) => a.record(inner, env).await.map(Some),
            None => Ok(None),
        }
    };
    let asking =
        async { if tearing_down { Ok(GitHubAnswer::NotAsked) } else { observe::ask_github(inner, env).await } };
    let (admitted, answer) = tokio::join!(admitting, asking);
    let admitted = admitted?;
    Ok(Some((answer?, admitted)))
}

/// Lets a new environment in under its repository's cap of live environments: `Some` with the
/// admission to record (`provisioning`, so the next admission counts it); over the cap it is recorded
/// `skipped` with the reason, and `None`. One admission at a time per repository in this process, until
/// it is recorded.
pub(super) async fn admit(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
) -> Result<Option<Admission>, ReconcileError> {
    let lock = inner.admit_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(env.repo.clone()).or_default().clone();
    let one_at_a_time = lock.lock_owned().await;
    let live = inner.store.count_holding(&env.repo, env.id).await?;
    let cap = repo.max_environments as i64;
    {
        let mut full = inner.full.lock().unwrap_or_else(|p| p.into_inner());
        if live < cap {
            full.remove(&env.repo);
        } else {
            full.insert(env.repo.clone());
        }
    }
    if live < cap {
        return Ok(Some(Admission { _one_at_a_time: one_at_a_time, live, cap }));
    }
    let why = format!(
        "not provisioned: {} already has {live} live environments, its cap (max_environments = {cap}); it \
         will be once one goes",
        env.repo
    );
    if env.status != Status::Skipped || env.last_error.as_deref() != Some(why.as_str()) {
        let o = Observed { status: Status::Skipped, last_error: Some(why.clone()), ..env.observed() };
        inner.store.update_observed(env.fence(), &o, Some((EventKind::Skipped, &why))).await?;
        tracing::info!(%why, "skipped");
    }
    Ok(None)
}

/// An environment let in under its repository's cap, to be recorded.
pub(super) struct Admission {
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
    live: i64,
    cap: i64,
}

impl Admission {
    async fn record(self, inner: &Inner, env: &EnvRecord) -> Result<Observed, ReconcileError> {
        let o = Observed { status: Status::Provisioning, last_error: None, ..env.observed() };
        let why = format!("admitted: {} of {} live environments in {}", self.live + 1, self.cap, env.repo);
        inner.store.update_observed(env.fence(), &o, Some((EventKind::Admitted, &why))).await?;
        Ok(o)
    }
}
