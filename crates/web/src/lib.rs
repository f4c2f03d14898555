//! The HTTP surface: the GitHub webhook endpoint, the JSON API, the dashboard, health and metrics.
//! Handlers record and enqueue; they never call AWS or reconcile inline, so GitHub gets its answer in
//! milliseconds.

mod auth;
mod dashboard;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use previewd_domain::{Desired, DnsZone, EnvNames, OwnerId, RepoName, Secret};
use previewd_github::{MAX_BODY_BYTES, WebhookEvent, parse_event, verify_signature};
use previewd_reconciler::Queue;
use previewd_store::{Delivery, DeliveryLog, DesiredChange, EnvFilter, EnvRecord, Recorded, Sort, Store};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

/// GitHub's delivery ids are UUIDs; anything much longer is not one.
const MAX_DELIVERY_ID: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Webhook deliveries are recorded through it: many in one commit under load.
    pub deliveries: DeliveryLog,
    pub queue: Queue,
    pub owner: OwnerId,
    /// Webhook secrets; several during a rotation.
    pub secrets: Arc<[Secret]>,
    /// The repositories served and the zone each one's environments are named under.
    pub repos: Arc<BTreeMap<RepoName, DnsZone>>,
    /// When set, the dashboard, the API and the metrics require it.
    pub dashboard_token: Option<Secret>,
    /// Listening beyond loopback: then, without a token, the dashboard and API are refused.
    pub public: bool,
    /// GitHub's web address, for links to commits (`https://github.com`, or a GitHub Enterprise host).
    pub github_web_url: String,
    /// For an environment's settings and its stack as AWS shows it (read-only); absent in tests of the
    /// HTTP surface alone.
    pub reconciler: Option<previewd_reconciler::Reconciler>,
    /// How many webhook bodies are read at once, and how long one may take.
    pub intake: Intake,
}

/// Bounds on webhook intake: at most `slots` bodies in memory at once (a slow or hostile sender cannot
/// make previewd buffer without limit), each read within `read_timeout`; a delivery that finds no slot
/// within `wait` is answered 503 (GitHub shows it failed; the fleet observer catches up on what it said).
#[derive(Debug, Clone)]
pub struct Intake {
    slots: Arc<tokio::sync::Semaphore>,
    read_timeout: std::time::Duration,
    wait: std::time::Duration,
}

impl Intake {
    pub fn new(bodies: usize, read_timeout: std::time::Duration, wait: std::time::Duration) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(bodies.max(1))), read_timeout, wait }
    }
}

impl Default for Intake {
    /// 64 bodies (25 MB each at most), 10 s to read one (GitHub's own deadline), 2 s to wait for a slot.
    fn default() -> Self {
        Self::new(64, std::time::Duration::from_secs(10), std::time::Duration::from_secs(2))
    }
}

/// GitHub's web address for an API base URL: `https://api.github.com` → `https://github.com`,
/// `https://HOST/api/v3` → `https://HOST`.
pub fn github_web_url(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if api == "https://api.github.com" {
        return "https://github.com".to_owned();
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("owner", &self.owner)
            .field("repos", &self.repos.keys())
            .finish_non_exhaustive()
    }
}

/// Counts a webhook delivery by event and outcome. The event comes from a header anyone may send: only
/// GitHub's names previewd knows become labels (the rest are `other`), so labels stay few.
fn count(headers: &HeaderMap, outcome: &str) {
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("");
    let event = match event {
        "push" | "create" | "delete" | "ping" | "pull_request" => event,
        "" => "none",
        _ => "other",
    };
    let labels = previewd_metrics::WebhookLabels { event: event.to_owned(), outcome: outcome.to_owned() };
    previewd_metrics::METRICS.webhooks.get_or_create(&labels).inc();
}

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/environments", get(list_environments))
        .route("/api/environments/{id}", get(show_environment))
        .route("/api/environments/{id}/events", get(environment_events))
        .route("/api/environments/{id}/{action}", post(act))
        .route("/api/reaper", get(last_reaper_pass))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard::page))
        .route("/environments/{id}", get(dashboard::environment))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    let router = Router::new()
        .route("/webhooks/github", post(webhook))
        .route("/healthz", get(|| async { "ok" }))
        .route("/login", post(auth::login))
        .merge(protected)
        .with_state(state);
    with_security_headers(router)
}

