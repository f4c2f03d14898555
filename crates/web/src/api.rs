//! The JSON API: environments (listed, filtered and paged in SQL; one with its events and settings),
//! the actions a person may ask of one ([`EnvAction`]), and the reaper's last pass.

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use previewd_domain::{Desired, RepoName, Status};
use previewd_store::{EnvFilter, EnvRecord, Sort, Timeline};
use serde::{Deserialize, Serialize};

use crate::AppState;

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
    /// How the current commit came up, phase by phase (null before the reconciler's first look at it).
    pub timeline: Option<TimelineView>,
    /// What the environment waits for now (its commit's artifact or checks, its URL), or null.
    pub waiting_for: Option<WaitingView>,
    pub created_at: String,
    pub updated_at: String,
}

/// When each phase of a commit's way to ready was reached (RFC 3339), null until it is.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineView {
    pub sha: String,
    pub pushed_at: Option<String>,
    pub artifact_at: Option<String>,
    pub infrastructure_at: Option<String>,
    pub answered_at: Option<String>,
    pub ready_at: Option<String>,
}

/// What an environment waits for, since when, and the last answer it got.
#[derive(Debug, Clone, Serialize)]
pub struct WaitingView {
    pub what: String,
    pub since: Option<String>,
    pub last_answer: Option<String>,
}

impl EnvView {
    /// With the environment's timeline, when the reconciler has started one.
    pub fn with_timeline(mut self, t: Option<&Timeline>) -> Self {
        let Some(t) = t else { return self };
        self.timeline = Some(TimelineView {
            sha: t.sha.to_string(),
            pushed_at: t.pushed_at.map(rfc3339),
            artifact_at: t.artifact_at.map(rfc3339),
            infrastructure_at: t.infrastructure_at.map(rfc3339),
            answered_at: t.answered_at.map(rfc3339),
            ready_at: t.ready_at.map(rfc3339),
        });
        self.waiting_for = t.waiting_for.clone().map(|what| WaitingView {
            what,
            since: t.waiting_since.map(rfc3339),
            last_answer: t.last_answer.clone(),
        });
        self
    }
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
            timeline: None,
            waiting_for: None,
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
    /// Exactly this branch.
    pub branch: Option<String>,
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
            Some(s) => Some(s.parse::<Status>().map_err(|e| format!("status: {e}"))?),
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
            branch: self.branch.clone().filter(|b| !b.is_empty()),
            include_deleted: self.deleted,
            limit: self.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX),
            offset: self.offset.unwrap_or(0).max(0),
        })
    }
}

/// A page of environments as a JSON array, newest activity first; `X-Total-Count` says how many match.
pub(crate) async fn list_environments(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Response {
    let filter = match query.filter() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let listed = match state.store.list_page(&filter).await {
        Ok(page) => {
            let ids: Vec<i64> = page.0.iter().map(|e| e.id).collect();
            state.store.timelines(&ids).await.map(|t| (page, t))
        }
        Err(e) => Err(e),
    };
    match listed {
        Ok(((envs, total), timelines)) => {
            let views: Vec<EnvView> =
                envs.iter().map(|e| EnvView::from(e).with_timeline(timelines.get(&e.id))).collect();
            ([("x-total-count", total.to_string())], axum::Json(views)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list environments");
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
            tracing::error!(error = %e, "cannot read environment");
            Err((StatusCode::SERVICE_UNAVAILABLE, "cannot read environments now").into_response())
        }
    }
}

/// Events shown with one environment.
pub(crate) const RECENT_EVENTS: i64 = 50;

/// One environment, with its recent events.
pub(crate) async fn show_environment(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let env = match load(&state, id).await {
        Ok(env) => env,
        Err(answer) => return answer,
    };
    let events = state.store.events(id, RECENT_EVENTS).await.unwrap_or_default();
    let timeline = state.store.timeline(id).await.ok().flatten();
    let mut value = serde_json::to_value(EnvView::from(&env).with_timeline(timeline.as_ref())).unwrap_or_default();
    value["events"] = serde_json::to_value(events).unwrap_or_default();
    // The stack as the reconciler last saw it (null before its first look); AWS is not asked here.
    value["stack"] = match state.store.stack_observation(id).await {
        Ok(Some(seen)) => serde_json::json!({
            "observed_at": rfc3339(seen.observed_at),
            "status": seen.status,
            "outputs": seen.outputs,
            "events": seen.events,
        }),
        Ok(None) => serde_json::Value::Null,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    if let Some(r) = &state.reconciler {
        value["settings"] = match r.settings(&env) {
            Ok(settings) => serde_json::to_value(settings).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
    }
    axum::Json(value).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ActQuery {
    /// `keep` only: `false` lifts it.
    value: Option<bool>,
}

/// What a person may ask of one environment, through the API, the dashboard or the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvAction {
    /// Deploy again at the desired commit.
    Redeploy,
    /// Run every seed step again.
    Reseed,
    /// Tear down until the branch's next push.
    Destroy,
    /// Kept on purpose (or, with `?value=false`, no longer).
    Keep,
}

impl EnvAction {
    pub const ALL: [EnvAction; 4] = [EnvAction::Redeploy, EnvAction::Reseed, EnvAction::Destroy, EnvAction::Keep];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvAction::Redeploy => "redeploy",
            EnvAction::Reseed => "reseed",
            EnvAction::Destroy => "destroy",
            EnvAction::Keep => "keep",
        }
    }
}

impl std::str::FromStr for EnvAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EnvAction::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = EnvAction::ALL.iter().map(|a| a.as_str()).collect();
            format!("no action {s:?}: {}", known.join(", "))
        })
    }
}

