//! `GET /environments/{id}`: one environment. A failed one leads with what went wrong and what to do;
//! then its facts, the actions that apply to it now (destroy asks to be confirmed), its stack as the
//! reconciler last saw it (the page asks AWS nothing), its events, and its settings last, folded. Its
//! status follows the reconciler from `?fragment=status`, which reads one row and nothing else.

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use previewd_domain::{Desired, Status, StepOutcome};
use previewd_store::EnvRecord;
use serde::Deserialize;

use super::{commit_link, layout, pull_links, web_link, when};
use crate::api::{RECENT_EVENTS, load, may_reseed, rfc3339};
use crate::{AppState, EnvAction, EnvView};

/// The page follows its status this often, in milliseconds.
const STATUS_REFRESH_MS: u32 = 1_000;
const SCRIPT: &str = include_str!("environment.js");

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EnvironmentQuery {
    /// `status`: only the status word, for the page's live refresh (no events, settings or AWS).
    fragment: Option<String>,
}

/// An action as a button offers it: the API's action, its query, and what the button says.
struct Offer {
    action: EnvAction,
    query: &'static str,
    label: &'static str,
}

/// The actions that mean something for the environment as it is: none on one being torn down or gone
/// with its branch, or never provisioned; redeploy brings back one a person destroyed (also while its
/// teardown is only asked for); reseed only where the blueprint seeds and the environment stands; keep or
/// stop keeping, whichever it is not.
fn offers(env: &EnvRecord, seed_steps: usize) -> Vec<Offer> {
    let wanted = env.desired != Desired::Absent;
    let standing = wanted
        && env.expired_at.is_none()
        && matches!(env.status, Status::Pending | Status::Provisioning | Status::Ready | Status::Failed);
    let mut offers = Vec::new();
    if wanted && !matches!(env.status, Status::Deleting | Status::Skipped) {
        let label = match env.status == Status::Deleted || env.expired_at.is_some() {
            true => "Bring it back",
            false => "Redeploy",
        };
        offers.push(Offer { action: EnvAction::Redeploy, query: "", label });
    }
    if seed_steps > 0 && env.expired_at.is_none() && may_reseed(env) {
        offers.push(Offer { action: EnvAction::Reseed, query: "", label: "Reseed" });
    }
    if standing {
        offers.push(match env.keep {
            true => Offer { action: EnvAction::Keep, query: "?value=false", label: "Stop keeping" },
            false => Offer { action: EnvAction::Keep, query: "", label: "Keep" },
        });
        offers.push(Offer { action: EnvAction::Destroy, query: "", label: "Destroy" });
    }
    offers
}

/// What to do about a failure: a fix pushed, or the same commit tried again.
fn next_step(v: &EnvView) -> Markup {
    let sha = v.sha.as_deref().map_or("—", |s| &s[..7.min(s.len())]);
    html! {
        "Fix it on branch " bdi { (v.branch) } " and push, or redeploy to try commit " code { (sha) }
        " again. The event log below says what happened before."
    }
}

fn actions(env: &EnvRecord, v: &EnvView, offers: &[Offer]) -> Markup {
    html! {
        @if offers.is_empty() {
            p.muted { "Nothing to do here now: " (match env.status {
                Status::Deleting => "it is being torn down.",
                Status::Deleted => "it is gone with its branch.",
                Status::Skipped => "it is not provisioned (its last error says why).",
                _ => "its branch is gone.",
            }) }
        }
        div.actions {
            @for o in offers {
                @if o.action == EnvAction::Destroy {
                    button.danger type="button" data-confirm="destroy" aria-expanded="false" aria-controls="confirm-destroy" { "Destroy…" }
                } @else {
                    button type="button" data-action=(o.action.as_str()) data-query=(o.query) data-label=(o.label) { (o.label) }
                }
            }
        }
        @if offers.iter().any(|o| o.action == EnvAction::Destroy) {
            div.confirm #confirm-destroy role="group" aria-labelledby="confirm-destroy-text" hidden {
                p #confirm-destroy-text {
                    "Destroy " bdi { (v.branch) } "? Its stack, its data and its address go now; the branch's \
                     next push (or redeploy) makes a new one."
                }
                button.danger type="button" data-action="destroy" data-label="Destroy" { "Destroy now" } " "
                button type="button" data-cancel { "Cancel" }
            }
        }
        p #action-result role="status" aria-live="polite" {}
    }
}

