//! The HTTP surface: the GitHub webhook endpoint, the JSON API, the dashboard, health and metrics.
//! Handlers record and enqueue; they never call AWS or reconcile inline, so GitHub gets its answer in
//! milliseconds, and a page shows what the reconciler last saw, as the store holds it.
//!
//! [`webhook`] (a verified delivery, then what it asks for), [`api`] (environments and actions),
//! `dashboard` (the pages), [`metrics`], `auth` (the dashboard token); this file: the shared state and
//! the router.

pub mod api;
mod auth;
mod dashboard;
mod metrics;
pub mod webhook;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use previewd_domain::{DnsZone, OwnerId, RepoName, Secret};
use previewd_reconciler::Queue;
use previewd_store::{DeliveryLog, Store};

pub use api::{EnvAction, EnvView, ListQuery};

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
    /// When set, `/metrics` answers it too (and nothing else does): Prometheus needs no admin token.
    pub metrics_token: Option<Secret>,
    /// Listening beyond loopback: then, without a token, the dashboard and API are refused.
    pub public: bool,
    /// GitHub's web address, for links to commits (`https://github.com`, or a GitHub Enterprise host).
    pub github_web_url: String,
    /// For an environment's settings as its blueprint and layers give them; absent in tests of the HTTP
    /// surface alone.
    pub reconciler: Option<previewd_reconciler::Reconciler>,
    /// How many webhook bodies are read at once, and how long one may take.
    pub intake: Intake,
}

/// Bounds on webhook intake: at most `slots` bodies in memory at once (a slow or hostile sender cannot
/// make previewd buffer without limit), each read within `read_timeout`; a delivery that finds no slot
/// within `wait` is answered 503 (GitHub shows it failed; the fleet observer catches up on what it said).
#[derive(Debug, Clone)]
pub struct Intake {
    pub(crate) slots: Arc<tokio::sync::Semaphore>,
    pub(crate) read_timeout: std::time::Duration,
    pub(crate) wait: std::time::Duration,
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

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/environments", get(api::list_environments))
        .route("/api/environments/{id}", get(api::show_environment))
        .route("/api/environments/{id}/events", get(api::environment_events))
        .route("/api/environments/{id}/{action}", post(api::act))
        .route("/api/reaper", get(api::last_reaper_pass))
        .route("/", get(dashboard::page))
        .route("/environments/{id}", get(dashboard::environment))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require));
    // The metrics answer the metrics token, else whatever the dashboard would.
    let metrics = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_for_metrics));
    let router = Router::new()
        .route("/webhooks/github", post(webhook::webhook))
        .merge(metrics)
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
