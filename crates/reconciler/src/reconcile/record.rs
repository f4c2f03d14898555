//! Acting on the store: what a step observed and did, the branch's sightings, and what it saw of the
//! stack (for people), each written only when it says something new.

use std::time::Duration;

use previewd_cloud::Stack;
use previewd_domain::plan::GitHubAnswer;
use previewd_domain::{Desired, EventKind};
use previewd_store::{EnvRecord, Observed, StackEvent, StackObservation, now_ms};

use crate::context::Inner;
use crate::error::ReconcileError;

/// Stack events kept for an environment's page.
const STACK_EVENTS_KEPT: usize = 20;

/// The gap before the next look at a stack operation: a quarter of the time since the environment last
/// changed, between the configured bounds.
pub(super) fn poll_delay(inner: &Inner, env: &EnvRecord) -> Duration {
    let t = &inner.setup.tuning;
    let elapsed = Duration::from_millis((now_ms() - env.updated_at).max(0) as u64);
    (elapsed / 4).clamp(t.poll_min, t.poll_max)
}

/// Writes what the step observed and did, and its event, when either says something new.
pub(super) async fn record(
    inner: &Inner,
    env: &EnvRecord,
    o: Observed,
    event: Option<(EventKind, &str)>,
) -> Result<(), ReconcileError> {
    if o != env.observed() || event.is_some() {
        inner.store.update_observed(env.fence(), &o, event).await?;
    }
    Ok(())
}

/// Notes GitHub's answer on the branch: the first 404 starts the grace (it counts from then); a branch
/// seen again is no longer missing.
pub(super) async fn branch_seen(
    inner: &Inner,
    env: &EnvRecord,
    answer: &GitHubAnswer,
    now: i64,
) -> Result<(), ReconcileError> {
    match answer {
        GitHubAnswer::At(_) if env.missing_since.is_some() => {
            inner.store.mark_seen(env.id).await?;
        }
        GitHubAnswer::NotFound if env.missing_since.is_none() => {
            inner.store.mark_missing(env.id, now).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Keeps what the step saw of the stack for the environment's page, when its status or outputs changed
/// since the last look. A settled stack of a wanted environment brings its newest events along (one more
/// call, once per change); a teardown's do not, and the last ones stay.
pub(super) async fn stack_seen(inner: &Inner, env: &EnvRecord, stack: Option<&Stack>) -> Result<(), ReconcileError> {
    let before = inner.store.stack_observation(env.id).await?;
    let status = stack.map(|s| s.status.clone());
    let outputs = stack.map(|s| s.outputs.clone()).unwrap_or_default();
    if let Some(b) = &before
        && b.status == status
        && b.outputs == outputs
    {
        return Ok(());
    }
    let wanted = env.desired != Desired::Absent && env.expired_at.is_none();
    let events = match stack {
        Some(s) if wanted && !s.in_progress() => inner
            .aws
            .stack_events(&s.id)
            .await?
            .into_iter()
            .take(STACK_EVENTS_KEPT)
            .map(|e| StackEvent {
                timestamp: e.timestamp,
                logical_id: e.logical_id,
                status: e.status,
                reason: e.reason,
            })
            .collect(),
        _ => before.map(|b| b.events).unwrap_or_default(),
    };
    let seen = StackObservation { observed_at: now_ms(), status, outputs, events };
    inner.store.record_stack_observation(env.fence(), &seen).await?;
    Ok(())
}