pub(crate) async fn environment(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<EnvironmentQuery>,
) -> Response {
    let env = match load(&state, id).await {
        Ok(env) => env,
        Err(answer) => return answer,
    };
    if q.fragment.as_deref() == Some("status") {
        return env.status.as_str().into_response();
    }
    let events = state.store.events(id, RECENT_EVENTS).await.unwrap_or_default();
    // The settings and their layers, as the blueprint gives them; the stack as the reconciler last saw it.
    let settings = match &state.reconciler {
        Some(r) => r.settings(&env).map_err(|e| e.to_string()),
        None => Ok(Vec::new()),
    };
    let seed_steps = state.reconciler.as_ref().map_or(0, |r| r.seed_steps(&env));
    let stack = state.store.stack_observation(id).await;
    let timeline = state.store.timeline(id).await.ok().flatten();
    let pulls = state.store.pull_requests(&[id]).await.unwrap_or_default();
    let v = EnvView::from(&env).with_timeline(timeline.as_ref());
    let offers = offers(&env, seed_steps);
    let body = html! {
        header { p { a href="/" { "← every environment" } } }
        main {
            h1 { bdi { (v.branch) } " " span.muted { "(" (v.repo) ")" } }
            p { "Status: "
                span class={ "status " (v.status) } #status role="status" data-env=(id) data-refresh=(STATUS_REFRESH_MS) { (v.status) }
                @if v.keep { " (kept)" }
            }
            @if env.status == Status::Failed {
                section.problem #problem aria-labelledby="problem-title" {
                    h2 #problem-title { "What went wrong" }
                    p.error { (v.last_error.clone().unwrap_or_else(|| "No reason was recorded.".into())) }
                    p { strong { "What to do: " } (next_step(&v)) }
                }
            }
            @if let Some(w) = &v.waiting_for {
                p { strong { "Waiting for " } (w.what) @if let Some(since) = &w.since { span.muted { " since " (since) } }
                    @if let Some(a) = &w.last_answer { br; span.muted { "last answer: " (a) } } }
            }
            @if state.dashboard_token.is_some() {
                h2 { "Actions" }
                (actions(&env, &v, &offers))
            } @else {
                p.muted { "Read-only: actions need PREVIEWD_DASHBOARD_TOKEN." }
            }
            h2 { "Details" }
            table {
                tr { th scope="row" { "URL" } td { @match &v.url { Some(u) if web_link(u) => a href=(u) { (u) }, Some(u) => span { (u) }, None => span.muted { (v.dns_name) } } } }
                tr { th scope="row" { "Pull request" } td { (pull_links(&state, &v, &pulls)) } }
                tr { th scope="row" { "Commit" } td { (commit_link(&state, &v)) " deployed: " (v.deployed_sha.clone().unwrap_or_else(|| "—".into())) } }
                tr { th scope="row" { "Stack" } td { code { (v.stack_name) } } }
                tr { th scope="row" { "Created" } td { (when(env.created_at)) } }
                tr { th scope="row" { "Last change" } td { (when(env.updated_at)) } }
                @if env.status != Status::Failed {
                    @if let Some(err) = &v.last_error { tr { th scope="row" { "Last error" } td.error { (err) } } }
                }
                @if let Some(t) = &v.timeline {
                    tr { th scope="row" { "Timeline" } td {
                        @for (phase, at) in [("pushed", &t.pushed_at), ("artifact found", &t.artifact_at),
                            ("infrastructure complete", &t.infrastructure_at), ("URL answered", &t.answered_at), ("ready", &t.ready_at)] {
                            (phase) ": " @match at { Some(at) => (at), None => span.muted { "—" } } br;
                        }
                    } }
                }
                tr { th scope="row" { "Test data" } td {
                    @match (&v.seeded_at, v.seeding) {
                        (_, true) => "seeding…",
                        (Some(at), false) => { "seeded " (at) },
                        (None, false) => span.muted { "—" },
                    }
                } }
                @if let Some(err) = &v.github_error { tr { th scope="row" { "GitHub" } td.error { (err) } } }
            }
            @if !v.seed.is_empty() {
                h2 { "Seed steps" }
                table {
                    tr { th scope="col" { "Step" } th scope="col" { "Kind" } th scope="col" { "Outcome" } th scope="col" { "Detail" } th scope="col" { "At" } }
                    @for o in &v.seed {
                        tr { td { (o.step + 1) " " (o.name) } td { code { (o.kind) } } td class={ "status " (if o.outcome == StepOutcome::Failed { Status::Failed } else { Status::Ready }) } { (o.outcome) } td { (o.detail) } td { (rfc3339(o.at)) } }
                    }
                }
            }
            h2 { "Stack" }
            @match &stack {
                Err(e) => p.error { "Cannot read what the reconciler saw: " (format!("{e}")) },
                Ok(None) => p.muted { code { (v.stack_name) } ": not looked at yet" },
                Ok(Some(_)) => {},
            }
            @if let Ok(Some(stack)) = &stack {
                p { code { (v.stack_name) } " " (stack.status.clone().unwrap_or_else(|| "not found".into()))
                    " · " span.muted title=(rfc3339(stack.observed_at)) { "seen " (super::ago(stack.observed_at)) } " · "
                    a href=(format!("https://console.aws.amazon.com/cloudformation/home#/stacks?filteringText={}", v.stack_name)) { "AWS console" } }
                @if !stack.outputs.is_empty() {
                    table { @for (k, val) in &stack.outputs { tr { th scope="row" { (k) } td { code { (val) } } } } }
                }
                @if !stack.events.is_empty() {
                    details { summary { "Recent stack events" }
                        table { @for e in &stack.events {
                            tr { td { (e.timestamp) } td { (e.logical_id) } td { (e.status) } td { (e.reason.clone().unwrap_or_default()) } }
                        } }
                    }
                }
            }
            h2 { "Events" }
            table {
                @for e in events.iter().rev() {
                    tr { td { (rfc3339(e.at)) } td { (e.kind) } td { (e.message) } }
                }
            }
            h2 { "Settings" }
            @match &settings {
                Ok(list) if !list.is_empty() => details {
                    summary { (super::counted(list.len() as u64, "setting", "settings")) ", each with the layer that set it" }
                    table {
                        tr { th scope="col" { "Key" } th scope="col" { "Value" } th scope="col" { "Layer" } }
                        @for s in list { tr { td { code { (s.key) } } td { code { (s.value) } } td title=(s.source) { (s.layer) } } }
                    }
                },
                Ok(_) => p.muted { "No settings: the repository is not configured." },
                Err(e) => p.error { (e) },
            }
        }
        script { (PreEscaped(SCRIPT)) }
    };
    Html(layout(&format!("previewd: {}", v.branch), body).into_string()).into_response()
}