/// Headers on every answer, error pages included: no page of previewd's may be framed by another site
/// (clickjacking its destroy buttons), no answer is read as another type than it says, and nothing it
/// answers (environments, tokens' pages, errors) is kept by a browser or a proxy. A handler that sets
/// one of them itself keeps its own.
fn with_security_headers(router: Router) -> Router {
    use axum::http::{HeaderValue, header};
    use tower_http::set_header::SetResponseHeaderLayer as Set;
    router
        .layer(Set::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(Set::if_not_present(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'")))
        .layer(Set::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(Set::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

fn reject(headers: &HeaderMap, status: StatusCode, message: impl Into<String>) -> Response {
    count(headers, "rejected");
    let message = message.into();
    tracing::info!(%status, %message, "webhook refused");
    (status, message).into_response()
}

async fn webhook(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return reject(&headers, StatusCode::PAYLOAD_TOO_LARGE, "body over 25 MB");
    }
    let intake = &state.intake;
    let Ok(Ok(_slot)) = tokio::time::timeout(intake.wait, intake.slots.clone().acquire_owned()).await else {
        return reject(&headers, StatusCode::SERVICE_UNAVAILABLE, "too many webhooks at once: try again");
    };
    // Read at most the limit: a body that claims less and sends more is cut off, not buffered.
    let read = tokio::time::timeout(intake.read_timeout, http_body_util::Limited::new(body, MAX_BODY_BYTES).collect());
    let Ok(read) = read.await else {
        let why = format!("the body did not arrive within {:?}", intake.read_timeout);
        return reject(&headers, StatusCode::REQUEST_TIMEOUT, why);
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return reject(&headers, StatusCode::PAYLOAD_TOO_LARGE, "body over 25 MB");
        }
        Err(_) => return reject(&headers, StatusCode::BAD_REQUEST, "cannot read the body"),
    };
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = verify_signature(&state.secrets, header_str("x-hub-signature-256"), &bytes) {
        return reject(&headers, StatusCode::UNAUTHORIZED, e.to_string());
    }
    let Some(event) = header_str("x-github-event") else {
        return reject(&headers, StatusCode::BAD_REQUEST, "no X-GitHub-Event header");
    };
    let Some(delivery) = header_str("x-github-delivery").filter(|d| !d.is_empty() && d.len() <= MAX_DELIVERY_ID) else {
        return reject(&headers, StatusCode::BAD_REQUEST, "no valid X-GitHub-Delivery header");
    };
    let parsed = match parse_event(event, &bytes) {
        Ok(p) => p,
        Err(e) => return reject(&headers, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let span = tracing::info_span!("webhook", event, delivery);
    record(&state, &headers, event, delivery, parsed).instrument(span).await
}

/// Records what a verified, parsed webhook asks for, and enqueues the environment.
async fn record(state: &AppState, headers: &HeaderMap, event: &str, delivery: &str, parsed: WebhookEvent) -> Response {
    let (repo, display, branch, desired, reason) = match parsed {
        WebhookEvent::Ping => {
            count(headers, "ignored");
            return (StatusCode::OK, "pong").into_response();
        }
        WebhookEvent::Ignored { reason } => {
            tracing::debug!(%reason, "ignored");
            count(headers, "ignored");
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
            return pull_request_opened(state, headers, event, delivery, repo, branch).await;
        }
    };
    let Some(zone) = state.repos.get(&repo) else {
        tracing::info!(%repo, "repository not configured: ignored");
        count(headers, "ignored");
        return (StatusCode::OK, format!("ignored: repository {repo} is not configured")).into_response();
    };
    // A readable name when it is free (`feature-login`), the always-hashed one on a collision.
    let hashed = EnvNames::hashed(&state.owner, &repo, &branch, zone);
    let (names, fallback) = match EnvNames::readable(&state.owner, &repo, &branch, zone) {
        Some(readable) => (readable, Some(hashed)),
        None => (hashed, None),
    };
    let change = DesiredChange { repo, repo_display: Some(display), branch, names, fallback, desired, reason };
    let (repo, branch, env) = (change.repo.clone(), change.branch.clone(), change.names.env_key.clone());
    let d = Delivery { id: delivery.to_owned(), event: event.to_owned(), change: Some(change) };
    match state.deliveries.record(d).await {
        Ok(Recorded::Duplicate) => {
            count(headers, "duplicate");
            (StatusCode::OK, "duplicate delivery: already recorded").into_response()
        }
        // The store made it due in the webhook's own transaction, and the committer woke this process's
        // dispatcher (see `DeliveryLog::start`).
        Ok(Recorded::New { .. }) => {
            count(headers, "accepted");
            tracing::info!(%repo, %branch, %env, "recorded");
            (StatusCode::ACCEPTED, "recorded").into_response()
        }
        Err(e) => {
            tracing::error!(error = ?e, "cannot record webhook");
            // Not acknowledged: GitHub shows the delivery as failed and it can be redelivered.
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now").into_response()
        }
    }
}

/// A pull request from a branch with an environment: GitHub is to be told about that environment again,
/// so the new pull request gets its comment. Nothing else changes.
async fn pull_request_opened(
    state: &AppState,
    headers: &HeaderMap,
    event: &str,
    delivery: &str,
    repo: RepoName,
    branch: previewd_domain::BranchName,
) -> Response {
    if !state.repos.contains_key(&repo) {
        count(headers, "ignored");
        return (StatusCode::OK, format!("ignored: repository {repo} is not configured")).into_response();
    }
    // Marked before the delivery is recorded: a crash between the two leaves a redelivery to mark it again
    // (harmless), never a recorded delivery whose mark was lost.
    let touched = match state.store.find(&repo, &branch).await {
        Ok(Some(env)) => state.store.touch_feedback(env.id).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    let recorded = match touched {
        Ok(()) => state.store.record_webhook(delivery, event, None).await.map(|r| r == Recorded::Duplicate),
        Err(e) => Err(e),
    };
    let recorded = match recorded {
        Ok(true) => {
            count(headers, "duplicate");
            return (StatusCode::OK, "duplicate delivery: already recorded").into_response();
        }
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    match recorded {
        Ok(()) => {
            count(headers, "accepted");
            (StatusCode::ACCEPTED, "recorded").into_response()
        }
        Err(e) => {
            tracing::error!(error = ?e, "cannot record webhook");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now").into_response()
        }
    }
}

/// An environment as the API shows it.
#[derive(Debug, Serialize)]
pub struct EnvView {
    pub id: i64,
    pub repo: String,
    pub branch: String,
    pub env: String,
    pub status: String,
    /// The commit the environment is for (the desired one; the deployed one once it is gone).
    pub sha: Option<String>,
    pub deployed_sha: Option<String>,
    pub desired: &'static str,
    pub url: Option<String>,
    pub dns_name: String,
    pub stack_name: String,
    pub last_error: Option<String>,
    /// Since when a listing or a look-up has lacked the branch (the reaper's grace counts from it).
    pub missing_since: Option<String>,
    /// Kept on purpose: no time-to-live, never removed by the reaper.
    pub keep: bool,
    /// When the reaper found it past its time-to-live (it comes back with the next push).
    pub expired_at: Option<String>,
    /// When seeding last ended well; `seeding` while seed steps are to run; each step's outcome.
    pub seeded_at: Option<String>,
    pub seeding: bool,
    pub seed: Vec<previewd_store::SeedOutcome>,
    /// Why GitHub could not be told about the environment, the last time it could not.
    pub github_error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl From<&EnvRecord> for EnvView {
    fn from(e: &EnvRecord) -> Self {
        let (desired, sha) = match &e.desired {
            Desired::Present { sha } => ("present", sha.as_ref().map(|s| s.to_string())),
            Desired::Absent => ("absent", None),
        };
        Self {
            id: e.id,
            repo: e.repo_display.clone().unwrap_or_else(|| e.repo.to_string()),
            branch: e.branch.to_string(),
            env: e.env_key.to_string(),
            status: e.status.to_string(),
            sha: sha.or_else(|| e.deployed_sha.as_ref().map(|s| s.to_string())),
            deployed_sha: e.deployed_sha.as_ref().map(|s| s.to_string()),
            desired,
            url: e.url.clone(),
            dns_name: e.dns_name.clone(),
            stack_name: e.stack_name.clone(),
            last_error: e.last_error.clone(),
            missing_since: e.missing_since.map(rfc3339),
            keep: e.keep,
            expired_at: e.expired_at.map(rfc3339),
            seeded_at: e.seeded_at.map(rfc3339),
            seeding: e.seed_pending,
            seed: e.seed_log.clone(),
            github_error: e.feedback_error.clone(),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// At most this many environments per page of the API; the default page is smaller.
const PAGE_MAX: i64 = 1_000;
const PAGE_DEFAULT: i64 = 100;

/// Filters and paging of `GET /api/environments`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ListQuery {
    pub repo: Option<String>,
    pub status: Option<String>,
    /// Part of the branch name.
    pub q: Option<String>,
    /// Show deleted environments too.
    #[serde(default)]
    pub deleted: bool,
    /// `updated` (default), `branch`, `status` or `repo`.
    pub sort: Option<String>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

impl ListQuery {
    /// The store's filter, or a message saying which parameter is wrong.
    pub fn filter(&self) -> Result<EnvFilter, String> {
        let repo = match self.repo.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => Some(RepoName::new(r).map_err(|e| format!("repo: {e}"))?),
            None => None,
        };
        let status = match self.status.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(s.parse::<previewd_domain::Status>().map_err(|e| format!("status: {e}"))?),
            None => None,
        };
        let sort = match self.sort.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Sort::parse(s).ok_or_else(|| format!("sort: {s:?} is not updated, branch, status or repo"))?,
            None => Sort::default(),
        };
        Ok(EnvFilter {
            repo,
            status,
            sort,
            text: self.q.clone().filter(|q| !q.trim().is_empty()),
            include_deleted: self.deleted,
            limit: self.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX),
            offset: self.offset.unwrap_or(0).max(0),
        })
    }
}

/// A page of environments as a JSON array, newest activity first; `X-Total-Count` says how many match.
async fn list_environments(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
    let filter = match query.filter() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    match state.store.list_page(&filter).await {
        Ok((envs, total)) => {
            ([("x-total-count", total.to_string())], axum::Json(envs.iter().map(EnvView::from).collect::<Vec<_>>()))
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = ?e, "cannot list environments");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot read environments now").into_response()
        }
    }
}

/// The environment, or the answer to give instead: 404 when there is none, 503 when the store fails.
pub(crate) async fn load(state: &AppState, id: i64) -> Result<EnvRecord, Response> {
    match state.store.get(id).await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no environment {id}")).into_response()),
        Err(e) => {
            tracing::error!(error = ?e, "cannot read environment");
            Err((StatusCode::SERVICE_UNAVAILABLE, "cannot read environments now").into_response())
        }
    }
}

/// Events shown with one environment.
pub(crate) const RECENT_EVENTS: i64 = 50;

/// One environment, with its recent events.
async fn show_environment(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let env = match load(&state, id).await {
        Ok(env) => env,
        Err(answer) => return answer,
    };
    let events = state.store.events(id, RECENT_EVENTS).await.unwrap_or_default();
    let mut value = serde_json::to_value(EnvView::from(&env)).unwrap_or_default();
    value["events"] = serde_json::to_value(events).unwrap_or_default();
    if let Some(r) = &state.reconciler {
        value["settings"] = match r.settings(&env) {
            Ok(settings) => serde_json::to_value(settings).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
    }
    axum::Json(value).into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ActQuery {
    /// `keep` only: `false` lifts it.
    value: Option<bool>,
}

/// An action on one environment. Like a webhook, it only changes desired state and enqueues.
async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    Query(q): Query<ActQuery>,
) -> Response {
    let env = match load(&state, id).await {
        Ok(env) => env,
        Err(answer) => return answer,
    };
    let done = match action.as_str() {
        "redeploy" => state.store.redeploy(id, "redeploy asked for through the API").await,
        "destroy" => {
            let why = "destroy asked for through the API: torn down until the branch's next push";
            state.store.expire(id, env.desired_seq, why).await
        }
        "keep" => {
            let keep = q.value.unwrap_or(true);
            let why = if keep { "kept on purpose: no time-to-live, never reaped" } else { "no longer kept" };
            state.store.set_keep(id, keep, why).await.map(|()| true)
        }
        "reseed" => {
            let steps = state.reconciler.as_ref().map_or(0, |r| r.seed_steps(&env));
            if steps == 0 {
                let why = "nothing to reseed: the environment's blueprint declares no seed steps";
                return (StatusCode::CONFLICT, why).into_response();
            }
            let standing = env.desired != Desired::Absent
                && matches!(env.status, previewd_domain::Status::Ready | previewd_domain::Status::Failed);
            if !standing {
                let why = format!("only a ready (or failed) environment can be reseeded; this one is {}", env.status);
                return (StatusCode::CONFLICT, why).into_response();
            }
            state.store.request_seed(id, "reseed asked for through the API: every seed step runs again").await
        }
        other => {
            return (StatusCode::NOT_FOUND, format!("no action {other:?}: redeploy, reseed, destroy, keep"))
                .into_response();
        }
    };
    match done {
        Ok(true) => {
            if let Err(e) = state.queue.enqueue(id).await {
                tracing::error!(error = ?e, "cannot enqueue action");
                return (StatusCode::SERVICE_UNAVAILABLE, "recorded, but cannot schedule it now: ask again")
                    .into_response();
            }
            tracing::info!(env_id = id, action, "recorded");
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"id": id, "action": action, "recorded": true})))
                .into_response()
        }
        // The environment changed meanwhile (a push): nothing recorded; asking again acts on the new state.
        Ok(false) => (StatusCode::CONFLICT, "the environment changed meanwhile: look again").into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "cannot record action");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the action now").into_response()
        }
    }
}

async fn environment_events(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.events(id, 200).await {
        Ok(events) => axum::Json(events).into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "cannot read events");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot read events now").into_response()
        }
    }
}

