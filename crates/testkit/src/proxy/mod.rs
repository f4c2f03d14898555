//! A proxy in front of moto that makes it as strict as AWS where moto is lenient, and injects faults:
//! chosen calls answered with AWS's real error documents (so the SDK's own error parsing runs), stack
//! states moto never reaches (ROLLBACK_COMPLETE, UPDATE_ROLLBACK_FAILED, a slow CREATE_IN_PROGRESS),
//! DeleteStack refused while a bucket still holds objects (DELETE_FAILED), and per-key errors inside a
//! DeleteObjects 200. It also records every call, so tests can count stack operations.
//!
//! moto is not thread-safe, where AWS handles each request whole: two stacks created at once can leave
//! one `CREATE_IN_PROGRESS` for ever (its resources' maps are mutated during iteration), and a
//! DescribeStacks creates a new stack's resources lazily, racing its CreateStack (`BucketAlreadyExists`).
//! So the proxy handles one request at a time (its own calls to moto for that request included; a delay or
//! an error it injects waits for no turn), and carries out a request it has received even when the caller
//! goes away (killed mid-call), as AWS carries out a request it has received. Tests' own clients straight
//! to moto ([`crate::TestEnv::stack`], say) are outside this, and even their reads can race previewd's
//! calls: a test uses them once previewd has settled, or while it is idle.

mod answer;
mod operation;
mod state;
mod upstream;
mod xml;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::time::Instant;

use self::answer::handle;
use self::state::{ErrorFault, ProxyState, Rollback, StatusOverride, StoppedTask, Until};

/// One call the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub service: String,
    pub action: String,
    /// The stack name a CloudFormation call names (by name or by id).
    pub stack: Option<String>,
    /// Answered by a fault rather than by moto.
    pub injected: bool,
    /// Keys a DeleteObjects call names (AWS takes at most 1,000).
    pub keys: usize,
    /// When the proxy received it.
    pub at: Instant,
    /// A CloudFormation call's ClientRequestToken: the same token twice is one request retried.
    pub token: Option<String>,
    /// A CreateStack's TimeoutInMinutes.
    pub timeout_minutes: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AwsProxy {
    state: Arc<Mutex<ProxyState>>,
    upstream: String,
    client: reqwest::Client,
    /// Held while a request is handled with moto: one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
    addr: SocketAddr,
}