/// Whether the environment stands where seeding can run again (its blueprint's steps aside): wanted, and
/// ready or failed.
pub(crate) fn may_reseed(env: &EnvRecord) -> bool {
    env.desired != Desired::Absent && matches!(env.status, Status::Ready | Status::Failed)
}

/// An action on one environment. Like a webhook, it only changes desired state and enqueues.
pub(crate) async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    Query(q): Query<ActQuery>,
) -> Response {
    let action: EnvAction = match action.parse() {
        Ok(a) => a,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let env = match load(&state, id).await {
        Ok(env) => env,
        Err(answer) => return answer,
    };
    let done = match action {
        EnvAction::Redeploy => state.store.redeploy(id, "redeploy asked for through the API").await,
        EnvAction::Destroy => {
            let why = "destroy asked for through the API: torn down until the branch's next push";
            state.store.expire(id, env.desired_seq, why).await
        }
        EnvAction::Keep => {
            let keep = q.value.unwrap_or(true);
            let why = if keep { "kept on purpose: no time-to-live, never reaped" } else { "no longer kept" };
            state.store.set_keep(id, keep, why).await.map(|()| true)
        }
        EnvAction::Reseed => {
            let steps = state.reconciler.as_ref().map_or(0, |r| r.seed_steps(&env));
            if steps == 0 {
                let why = "nothing to reseed: the environment's blueprint declares no seed steps";
                return (StatusCode::CONFLICT, why).into_response();
            }
            if !may_reseed(&env) {
                let why = format!("only a ready (or failed) environment can be reseeded; this one is {}", env.status);
                return (StatusCode::CONFLICT, why).into_response();
            }
            state.store.request_seed(id, "reseed asked for through the API: every seed step runs again").await
        }
    };
    let action = action.as_str();
    match done {
        Ok(true) => {
            if let Err(e) = state.queue.enqueue(id).await {
                tracing::error!(error = %e, "cannot enqueue action");
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
            tracing::error!(error = %e, "cannot record action");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot record the action now").into_response()
        }
    }
}

pub(crate) async fn environment_events(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.store.events(id, 200).await {
        Ok(events) => axum::Json(events).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read events");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot read events now").into_response()
        }
    }
}

/// The newest reaper pass (not a dry run): when, its outcome, its summary and its decisions; 404 before
/// the first.
pub(crate) async fn last_reaper_pass(State(state): State<AppState>) -> Response {
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
            tracing::error!(error = %e, "cannot read the reaper's last pass");
            (StatusCode::SERVICE_UNAVAILABLE, "cannot read the reaper's last pass now").into_response()
        }
    }
}
