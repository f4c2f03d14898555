//! Observing: what AWS shows of the stack and what GitHub says of the branch (and, for a render, the
//! branch's own settings file). Nothing here writes to the store.

use previewd_cloud::{Stack, StackEvent};
use previewd_domain::plan::GitHubAnswer;
use previewd_domain::{CommitSha, Desired, Status};
use previewd_github::BranchHead;
use previewd_render::{Layer, LayerKind};
use previewd_store::EnvRecord;

use super::BRANCH_SETTINGS_FILE;
use crate::context::Inner;
use crate::error::ReconcileError;
use crate::settings_files::SETTINGS_FILE_MAX;

/// The environment's stack as CloudFormation shows it, and whether a sighting stood in for the look. A
/// teardown about to begin starts from the last listing when it is young (see [`crate::sightings`]):
/// the reaper lists every stack just before it asks for one. Only an environment
/// whose record says its stack is settled (`ready` or `failed`: no replica is changing it) and is the
/// one listed may start so; the caller looks again if the step turns out not to be a teardown. An
/// environment waiting on CloudFormation looks together with the others waiting ([`Inner::look`]).
/// Anything else describes its stack at once.
pub(super) async fn observe_stack(inner: &Inner, env: &EnvRecord) -> Result<(Option<Stack>, bool), ReconcileError> {
    let leaving = env.desired == Desired::Absent || env.expired_at.is_some();
    if leaving
        && matches!(env.status, Status::Ready | Status::Failed)
        && let Some(seen) = inner.sightings.settled(&env.stack_name, crate::sightings::SIGHTING_FRESH)
        && env.stack_id.as_ref().is_none_or(|id| *id == seen.id)
    {
        return Ok((Some(seen), true));
    }
    let waiting = env.status == Status::Deleting
        || (matches!(env.status, Status::Provisioning | Status::Pending) && env.stack_id.is_some());
    if waiting {
        return Ok((inner.look(&env.stack_name).await?, false));
    }
    Ok((inner.aws.describe_stack(&env.stack_name).await?, false))
}

/// Asks GitHub for the branch. A 404 is an answer only while GitHub still shows the repository: a token
/// that lost access must not tear every environment down. Nothing is written: the caller notes what
/// the answer changes ([`super::record::branch_seen`]).
pub(super) async fn ask_github(inner: &Inner, env: &EnvRecord) -> Result<GitHubAnswer, ReconcileError> {
    let absent = match inner.github.branch_head(&env.repo, &env.branch).await? {
        BranchHead::At(head) => return Ok(GitHubAnswer::At(head)),
        BranchHead::Missing => inner.github.repo_visible(&env.repo).await?,
        // Renamed: gone under this name once a complete listing agrees (a 301 alone is one answer).
        BranchHead::Renamed(to) => {
            let listing = inner.github.list_branches(&env.repo).await?;
            if listing.branches.iter().any(|(b, _)| *b == env.branch) {
                return Err(ReconcileError::Transient(format!(
                    "GitHub says {} was renamed to {} but still lists it: looking again later",
                    env.branch, to
                )));
            }
            true
        }
    };
    if !absent {
        return Err(ReconcileError::Transient(format!(
            "GitHub does not show repository {} to previewd's token (404): check its access; nothing is changed meanwhile",
            env.repo
        )));
    }
    Ok(GitHubAnswer::NotFound)
}

/// The priority a listener rule could not take (`Priority 'N' is currently in use … PriorityInUse`), if that
/// is why the stack rolled back: the stack's own reason names only the resource, its events the cause.
pub(super) fn priority_in_use(events: &[StackEvent]) -> Option<i64> {
    events
        .iter()
        .filter(|e| e.status.ends_with("_FAILED") && e.resource_type == "AWS::ElasticLoadBalancingV2::ListenerRule")
        .filter_map(|e| e.reason.as_deref())
        .filter(|r| r.contains("PriorityInUse"))
        .find_map(|r| r.split('\'').nth(1)?.parse().ok())
}

/// The events of the stack's last operation (newest first, since it began), and whether its beginning is
/// among them (a page of events may end before it).
fn last_operation<'e>(stack_name: &str, events: &'e [StackEvent]) -> (&'e [StackEvent], bool) {
    let began = events.iter().position(|e| {
        e.logical_id == stack_name && matches!(e.status.as_str(), "CREATE_IN_PROGRESS" | "UPDATE_IN_PROGRESS")
    });
    (&events[..began.unwrap_or(events.len())], began.is_some())
}

