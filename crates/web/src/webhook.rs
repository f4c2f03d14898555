//! The GitHub webhook endpoint: a delivery is verified (size, signature, headers) by the [`Verified`]
//! extractor before any handler sees it; the handler records the desired state it carries through the
//! delivery log, in one transaction with the delivery id, and enqueues nothing else. A delivery saying
//! checks concluded on a commit records nothing but itself, and makes due the environments waiting at it.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use http_body_util::BodyExt as _;
use previewd_domain::{BranchName, CommitSha, DeliveryOutcome, Desired, EnvNames, RepoName};
use previewd_github::{MAX_BODY_BYTES, WebhookEvent, parse_event, verify_signature};
use previewd_store::{Delivery, DesiredChange, Recorded};
use tracing::Instrument as _;

use crate::AppState;

/// GitHub's delivery ids are UUIDs; anything much longer is not one.
const MAX_DELIVERY_ID: usize = 100;

/// What became of a delivery, for the webhook metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    Duplicate,
    Ignored,
    Rejected,
    /// Recorded, but no environment waits at the commit its checks concluded on.
    Unawaited,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
            Outcome::Unawaited => "unawaited",
        }
    }
}

/// Counts a webhook delivery by event and outcome. The event comes from a header anyone may send: only
/// GitHub's names previewd knows become labels (the rest are `other`), so labels stay few.
fn count(headers: &HeaderMap, outcome: Outcome) {
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("");
    let event = match event {
        "push" | "create" | "delete" | "ping" | "pull_request" => event,
        "check_run" | "check_suite" | "workflow_run" | "status" => event,
        "" => "none",
        _ => "other",
    };
    let labels = previewd_metrics::WebhookLabels { event: event.to_owned(), outcome: outcome.as_str().to_owned() };
    previewd_metrics::METRICS.webhooks.get_or_create(&labels).inc();
}

fn reject(headers: &HeaderMap, status: StatusCode, message: impl Into<String>) -> Response {
    count(headers, Outcome::Rejected);
    let message = message.into();
    tracing::info!(%status, reason = %message, "webhook refused");
    (status, message).into_response()
}

/// A delivery whose body arrived whole and in time, signed with one of the webhook secrets, with its
/// event and delivery id. While it lives it holds one of the intake's slots.
#[derive(Debug)]
pub struct Verified {
    pub headers: HeaderMap,
    pub event: String,
    pub delivery: String,
    pub body: Bytes,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl FromRequest<AppState> for Verified {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body): (_, Body) = req.into_parts();
        let headers = parts.headers;
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(reject(&headers, StatusCode::PAYLOAD_TOO_LARGE, "body over 25 MB"));
        }
        let intake = &state.intake;
        let Ok(Ok(slot)) = tokio::time::timeout(intake.wait, intake.slots.clone().acquire_owned()).await else {
            return Err(reject(&headers, StatusCode::SERVICE_UNAVAILABLE, "too many webhooks at once: try again"));
        };
        // Read at most the limit: a body that claims less and sends more is cut off, not buffered.
        let read =
            tokio::time::timeout(intake.read_timeout, http_body_util::Limited::new(body, MAX_BODY_BYTES).collect());
        let Ok(read) = read.await else {
            let why = format!("the body did not arrive within {:?}", intake.read_timeout);
            return Err(reject(&headers, StatusCode::REQUEST_TIMEOUT, why));
        };
        let bytes = match read {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err(reject(&headers, StatusCode::PAYLOAD_TOO_LARGE, "body over 25 MB"));
            }
            Err(_) => return Err(reject(&headers, StatusCode::BAD_REQUEST, "cannot read the body")),
        };
        let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Err(e) = verify_signature(&state.secrets, header_str("x-hub-signature-256"), &bytes) {
            return Err(reject(&headers, StatusCode::UNAUTHORIZED, e.to_string()));
        }
        let Some(event) = header_str("x-github-event").map(str::to_owned) else {
            return Err(reject(&headers, StatusCode::BAD_REQUEST, "no X-GitHub-Event header"));
        };
        let delivery = header_str("x-github-delivery").filter(|d| !d.is_empty() && d.len() <= MAX_DELIVERY_ID);
        let Some(delivery) = delivery.map(str::to_owned) else {
            return Err(reject(&headers, StatusCode::BAD_REQUEST, "no valid X-GitHub-Delivery header"));
        };
        Ok(Verified { headers, event, delivery, body: bytes, _slot: slot })
    }
}

