//! Acting on the store: what a step observed and did, the branch's sightings, and what it saw of the
//! stack (for people), each written only when it says something new.

use std::time::Duration;

use previewd_cloud::Stack;
use previewd_domain::plan::GitHubAnswer;
use previewd_domain::{Desired, EventKind, Status};
use previewd_store::{EnvRecord, Observed, StackEvent, StackObservation, now_ms};

use crate::context::Inner;
use crate::durations::{Op, next_look, unknown_look};
use crate::error::ReconcileError;

/// An environment has just failed: the time from its push counted, by repository (a failure seen again
/// is not counted again), and one line logged for whoever must act: ERROR for whoever runs previewd
/// (`operators`), WARN for the branch's team, who are told on the environment's page.
pub(crate) fn failed(env: &EnvRecord, why: &str, operators: bool) {
    if let (Some(pushed), false) = (env.pushed_at, env.status == Status::Failed) {
        let repo = previewd_metrics::RepoLabel { repo: env.repo.to_string() };
        let seconds = (now_ms() - pushed).max(0) as f64 / 1000.0;
        previewd_metrics::METRICS.push_to_failure_seconds.get_or_create(&repo).observe(seconds);
    }
    match operators {
        true => tracing::error!(error = %why, "failed: whoever runs previewd must act"),
        false => {
            tracing::warn!(error = %why, "failed: told on the environment's page; a push or a redeploy tries again")
        }
    }
}

/// Stack events kept for an environment's page.
const STACK_EVENTS_KEPT: usize = 20;

/// The gap before the next look at a stack operation of unknown length: a quarter of the time since the
/// environment last changed, between the configured bounds.
pub(super) fn poll_delay(inner: &Inner, env: &EnvRecord) -> Duration {
    let t = &inner.setup.tuning;
    next_look(Duration::from_millis((now_ms() - env.updated_at).max(0) as u64), None, t.poll_min, t.poll_max)
}

/// The gap before the next look at `stack`, in progress for the environment's blueprint: near its
/// expected end when the blueprint's operations of that kind have been seen to end, often while none has
/// (see [`crate::durations`]).
pub(super) fn stack_poll(inner: &Inner, env: &EnvRecord, blueprint: &str, stack: &Stack) -> Duration {
    let t = &inner.setup.tuning;
    let began = stack.changed_at().unwrap_or(env.updated_at);
    let elapsed = Duration::from_millis((now_ms() - began).max(0) as u64);
    match Op::of(&stack.status) {
        Some(op) => match inner.durations.expected(blueprint, op) {
            None => unknown_look(elapsed, t.poll_min, t.poll_max),
            expected => next_look(elapsed, expected, t.poll_min, t.poll_max),
        },
        None => next_look(elapsed, None, t.poll_min, t.poll_max),
    }
}

/// The gap before the first look at an operation just asked for: soon when its time is not known yet
/// (one that ends at once, such as an update CloudFormation has little to do for, is then seen and
/// learned as such).
pub(super) fn first_look(inner: &Inner, blueprint: &str, op: Op) -> Duration {
    let t = &inner.setup.tuning;
    match inner.durations.expected(blueprint, op) {
        None => crate::durations::NEAR_MIN.min(t.poll_min),
        expected => next_look(Duration::ZERO, expected, t.poll_min, t.poll_max),
    }
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
/// An operation complete now that was in progress at the last look, or not begun, teaches the
/// blueprint's durations (from its start to now: the looks near its end make that close), when the
/// environment was provisioning (or waiting, its stack coming up without a task).
pub(super) async fn stack_seen(
    inner: &Inner,
    env: &EnvRecord,
    blueprint: &str,
    stack: Option<&Stack>,
) -> Result<(), ReconcileError> {
    inner.durations.load(&inner.store).await?;
    let before = inner.store.stack_observation(env.id).await?;
    let status = stack.map(|s| s.status.clone());
    let outputs = stack.map(|s| s.outputs.clone()).unwrap_or_default();
    if let Some(b) = &before
        && b.status == status
        && b.outputs == outputs
    {
        return Ok(());
    }
    if let (Some(s), Some(was)) = (stack, before.as_ref().and_then(|b| b.status.as_deref()))
        && s.status.ends_with("_COMPLETE")
        && let Some(op) = Op::of(&s.status)
        && (!was.ends_with("_IN_PROGRESS") || Op::of(was) == Some(op))
        // An update is timed from its own start only (a stack's creation says nothing of it).
        && let Some(began) = match op {
            Op::Create => s.created_at,
            Op::Update => s.updated_at,
        }
    {
        // Only what the reconciler watched: a stack seen done days later (the environment failed meanwhile,
        // previewd was down) says nothing of how long it took; nor does one far slower than expected.
        let took = Duration::from_millis((now_ms() - began).max(0) as u64);
        let plausible = inner.durations.expected(blueprint, op).is_none_or(|e| took <= e * 4);
        // Asked for by this environment's current desire (a minute's leeway for clocks): a stack done
        // long before it (an environment that failed, then was pushed again) was not watched.
        let asked = began + 60_000 >= env.desired_at;
        if matches!(env.status, Status::Provisioning | Status::Pending)
            && plausible
            && asked
            && let Err(e) = inner.durations.learn(&inner.store, blueprint, op, took).await
        {
            // A help, never a condition: the next operation is learned again.
            tracing::warn!(error = %e, "cannot keep a learned stack time");
        }
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