/// The newest reaper pass (not a dry run): when, its outcome, its summary and its decisions; 404 before
/// the first.
async fn last_reaper_pass(State(state): State<AppState>) -> Response {
    match state.store.last_reaper_pass().await {
        Ok(Some(p)) => {
            let decisions: serde_json::Value = serde_json::from_str(&p.decisions).unwrap_or_default();
            axum::Json(serde_json::json!({
                "started_at": rfc3339(p.started_at),
                "finished_at": rfc3339(p.finished_at),
                "outcome": p.outcome,
                "summary": p.summary,
                "decisions": decisions,
            }))
            .into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no reaper pass yet").into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "cannot read the reaper's last pass");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot read the reaper's last pass now").into_response()
        }
    }
}

/// Metrics in the format the scraper asks for, as Prometheus's own client libraries choose it:
/// OpenMetrics when `Accept` names `application/openmetrics-text`, else the older text format 0.0.4
/// (what `promtool check metrics` and a plain `curl` read).
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Environments by status, reaper passes and the queue are counted in SQL; a failing store leaves them out.
    let queue = state.store.queue_stats().await.unwrap_or_default();
    let snapshot = previewd_metrics::Snapshot {
        environments: match state.store.status_counts().await {
            // Every status, zero included, so a dashboard's series never vanish.
            Ok(counts) => previewd_domain::Status::ALL
                .iter()
                .map(|s| (s.as_str().to_owned(), counts.iter().find(|(c, _)| c == s.as_str()).map_or(0, |(_, n)| *n)))
                .collect(),
            Err(_) => Vec::new(),
        },
        reaper_passes: state.store.reaper_pass_counts().await.unwrap_or_default(),
        queue_depth: queue.depth,
        queue_oldest_seconds: queue.oldest_due.map_or(0.0, |at| (previewd_store::now_ms() - at).max(0) as f64 / 1000.0),
    };
    let text = previewd_metrics::METRICS.encode(&snapshot);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
    } else {
        let text = previewd_metrics::to_text_format(&text);
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
    }
}
