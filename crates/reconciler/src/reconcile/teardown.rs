//! Teardown: the DNS name first, then every bucket the stack takes with it emptied (in bounded steps),
//! then DeleteStack by id, then waiting for it to be gone. Works whether the create finished, failed
//! halfway, or never ran.

use std::time::Duration;

use previewd_cloud::{OwnershipMarker, Stack};
use previewd_domain::plan::{self, TeardownStep};
use previewd_domain::{Desired, EventKind, Status};
use previewd_store::{EnvRecord, Observed};

use super::converge::{stack_view, token};
use super::record::{poll_delay, record};
use crate::context::Inner;
use crate::error::{Action, ReconcileError};
use crate::setup::RepoSetup;

/// DNS record first, then every bucket emptied (in bounded steps), then DeleteStack, then wait for it to be
/// gone. Works whether the create finished, failed halfway, or never ran.
pub(super) async fn teardown(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    stack: Option<Stack>,
) -> Result<Action, ReconcileError> {
    if env.status == Status::Deleted && stack.is_none() {
        return Ok(Action::Done); // nothing left, and nothing to record again
    }
    let view = stack.as_ref().map(|s| stack_view(inner, s, false));
    let attempts = if env.status == Status::Deleting { env.attempts } else { 0 };
    let step = plan::teardown(view.as_ref(), attempts, inner.setup.tuning.max_stack_attempts);
    if let (TeardownStep::Refuse(why), Some(s)) = (&step, &stack) {
        let reason = s.reason.as_deref().unwrap_or(&s.status);
        return Err(ReconcileError::NeedsHuman(format!("stack {}: {why} (last reason: {reason})", s.name)));
    }
    // The record went before the status became `deleting`: its later steps need not look at DNS again.
    let was = env.status;
    let deleting;
    let env = if env.status != Status::Deleting {
        remove_dns(inner, env, repo, stack.as_ref()).await?;
        // What the store holds now: the writes below compare against it.
        deleting = EnvRecord { status: Status::Deleting, url: None, ..env.clone() };
        &deleting
    } else {
        env
    };
    let (stack, retry) = match (step, stack) {
        (TeardownStep::Delete { retry }, Some(stack)) => (stack, retry),
        (TeardownStep::Wait, Some(_)) => {
            let o = Observed { status: Status::Deleting, url: None, ..env.observed() };
            record(inner, env, o, None).await?;
            return Ok(Action::Requeue(poll_delay(inner, env)));
        }
        // No stack (a refusal returned above): the environment is gone.
        _ => {
            let o = Observed {
                status: Status::Deleted,
                url: None,
                stack_id: None,
                last_error: None,
                attempts: 0,
                ..env.observed()
            };
            // Torn down because the branch went, or because a person or the time-to-live ended it.
            let why = match env.desired {
                Desired::Absent => "the branch is gone and so is its environment",
                Desired::Present { .. } => {
                    "torn down: ended by a destroy or its time-to-live; the branch's next push brings it back"
                }
            };
            let event = (was != Status::Deleted).then_some((EventKind::Deleted, why));
            record(inner, env, o, event).await?;
            if event.is_some() {
                tracing::info!(why, "torn down");
            }
            return Ok(Action::Done);
        }
    };
    // After a refused deletion, look harder (see `empty_buckets`).
    let Some(emptied) = empty_buckets(inner, env, &stack, retry).await? else {
        return Ok(Action::Requeue(Duration::ZERO));
    };
    let attempts = if retry { attempts + 1 } else { attempts };
    let request = token("delete", &[&stack.id, &attempts.to_string()]);
    inner.delete_stack(&stack, &request).await?;
    let why = if retry {
        format!("deleting stack {} again after DELETE_FAILED ({emptied} objects emptied)", stack.name)
    } else {
        format!("deleting stack {} ({emptied} objects emptied)", stack.name)
    };
    let o = Observed { status: Status::Deleting, url: None, attempts, ..env.observed() };
    inner.store.update_observed(env.fence(), &o, Some((EventKind::Deleting, &why))).await?;
    tracing::info!(%why, "tearing down");
    Ok(Action::Requeue(inner.setup.tuning.poll_min))
}

/// Removes the environment's DNS name (when its marker is ours) and records the environment as
/// `deleting`, so later steps of the teardown skip DNS. A name that was pointed at the stack's endpoint
/// is deleted as it was written, without reading it first.
async fn remove_dns(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    stack: Option<&Stack>,
) -> Result<(), ReconcileError> {
    let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
    let pointed = stack.and_then(|s| s.outputs.get("Endpoint")).filter(|_| env.url.is_some());
    match inner.zone_id(repo).await {
        Ok(zone) => match inner.remove_name(&zone, &env.dns_name, pointed.map(String::as_str), &marker).await {
            Ok(true) => inner.store.add_event(env.id, EventKind::Dns, &format!("removed {}", env.dns_name)).await?,
            Ok(false) => {}
            Err(e) if e.code() == "NotOwned" => tracing::warn!(error = %e, "DNS record left alone"),
            // A record changed between reading and deleting it: look again later, never give up on teardown.
            Err(e) => return Err(ReconcileError::Transient(e.to_string())),
        },
        // No zone, so no record of ours: the stack still goes.
        Err(e) if e.needs_human() => tracing::warn!(error = %e, "no hosted zone: no DNS record to remove"),
        Err(e) => return Err(e),
    }
    let o = Observed { status: Status::Deleting, url: None, ..env.observed() };
    record(inner, env, o, None).await
}

/// Takes one bounded step of emptying the buckets the stack's deletion takes with it (a bucket its
/// template retains keeps what it holds). `after_failure`: a deletion was refused before, so the
/// buckets are read from CloudFormation rather than the stack's own list, and unfinished uploads are
/// aborted too. `Some(objects deleted)` once every bucket is empty; `None` while more remains (the step
/// is recorded, and the reconciler comes straight back).
pub(super) async fn empty_buckets(
    inner: &Inner,
    env: &EnvRecord,
    stack: &Stack,
    after_failure: bool,
) -> Result<Option<usize>, ReconcileError> {
    let mut emptied = 0;
    for bucket in inner.aws.buckets_to_empty(stack, !after_failure).await? {
        let batches = inner.setup.tuning.empty_batches_per_step;
        let report = inner.aws.empty_bucket(&bucket, batches, after_failure).await?;
        emptied += report.versions_deleted;
        if !report.done {
            let why = format!(
                "emptying bucket {bucket}: {} object versions deleted in this step, more remain",
                report.versions_deleted
            );
            inner.store.add_event(env.id, EventKind::Emptying, &why).await?;
            return Ok(None);
        }
    }
    Ok(Some(emptied))
}
