//! What the proxy holds: the calls it has seen, and the faults and stack states a test has asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Call;

#[derive(Debug, Clone)]
pub(super) struct ErrorFault {
    pub(super) service: String,
    pub(super) action: String,
    pub(super) status: u16,
    pub(super) code: String,
    pub(super) message: String,
    pub(super) remaining: usize,
}

#[derive(Debug, Clone)]
pub(super) enum Until {
    /// Until a call of this action on the stack is passed to moto.
    Action(String),
    Time(Instant),
}

#[derive(Debug, Clone)]
pub(super) struct StatusOverride {
    pub(super) stack: String,
    pub(super) status: String,
    pub(super) reason: String,
    /// Becomes active when this action on the stack passes to moto; `None`: active now.
    pub(super) after: Option<String>,
    pub(super) active: bool,
    pub(super) until: Until,
    /// For a `Time` bound: how long after activation.
    pub(super) duration: Duration,
    /// A failed resource's event shown first in the stack's events while active: (logical id, type,
    /// reason), as CloudFormation records the cause of a rollback.
    pub(super) event: Option<(String, String, String)>,
    /// Whether the stack is rolled back to what it was before the update that activated this.
    pub(super) rollback: Option<Rollback>,
}

impl StatusOverride {
    /// Shown at once, until `until` passes to moto on the stack.
    pub(super) fn now(stack: &str, status: &str, reason: String, until: &str) -> Self {
        Self {
            stack: stack.into(),
            status: status.into(),
            reason,
            after: None,
            active: true,
            until: Until::Action(until.into()),
            duration: Duration::ZERO,
            event: None,
            rollback: None,
        }
    }
}

/// The stack's template and tags, to roll an update back to.
pub(super) type Saved = (String, Vec<(String, String)>);

#[derive(Debug, Clone)]
pub(super) enum Rollback {
    /// At once: the update failed.
    Now,
    /// When a CancelUpdateStack comes while it shows (what to go back to, kept at the update).
    OnCancel(Option<Saved>),
}

#[derive(Debug, Default)]
pub(super) struct ProxyState {
    pub(super) calls: Vec<Call>,
    /// The (service, action) of calls cleared by `reset_calls`.
    pub(super) earlier: std::collections::BTreeSet<(String, String)>,
    pub(super) errors: Vec<ErrorFault>,
    pub(super) overrides: Vec<StatusOverride>,
    pub(super) strict_bucket_deletes: bool,
    /// stack → how many more DeleteStack calls find a fresh object in its buckets first
    pub(super) refill: BTreeMap<String, usize>,
    /// how many more DeleteObjects calls answer 200 with every key refused
    pub(super) key_errors: usize,
    /// (service, action, delay, how many more calls): answered by moto, but only after the delay
    pub(super) delays: Vec<(String, String, Duration, usize)>,
    /// A stopped task every ECS service shows: moto's services run no tasks.
    pub(super) stopped_task: Option<StoppedTask>,
}

#[derive(Debug, Clone)]
pub(super) struct StoppedTask {
    pub(super) reason: String,
    pub(super) container_reason: String,
    /// Its service is deleted (a rolled-back create): ECS lists its tasks only among the cluster's.
    pub(super) service_gone: bool,
    /// The service whose tasks were last asked for: the task's group names it.
    pub(super) service: Option<String>,
}