/// The event of the first resource that failed in the stack's last operation (events newest first, since
/// the operation began). Resources CloudFormation cancelled because another failed are not the cause.
fn first_failed<'e>(stack_name: &str, events: &'e [StackEvent]) -> Option<&'e StackEvent> {
    last_operation(stack_name, events)
        .0
        .iter()
        .rev()
        .filter(|e| e.logical_id != stack_name && e.status.ends_with("_FAILED"))
        .find(|e| !cancelled(e))
}

fn cancelled(e: &StackEvent) -> bool {
    e.reason.as_deref().is_some_and(|r| r.contains("cancelled"))
}

/// What failed in the stack's last operation: its first failed resource; or, when nothing failed but
/// CloudFormation stopped the operation (a create past its `TimeoutInMinutes`, a cancelled update), a
/// resource still in progress then (an ECS service first: it is what a stack waits on longest), and
/// `true`.
fn culprit<'e>(stack_name: &str, events: &'e [StackEvent]) -> Option<(&'e StackEvent, bool)> {
    if let Some(failed) = first_failed(stack_name, events) {
        return Some((failed, false));
    }
    // Only with the whole operation in view: a failure may lie on an earlier page than the cancellations.
    let (operation, whole) = last_operation(stack_name, events);
    if !whole {
        return None;
    }
    let stopped: Vec<&StackEvent> = operation
        .iter()
        .filter(|e| e.logical_id != stack_name && e.status.ends_with("_FAILED") && cancelled(e))
        .collect();
    let service = stopped.iter().find(|e| e.resource_type == "AWS::ECS::Service");
    service.or(stopped.last()).map(|e| (*e, true))
}

/// Nested stacks followed down to their failed resource, at most.
const NESTED_DEPTH_MAX: usize = 3;

/// What made a stack's last operation fail, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cause {
    pub(super) text: String,
    /// Nothing failed: CloudFormation stopped the operation (its deadline passed, or it was cancelled).
    pub(super) stopped: bool,
}

/// What made the stack's last operation fail: its first failed resource and that resource's reason (or
/// the resource still in progress when CloudFormation stopped it), followed into a nested stack, and for
/// an ECS service why its tasks stopped (ECS keeps that; CloudFormation says only that the service
/// failed, or nothing), with what to do when the reason is known. `events` are the stack's own, newest
/// first; `since`, when its last operation began.
pub(super) async fn failure_cause(
    inner: &Inner,
    stack_name: &str,
    since: Option<i64>,
    events: &[StackEvent],
) -> Option<Cause> {
    let (failed, stopped) = culprit(stack_name, events)?;
    let mut failed = failed.clone();
    let mut path = Vec::new();
    for _ in 0..NESTED_DEPTH_MAX {
        let Some(id) = failed.physical_id.clone().filter(|_| failed.resource_type == "AWS::CloudFormation::Stack")
        else {
            break;
        };
        let nested = match inner.aws.operation_events(&id).await {
            Ok(nested) => nested,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a nested stack's events");
                break;
            }
        };
        let name = id.split('/').nth(1).unwrap_or(&id);
        let Some((inner_failed, _)) = culprit(name, &nested) else { break };
        path.push(failed.logical_id.clone());
        failed = inner_failed.clone();
    }
    path.push(failed.logical_id.clone());
    let mut text = match stopped {
        false => format!(
            "{} ({}) failed: {}",
            path.join(" › "),
            failed.resource_type,
            failed.reason.as_deref().unwrap_or("no reason given")
        ),
        true => format!(
            "{} ({}) was still in progress when CloudFormation stopped the operation",
            path.join(" › "),
            failed.resource_type
        ),
    };
    if failed.resource_type == "AWS::ECS::Service"
        && let Some(service) = failed.physical_id.as_deref().and_then(previewd_cloud::ServiceRef::from_arn)
    {
        match inner.aws.service_trouble(&service, since).await {
            Ok(t) => {
                if !t.stopped.is_empty() {
                    text.push_str(&format!(". Its tasks stopped: {}", t.stopped.join("; ")));
                } else if !t.events.is_empty() {
                    text.push_str(&format!(". ECS says: {}", t.events.join("; ")));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot ask ECS why the service's tasks stopped"),
        }
    }
    if let Some(hint) = what_to_do(&text) {
        text.push_str(". ");
        text.push_str(hint);
    }
    Some(Cause { text, stopped })
}

/// What to do about a failure whose cause is known to mean one thing.
fn what_to_do(cause: &str) -> Option<&'static str> {
    const HINTS: [(&str, &str); 4] = [
        (
            "CannotPullContainerError",
            "The image could not be pulled: check that CI pushed it, and that the task execution role may pull from its repository",
        ),
        ("Essential container in task exited", "The app exited: see its log group for why (it started, then stopped)"),
        (
            "health checks",
            "The app did not pass the load balancer's health check: check service.health_check_path and the port it listens on",
        ),
        (
            "ResourceInitializationError",
            "The task could not start: check the secrets, the subnets' route to ECR, and the execution role",
        ),
    ];
    HINTS.iter().find(|(k, _)| cause.contains(k)).map(|(_, hint)| *hint)
}