pub(crate) async fn webhook(State(state): State<AppState>, hook: Verified) -> Response {
    let parsed = match parse_event(&hook.event, &hook.body) {
        Ok(p) => p,
        Err(e) => return reject(&hook.headers, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let span = tracing::info_span!("webhook", event = hook.event, delivery = hook.delivery);
    record(&state, &hook, parsed).instrument(span).await
}

/// Records what a verified, parsed webhook asks for, and enqueues the environment.
async fn record(state: &AppState, hook: &Verified, parsed: WebhookEvent) -> Response {
    let (headers, event, delivery) = (&hook.headers, hook.event.as_str(), hook.delivery.as_str());
    let (repo, display, branch, desired, reason) = match parsed {
        WebhookEvent::Ping => {
            count(headers, Outcome::Ignored);
            return (StatusCode::OK, "pong").into_response();
        }
        WebhookEvent::Ignored { reason } => {
            tracing::debug!(%reason, "webhook ignored");
            count(headers, Outcome::Ignored);
            return (StatusCode::OK, format!("ignored: {reason}")).into_response();
        }
        WebhookEvent::BranchPresent { repo, display, branch, sha } => {
            let reason = format!("{event} {} (delivery {delivery})", sha.as_ref().map_or("", |s| s.short()));
            (repo, display, branch, Desired::Present { sha }, reason)
        }
        WebhookEvent::BranchDeleted { repo, display, branch } => {
            (repo, display, branch, Desired::Absent, format!("{event}: branch deleted (delivery {delivery})"))
        }
        WebhookEvent::PullRequestOpened { repo, branch } => {
            return pull_request_opened(state, hook, repo, branch).await;
        }
        WebhookEvent::CommitChecked { repo, sha, what, .. } => {
            return commit_checked(state, hook, repo, sha, what).await;
        }
    };
    let Some(zone) = state.repos.get(&repo) else {
        tracing::info!(%repo, "repository not configured: ignored");
        count(headers, Outcome::Ignored);
        return (StatusCode::OK, format!("ignored: repository {repo} is not configured")).into_response();
    };
    // A readable name when it is free (`feature-login`), the always-hashed one on a collision.
    let (names, fallback) = EnvNames::choices(&state.owner, &repo, &branch, zone);
    let change = DesiredChange { repo, repo_display: Some(display), branch, names, fallback, desired, reason };
    let (repo, branch, env) = (change.repo.clone(), change.branch.clone(), change.names.env_key.clone());
    let d = Delivery { id: delivery.to_owned(), event: event.to_owned(), change: Some(change) };
    match state.deliveries.record(d).await {
        Ok(Recorded::Duplicate) => {
            count(headers, Outcome::Duplicate);
            (StatusCode::OK, "duplicate delivery: already recorded").into_response()
        }
        // The store made it due in the webhook's own transaction, and the committer woke this process's
        // dispatcher (see `DeliveryLog::start`).
        Ok(Recorded::New { .. }) => {
            count(headers, Outcome::Accepted);
            tracing::info!(%repo, %branch, %env, "webhook recorded");
            (StatusCode::ACCEPTED, DeliveryOutcome::Recorded.as_str()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record webhook");
            // Not acknowledged: GitHub shows the delivery as failed and it can be redelivered.
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now").into_response()
        }
    }
}

/// A pull request from a branch with an environment: GitHub is to be told about that environment again,
/// so the new pull request gets its comment; recorded with the delivery in one transaction. Nothing else
/// changes.
async fn pull_request_opened(state: &AppState, hook: &Verified, repo: RepoName, branch: BranchName) -> Response {
    let headers = &hook.headers;
    if !state.repos.contains_key(&repo) {
        count(headers, Outcome::Ignored);
        return (StatusCode::OK, format!("ignored: repository {repo} is not configured")).into_response();
    }
    match state.store.record_feedback_request(&hook.delivery, &hook.event, &repo, &branch).await {
        Ok(Recorded::Duplicate) => {
            count(headers, Outcome::Duplicate);
            (StatusCode::OK, "duplicate delivery: already recorded").into_response()
        }
        Ok(Recorded::New { .. }) => {
            count(headers, Outcome::Accepted);
            (StatusCode::ACCEPTED, DeliveryOutcome::Recorded.as_str()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record webhook");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now").into_response()
        }
    }
}

/// Checks concluded on a commit: every environment waiting at it is made due, so it looks at them again
/// now rather than at its next poll; recorded with the delivery in one transaction. Nothing else changes:
/// what the checks say is the reconciler's to read.
async fn commit_checked(state: &AppState, hook: &Verified, repo: RepoName, sha: CommitSha, what: String) -> Response {
    let headers = &hook.headers;
    if !state.repos.contains_key(&repo) {
        count(headers, Outcome::Ignored);
        return (StatusCode::OK, format!("ignored: repository {repo} is not configured")).into_response();
    }
    match state.store.record_commit_checked(&hook.delivery, &hook.event, &repo, &sha).await {
        Ok(None) => {
            count(headers, Outcome::Duplicate);
            (StatusCode::OK, "duplicate delivery: already recorded").into_response()
        }
        Ok(Some(woken)) => {
            let outcome = if woken > 0 {
                // Made due by this process's transaction: its dispatcher looks now.
                state.queue.wake();
                Outcome::Accepted
            } else {
                Outcome::Unawaited
            };
            count(headers, outcome);
            tracing::info!(%repo, sha = sha.short(), %what, woken, "commit checked");
            (StatusCode::ACCEPTED, DeliveryOutcome::Recorded.as_str()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record webhook");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now").into_response()
        }
    }
}
