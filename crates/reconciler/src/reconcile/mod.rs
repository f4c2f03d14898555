//! One step of one environment toward its desired state. Each call reads the current desired state (and
//! GitHub's word on the branch) and the stack as AWS describes it, and does the one thing that moves them
//! closer: create, update, wait, delete, point DNS, or report.
//!
//! Observe ([`observe`], [`admission`]: reads only) → plan (pure, in `previewd_domain::plan`) → act
//! ([`converge`], [`application`], [`teardown`], [`record`]: the writes).

mod admission;
mod application;
mod converge;
mod observe;
mod ready;
mod record;
mod teardown;

pub(crate) use ready::timeline_summary;
pub(crate) use record::failed;

use std::time::Duration;

use previewd_domain::plan::{self, BranchDecision, Evidence, GitHubAnswer, Waits};
use previewd_domain::{Desired, EventKind, Status};
use previewd_store::{Claim, EnvRecord, Observed, StoreError, now_ms};

use crate::context::{Inner, humanize};
use crate::error::{Action, ReconcileError};

/// The file a branch commits to override settings of its own environment.
pub const BRANCH_SETTINGS_FILE: &str = ".previewd.toml";

/// One step: observe (the stack, GitHub's word on the branch, room under the cap), plan
/// ([`plan::branch`], then [`plan::teardown`] or [`plan::converge`]), act. `env` is the record as the
/// claim read it.
pub(crate) async fn reconcile(inner: &Inner, claim: &Claim, env: EnvRecord) -> Result<Action, ReconcileError> {
    // Every write below carries the epoch of the record: it must be this claim's.
    if env.lease_epoch != claim.epoch {
        return Err(StoreError::Fenced { id: claim.id }.into());
    }
    let span = tracing::Span::current();
    span.record("repo", env.repo.as_str());
    span.record("branch", env.branch.as_str());
    span.record("env", env.env_key.as_str());
    span.record("stack", env.stack_name.as_str());
    tracing::debug!(status = %env.status, "reconcile");
    let Some(repo) = inner.setup.repos.get(&env.repo) else {
        return Err(ReconcileError::NeedsHuman(format!(
            "repository {} is no longer configured; its environments are left as they are",
            env.repo
        )));
    };

    if env.branch.is_no_infra() {
        let status = if env.desired == Desired::Absent { Status::Deleted } else { Status::Skipped };
        if env.status != status {
            let o = Observed { status, last_error: None, attempts: 0, ..env.observed() };
            let why = format!("branch name ends in -no-infra: {status}, never provisioned");
            let kind = if status == Status::Deleted { EventKind::Deleted } else { EventKind::Skipped };
            inner.store.update_observed(env.fence(), &o, Some((kind, &why))).await?;
            tracing::info!(%why, "never provisioned");
        }
        return Ok(Action::Done);
    }

    // Over the repository's cap, an environment waits until there is room, and GitHub is not asked. A new
    // one is almost always let in: its stack is looked at while its admission is decided. A skipped one,
    // or one whose repository was full at its last admission, is admitted first, and AWS is not asked
    // either unless it is let in.
    let unadmitted = env.desired != Desired::Absent
        && env.stack_id.is_none()
        && matches!(env.status, Status::Pending | Status::Skipped);
    let admit_first = unadmitted
        && (env.status == Status::Skipped || inner.full.lock().unwrap_or_else(|p| p.into_inner()).contains(&env.repo));
    let admission = if admit_first {
        let Some(admission) = admission::admit(inner, &env, repo).await? else { return Ok(Action::Done) };
        admission::Admitting::Admitted(admission)
    } else if unadmitted {
        admission::Admitting::ToDecide
    } else {
        admission::Admitting::No
    };

    // Absence was proven before the teardown began; its polls need not ask GitHub again.
    let tearing_down = env.desired == Desired::Absent && env.status == Status::Deleting;
    // The stack is looked at while the rest is decided and GitHub asked: no answer changes what another
    // asks, and nothing is changed in AWS before all are in. Each runs to its end (each may be writing to
    // the store): none is dropped for another's error. The stack's look goes first, so its request is on
    // its way before the others' are made.
    let deciding = admission::admit_and_ask(inner, &env, repo, admission, tearing_down);
    let (looked, decided) = tokio::join!(observe::observe_stack(inner, &env), deciding);
    // Over the cap: recorded `skipped`, and what the look found is of no use yet.
    let Some((answer, admitted)) = decided? else { return Ok(Action::Done) };
    // The rest of the step goes on from the record as the admission left it.
    let env = match admitted {
        Some(o) => env.with_observed(o),
        None => env,
    };
    let (stack, sighted) = looked?;
    let now = now_ms();
    record::branch_seen(inner, &env, &answer, now).await?;
    record::stack_seen(inner, &env, &repo.blueprint, stack.as_ref()).await?;
    let missing_since = match answer {
        GitHubAnswer::NotFound => Some(env.missing_since.unwrap_or(now)),
        _ => env.missing_since,
    };
    let grace = inner.setup.reaper.grace.as_millis() as i64;
    let evidence = Evidence {
        desired: env.desired.clone(),
        desired_at: env.desired_at,
        pushed_at: env.pushed_at,
        missing_since,
        expired: env.expired_at.is_some(),
        keep: env.keep,
    };
    let waits = Waits { grace_ms: grace, api_lag_ms: inner.setup.tuning.api_lag.as_millis() as i64 };
    match plan::branch(&evidence, &answer, now, waits) {
        BranchDecision::Kept => {
            let why = format!("GitHub no longer shows branch {}; the environment is kept on purpose", env.branch);
            if env.last_error.as_deref() != Some(why.as_str()) {
                let o = Observed { last_error: Some(why.clone()), ..env.observed() };
                inner.store.update_observed(env.fence(), &o, Some((EventKind::Kept, &why))).await?;
            }
            Ok(Action::Done)
        }
        BranchDecision::Absent => {
            if env.desired != Desired::Absent && env.expired_at.is_none() {
                let why = format!(
                    "GitHub: the branch does not exist (404), and no webhook or listing has shown it for {}",
                    humanize(grace)
                );
                if !inner.store.set_desired(env.id, env.desired_seq, &Desired::Absent, &why).await? {
                    return Ok(Action::Requeue(Duration::ZERO)); // a webhook came meanwhile: look again
                }
            }
            teardown::teardown(inner, &env, repo, stack).await
        }
        BranchDecision::NotYetProof { wait_ms } => {
            let why = format!(
                "GitHub does not show branch {} (404), but a webhook or listing said it exists too recently: \
                 not proof of absence yet; looking again (grace {})",
                env.branch,
                humanize(grace)
            );
            // Nothing made yet: `pending` (its admission let it in, but nothing holds a place until the
            // branch is there to build).
            let status = match env.status {
                Status::Provisioning if env.stack_id.is_none() => Status::Pending,
                s => s,
            };
            if env.last_error.as_deref() != Some(why.as_str()) || env.status != status {
                let o = Observed { status, last_error: Some(why.clone()), ..env.observed() };
                inner.store.update_observed(env.fence(), &o, Some((EventKind::Absence, &why))).await?;
            }
            let t = &inner.setup.tuning;
            Ok(Action::Requeue(Duration::from_millis(wait_ms.max(0) as u64).clamp(t.poll_min, t.poll_max)))
        }
        BranchDecision::Present(sha) => {
            let truth = Desired::Present { sha: Some(sha.clone()) };
            if truth != env.desired {
                let why = format!("GitHub: the branch is at {}", sha.short());
                if !inner.store.set_desired(env.id, env.desired_seq, &truth, &why).await? {
                    return Ok(Action::Requeue(Duration::ZERO));
                }
            }
            // A sighting stands in for a look only before a teardown: anything else looks afresh.
            let stack = if sighted { inner.aws.describe_stack(&env.stack_name).await? } else { stack };
            converge::converge(inner, &env, repo, &sha, stack).await
        }
    }
}