/// Reads the branch's own settings file at `sha`: absent means no overrides.
/// A file at a commit never changes, so it is fetched once per commit (and a settled environment asks
/// GitHub nothing).
pub(super) async fn branch_layer(
    inner: &Inner,
    env: &EnvRecord,
    sha: &CommitSha,
) -> Result<Option<Layer>, ReconcileError> {
    let cached = inner.settings_files.lock().unwrap_or_else(|p| p.into_inner()).get(&env.repo, sha).cloned();
    let text = match cached {
        Some(text) => text,
        None => {
            // A refusal (too large, a folder) is an error and is not remembered.
            let text = inner.github.file_at(&env.repo, BRANCH_SETTINGS_FILE, sha, SETTINGS_FILE_MAX).await?;
            let mut files = inner.settings_files.lock().unwrap_or_else(|p| p.into_inner());
            files.insert(env.repo.clone(), sha.clone(), text.clone());
            text
        }
    };
    let Some(text) = text else { return Ok(None) };
    let source = format!("{BRANCH_SETTINGS_FILE} at {}", sha.short());
    Ok(Some(Layer::parse(LayerKind::Branch, source, &text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(logical_id: &str, status: &str, reason: Option<&str>) -> StackEvent {
        StackEvent {
            id: String::new(),
            timestamp: String::new(),
            logical_id: logical_id.to_owned(),
            resource_type: if logical_id == "s" { "AWS::CloudFormation::Stack" } else { "AWS::ECS::Service" }
                .to_owned(),
            physical_id: None,
            status: status.to_owned(),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn the_cause_is_the_first_failed_resource_of_the_last_operation() {
        // Newest first, as CloudFormation lists them.
        let events = [
            event("s", "ROLLBACK_COMPLETE", None),
            event("Bucket", "CREATE_FAILED", Some("Resource creation cancelled")),
            event("s", "ROLLBACK_IN_PROGRESS", Some("The following resource(s) failed to create: [Service]")),
            event("Service", "CREATE_FAILED", Some("CannotPullContainerError: pull image manifest has been retried")),
            event("Service", "CREATE_IN_PROGRESS", None),
            event("s", "CREATE_IN_PROGRESS", Some("User Initiated")),
            event("Old", "CREATE_FAILED", Some("an earlier operation")),
        ];
        let cause = first_failed("s", &events).expect("a cause");
        assert_eq!(cause.logical_id, "Service");
        assert_eq!(cause.reason.as_deref(), Some("CannotPullContainerError: pull image manifest has been retried"));
        assert_eq!(first_failed("s", &events[..1]), None);
        assert_eq!(
            culprit("s", &events).map(|(e, stopped)| (e.logical_id.as_str(), stopped)),
            Some(("Service", false))
        );
    }

    #[test]
    fn a_stopped_operation_names_what_was_still_in_progress() {
        // A create past its TimeoutInMinutes: what was in progress is cancelled, nothing failed by itself.
        let mut bucket = event("Bucket", "CREATE_FAILED", Some("Resource creation cancelled"));
        bucket.resource_type = "AWS::S3::Bucket".into();
        let events = [
            event("s", "ROLLBACK_IN_PROGRESS", Some("Create timed out")),
            bucket,
            event("Service", "CREATE_FAILED", Some("Resource creation cancelled")),
            event("Service", "CREATE_IN_PROGRESS", None),
            event("s", "CREATE_IN_PROGRESS", Some("User Initiated")),
        ];
        assert_eq!(first_failed("s", &events), None);
        let (e, stopped) = culprit("s", &events).expect("what was in progress");
        assert_eq!((e.logical_id.as_str(), stopped), ("Service", true), "the service, which a stack waits on");
        // A page that ends before the operation began may hide the failure behind the cancellations.
        assert_eq!(culprit("s", &events[..3]), None);
    }
}