impl AwsProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let proxy = Self {
            state: Arc::new(Mutex::new(ProxyState { strict_bucket_deletes: true, ..ProxyState::default() })),
            upstream: upstream.trim_end_matches('/').to_owned(),
            // A moto that never answers holds the turn: the SDK's own operation timeout is as long.
            client: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client"),
            turn: Arc::default(),
            addr: listener.local_addr().expect("addr"),
        };
        let app = Router::new().fallback(handle).with_state(proxy.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        proxy
    }

    /// The URL to give the AWS SDK as its endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `times` calls of `service`/`action` get AWS's error document instead of an answer.
    pub fn fail(&self, service: &str, action: &str, times: usize, status: u16, code: &str, message: &str) {
        self.lock().errors.push(ErrorFault {
            service: service.into(),
            action: action.into(),
            status,
            code: code.into(),
            message: message.into(),
            remaining: times,
        });
    }

    /// Forgets the errors still to be answered ([`fail`](Self::fail)): AWS goes through again.
    pub fn reset_faults(&self) {
        self.lock().errors.clear();
    }

    /// `Throttling: Rate exceeded`, as CloudFormation answers a client that calls too often.
    pub fn throttle(&self, action: &str, times: usize) {
        self.fail("cloudformation", action, times, 400, "Throttling", "Rate exceeded");
    }

    /// UpdateStack answers "No updates are to be performed." (moto accepts unchanged updates).
    pub fn no_updates(&self, times: usize) {
        self.fail("cloudformation", "UpdateStack", times, 400, "ValidationError", "No updates are to be performed.");
    }

    fn override_status(
        &self,
        stack: &str,
        status: &str,
        reason: &str,
        after: Option<&str>,
        until: Until,
        duration: Duration,
    ) {
        self.lock().overrides.push(StatusOverride {
            stack: stack.into(),
            status: status.into(),
            reason: reason.into(),
            after: after.map(str::to_owned),
            active: after.is_none(),
            until,
            duration,
            event: None,
            rollback: None,
        });
    }

    /// As [`rollback_next_create`](Self::rollback_next_create), with the cause CloudFormation records: a
    /// `CREATE_FAILED` event of resource `logical_id` (of `resource_type`) saying `reason`.
    pub fn rollback_next_create_because(&self, stack: &str, logical_id: &str, resource_type: &str, reason: &str) {
        self.rollback_next_create(stack);
        let mut st = self.lock();
        if let Some(o) = st.overrides.iter_mut().rev().find(|o| o.stack == stack) {
            o.event = Some((logical_id.to_owned(), resource_type.to_owned(), reason.to_owned()));
        }
    }

    /// After the stack's next CreateStack, it shows ROLLBACK_COMPLETE (a failed create) until deleted.
    pub fn rollback_next_create(&self, stack: &str) {
        let reason = "The following resource(s) failed to create: [Service]. Rollback requested by user.";
        self.override_status(
            stack,
            "ROLLBACK_COMPLETE",
            reason,
            Some("CreateStack"),
            Until::Action("DeleteStack".into()),
            Duration::ZERO,
        );
    }

    /// After the stack's next UpdateStack, it shows UPDATE_ROLLBACK_COMPLETE (the update failed and was
    /// rolled back) until the next UpdateStack or DeleteStack, with the cause CloudFormation records: an
    /// `UPDATE_FAILED` event of resource `logical_id` (of `resource_type`, its physical id moto's) saying
    /// `reason`.
    pub fn rollback_next_update_because(&self, stack: &str, logical_id: &str, resource_type: &str, reason: &str) {
        self.lock().overrides.push(StatusOverride {
            stack: stack.into(),
            status: "UPDATE_ROLLBACK_COMPLETE".into(),
            reason: format!("The following resource(s) failed to update: [{logical_id}]."),
            after: Some("UpdateStack".into()),
            active: false,
            until: Until::Action("UpdateStack".into()),
            duration: Duration::ZERO,
            event: Some((logical_id.to_owned(), resource_type.to_owned(), reason.to_owned())),
            rollback: Some(Rollback::Now),
        });
    }

    /// Every ECS service's stopped tasks include one that stopped for `reason`, its container for
    /// `container_reason` (as ECS keeps a failed deployment's tasks for about an hour).
    pub fn stopped_task(&self, reason: &str, container_reason: &str) {
        self.lock().stopped_task = Some(StoppedTask {
            reason: reason.to_owned(),
            container_reason: container_reason.to_owned(),
            service_gone: false,
            service: None,
        });
    }

    /// As [`stopped_task`](Self::stopped_task), of a service deleted since (a rolled-back create deletes
    /// it): listing a service's tasks answers `ServiceNotFoundException`; the cluster's stopped tasks are
    /// that one and another service's (stopped for another reason), each naming its service as its group.
    pub fn stopped_task_of_deleted_service(&self, reason: &str, container_reason: &str) {
        self.stopped_task(reason, container_reason);
        if let Some(t) = self.lock().stopped_task.as_mut() {
            t.service_gone = true;
        }
    }

    /// After the stack's next UpdateStack, it shows UPDATE_ROLLBACK_FAILED until deleted.
    pub fn rollback_fails_after_update(&self, stack: &str) {
        let reason = "The following resource(s) failed to update: [Service].";
        self.override_status(
            stack,
            "UPDATE_ROLLBACK_FAILED",
            reason,
            Some("UpdateStack"),
            Until::Action("DeleteStack".into()),
            Duration::ZERO,
        );
    }

    /// After the stack's next CreateStack, it shows CREATE_IN_PROGRESS for `duration` (moto creates at once).
    pub fn slow_create(&self, stack: &str, duration: Duration) {
        self.override_status(
            stack,
            "CREATE_IN_PROGRESS",
            "User Initiated",
            Some("CreateStack"),
            Until::Time(Instant::now()),
            duration,
        );
    }

    /// The next `times` DeleteStack calls on the stack find an object freshly written to each of its
    /// buckets (an application still writing while it is torn down).
    pub fn refill_buckets_before_delete(&self, stack: &str, times: usize) {
        self.lock().refill.insert(stack.into(), times);
    }

    /// After the stack's next UpdateStack, it shows UPDATE_IN_PROGRESS for `duration` (moto updates at
    /// once); a CancelUpdateStack meanwhile rolls it back to what it was (UPDATE_ROLLBACK_COMPLETE), as
    /// CloudFormation does.
    pub fn slow_update(&self, stack: &str, duration: Duration) {
        self.lock().overrides.push(StatusOverride {
            stack: stack.into(),
            status: "UPDATE_IN_PROGRESS".into(),
            reason: "User Initiated".into(),
            after: Some("UpdateStack".into()),
            active: false,
            until: Until::Time(Instant::now()),
            duration,
            event: None,
            rollback: Some(Rollback::OnCancel(None)),
        });
    }

    /// The next `times` DeleteObjects calls answer 200 with every key refused (`InternalError`).
    pub fn refuse_keys(&self, times: usize) {
        self.lock().key_errors = times;
    }

    /// The next `times` calls of `service`/`action` are answered only after `delay` (a slow or hung AWS
    /// endpoint: longer than the SDK's operation timeout, the caller gives up first).
    pub fn slow(&self, service: &str, action: &str, times: usize, delay: Duration) {
        self.lock().delays.push((service.into(), action.into(), delay, times));
    }

    /// Forgets the calls seen so far (to count what one pass does).
    pub fn reset_calls(&self) {
        let mut st = self.lock();
        let calls = std::mem::take(&mut st.calls);
        st.earlier.extend(calls.into_iter().map(|c| (c.service, c.action)));
    }

    /// Every (service, action) called since the proxy started, [`reset_calls`](Self::reset_calls) or not.
    pub fn actions_seen(&self) -> std::collections::BTreeSet<(String, String)> {
        let st = self.lock();
        let mut seen = st.earlier.clone();
        seen.extend(st.calls.iter().map(|c| (c.service.clone(), c.action.clone())));
        seen
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls seen from the `start`th on (a watcher's poll clones only what is new).
    pub fn calls_from(&self, start: usize) -> Vec<Call> {
        self.lock().calls.get(start..).map(<[Call]>::to_vec).unwrap_or_default()
    }

    /// How many times the stack was created and deleted (calls that reached moto).
    pub fn creates_and_deletes(&self, stack: &str) -> (usize, usize) {
        (self.count("CreateStack", stack), self.count("DeleteStack", stack))
    }

    /// How many calls of `action` on `stack` reached moto.
    pub fn count(&self, action: &str, stack: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.action == action && c.stack.as_deref() == Some(stack) && !c.injected)
            .count()
    }
}
