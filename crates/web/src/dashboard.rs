//! The dashboard, server-rendered with maud (every value escaped: branch names may hold `<script>` or a
//! right-to-left mark). `GET /` lists environments across repositories, filtered, sorted and paged in
//! SQL, with the reaper's last pass on top; a small script swaps in fresh rows every few seconds
//! (`?fragment=rows`), and the page reads the same without it. `GET /environments/{id}` shows one
//! environment, its event log and its actions; its status refreshes from `?fragment=status`, which reads
//! one row and nothing else.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use previewd_domain::{Status, StepOutcome};
use previewd_store::EnvRecord;
use serde::Deserialize;

use crate::api::{RECENT_EVENTS, load, rfc3339};
use crate::{AppState, EnvAction, EnvView, ListQuery};

/// Rows per page.
const PAGE_SIZE: i64 = 50;
/// The rows refresh this often, in milliseconds, while the page is open.
const REFRESH_MS: u32 = 3_000;
/// An environment's own page follows its status this often, in milliseconds.
const STATUS_REFRESH_MS: u32 = 1_000;
const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}.muted{color:#888}\
.status::before{content:'●';margin-right:.3rem}.ready{color:#070}.failed,.refused{color:#a00}\
.pending,.provisioning,.deleting{color:#a60}.deleted,.skipped{color:#888}.error{color:#a00;max-width:30rem}\
form.filters{margin:1rem 0}form.filters *{margin-right:.5rem}button{cursor:pointer}";

fn age(ms: i64) -> String {
    let secs = ((previewd_store::now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Only web addresses become links: a stack output is the template's to choose, and `javascript:` in an
/// `href` would run in the dashboard's origin.
fn web_link(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "cannot read environments");
    (StatusCode::SERVICE_UNAVAILABLE, "cannot read environments now").into_response()
}

/// The page's query: strings only, as a browser's form sends them (an empty field is no filter).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PageQuery {
    repo: Option<String>,
    status: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    deleted: Option<String>,
    page: Option<String>,
    /// `rows`: only the table's rows, for the live refresh.
    fragment: Option<String>,
}

impl PageQuery {
    fn list(&self) -> ListQuery {
        ListQuery {
            repo: self.repo.clone(),
            status: self.status.clone(),
            q: self.q.clone(),
            branch: None,
            sort: self.sort.clone(),
            deleted: self.deleted.as_deref().is_some_and(|d| d == "true" || d == "on" || d == "1"),
            limit: None,
            offset: None,
        }
    }
}

struct PageQueryView {
    list: ListQuery,
}

fn commit_link(state: &AppState, e: &EnvView) -> Markup {
    match &e.sha {
        Some(sha) => {
            let short = &sha[..7.min(sha.len())];
            html! { a href=(format!("{}/{}/commit/{sha}", state.github_web_url, e.repo)) { code { (short) } } }
        }
        None => html! { span.muted { "—" } },
    }
}

fn rows(state: &AppState, envs: &[EnvRecord]) -> Markup {
    html! {
        @for e in envs {
            @let v = EnvView::from(e);
            tr data-env=(v.id) data-status=(v.status) {
                td { (v.repo) }
                // <bdi>: a right-to-left mark in a branch name cannot reorder the rest of the row.
                td { a href=(format!("/environments/{}", v.id)) { bdi { (v.branch) } } }
                td { span class={ "status " (v.status) } { (v.status) } @if v.keep { " (kept)" } }
                td {
                    @match (&v.url, e.status) {
                        (Some(url), Status::Ready) if web_link(url) => a href=(url) { (url) },
                        (Some(url), Status::Ready) => span { (url) },
                        _ => span.muted { (v.dns_name) },
                    }
                }
                td { (commit_link(state, &v)) }
                td title=(v.created_at) { (age(e.created_at)) }
                td title=(v.updated_at) { (age(e.updated_at)) }
                // Seeding lands with issue 7: until a blueprint declares seed steps, nothing was seeded.
                td { @match e.seeded_at { Some(at) => span title=(rfc3339(at)) { "seeded " (age(at)) }, None => span.muted { "—" } } }
                td.error {
                    @if let Some(err) = &v.last_error {
                        details { summary { (err.chars().take(60).collect::<String>()) } (err) }
                    }
                }
            }
        }
        @if envs.is_empty() {
            tr { td colspan="9" .muted { "No environments match." } }
        }
    }
}

async fn reaper_banner(state: &AppState) -> Markup {
    match state.store.last_reaper_pass().await {
        Ok(Some(p)) => html! {
            p class={ "reaper " (p.outcome) } {
                "Reaper, " (rfc3339(p.finished_at)) ": " (p.summary)
            }
        },
        _ => html! { p.reaper.muted { "The reaper has not run yet." } },
    }
}

pub(crate) async fn page(State(state): State<AppState>, Query(pq): Query<PageQuery>) -> Response {
    let q = PageQueryView { list: pq.list() };
    let mut filter = match q.list.filter() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let page = pq.page.as_deref().and_then(|p| p.parse::<i64>().ok()).unwrap_or(1).max(1);
    filter.limit = PAGE_SIZE;
    filter.offset = (page - 1).saturating_mul(PAGE_SIZE);
    let (envs, total) = match state.store.list_page(&filter).await {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    if pq.fragment.as_deref() == Some("rows") {
        return Html(rows(&state, &envs).into_string()).into_response();
    }
    let query_without_page = |page: i64| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("repo", &q.list.repo), ("status", &q.list.status), ("q", &q.list.q), ("sort", &q.list.sort)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                s.append_pair(k, v);
            }
        }
        if q.list.deleted {
            s.append_pair("deleted", "true");
        }
        s.append_pair("page", &page.to_string());
        s.finish()
    };
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let repos: Vec<String> = state.repos.keys().map(|r| r.to_string()).collect();
    let selected = |a: &Option<String>, b: &str| a.as_deref() == Some(b);
    let body = html! {
        h1 { "previewd" }
        (reaper_banner(&state).await)
        form.filters method="get" action="/" {
            select name="repo" {
                option value="" { "every repository" }
                @for r in &repos { option value=(r) selected[selected(&q.list.repo, r)] { (r) } }
            }
            select name="status" {
                option value="" { "any status" }
                @for s in previewd_domain::Status::ALL {
                    option value=(s.as_str()) selected[selected(&q.list.status, s.as_str())] { (s.as_str()) }
                }
            }
            input type="search" name="q" placeholder="branch" value=(q.list.q.clone().unwrap_or_default());
            select name="sort" {
                @for (v, label) in [("updated", "last change"), ("branch", "branch"), ("status", "status"), ("repo", "repository")] {
                    option value=(v) selected[selected(&q.list.sort, v)] { "by " (label) }
                }
            }
            label { input type="checkbox" name="deleted" value="true" checked[q.list.deleted]; " deleted too" }
            button { "Show" }
        }
        table {
            thead { tr { th { "Repository" } th { "Branch" } th { "Status" } th { "URL" } th { "Commit" } th { "Age" } th { "Last change" } th { "Seeded" } th { "Last error" } } }
            tbody #rows data-query=(query_without_page(page)) { (rows(&state, &envs)) }
        }
        p.muted {
            (total) " environments"
            @if page > 1 { " · " a href=(format!("/?{}", query_without_page(page - 1))) { "newer" } }
            " · page " (page) " of " (pages)
            @if page < pages { " · " a href=(format!("/?{}", query_without_page(page + 1))) { "older" } }
            " · JSON: " a href="/api/environments" { "/api/environments" }
        }
        script { (PreEscaped(format!(
            "setInterval(async()=>{{const t=document.getElementById('rows');\
             const r=await fetch('/?'+t.dataset.query+'&fragment=rows',{{credentials:'same-origin'}});\
             if(r.ok)t.innerHTML=await r.text();}},{REFRESH_MS});"
        ))) }
    };
    Html(layout("previewd", body).into_string()).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EnvironmentQuery {
    /// `status`: only the status word, for the page's live refresh (no events, settings or AWS).
    fragment: Option<String>,
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
    let stack = state.store.stack_observation(id).await;
    let timeline = state.store.timeline(id).await.ok().flatten();
    let v = EnvView::from(&env).with_timeline(timeline.as_ref());
    let actions = state.dashboard_token.is_some();
    let body = html! {
        p { a href="/" { "← every environment" } }
        h1 { bdi { (v.branch) } " " span.muted { "(" (v.repo) ")" } }
        table {
            tr { th { "Status" } td { span class={ "status " (v.status) } #status { (v.status) } @if v.keep { " (kept)" } } }
            tr { th { "URL" } td { @match &v.url { Some(u) if web_link(u) => a href=(u) { (u) }, Some(u) => span { (u) }, None => span.muted { (v.dns_name) } } } }
            tr { th { "Commit" } td { (commit_link(&state, &v)) " deployed: " (v.deployed_sha.clone().unwrap_or_else(|| "—".into())) } }
            tr { th { "Stack" } td { code { (v.stack_name) } } }
            tr { th { "Created" } td { (v.created_at) } }
            tr { th { "Last change" } td { (v.updated_at) } }
            @if let Some(err) = &v.last_error { tr { th { "Last error" } td.error { (err) } } }
            @if let Some(w) = &v.waiting_for {
                tr { th { "Waiting for" } td { (w.what) @if let Some(since) = &w.since { span.muted { " since " (since) } }
                    @if let Some(a) = &w.last_answer { br; span.muted { "last answer: " (a) } } } }
            }
            @if let Some(t) = &v.timeline {
                tr { th { "Timeline" } td {
                    @for (phase, at) in [("pushed", &t.pushed_at), ("artifact found", &t.artifact_at),
                        ("infrastructure complete", &t.infrastructure_at), ("URL answered", &t.answered_at), ("ready", &t.ready_at)] {
                        (phase) ": " @match at { Some(at) => (at), None => span.muted { "—" } } br;
                    }
                } }
            }
            tr { th { "Test data" } td {
                @match (&v.seeded_at, v.seeding) {
                    (_, true) => "seeding…",
                    (Some(at), false) => { "seeded " (at) },
                    (None, false) => span.muted { "—" },
                }
            } }
            @if let Some(err) = &v.github_error { tr { th { "GitHub" } td.error { (err) } } }
        }
        @if !v.seed.is_empty() {
            h2 { "Seed steps" }
            table {
                tr { th { "Step" } th { "Kind" } th { "Outcome" } th { "Detail" } th { "At" } }
                @for o in &v.seed {
                    tr { td { (o.step + 1) " " (o.name) } td { code { (o.kind) } } td class={ "status " (if o.outcome == StepOutcome::Failed { Status::Failed } else { Status::Ready }) } { (o.outcome) } td { (o.detail) } td { (rfc3339(o.at)) } }
                }
            }
        }
        @if actions {
            p.actions {
                @for action in EnvAction::ALL.map(EnvAction::as_str) {
                    button data-action=(action) { (action) } " "
                }
            }
            script { (PreEscaped(format!(
                "document.querySelectorAll('button[data-action]').forEach(b=>b.onclick=async()=>{{\
                 const r=await fetch('/api/environments/{id}/'+b.dataset.action,{{method:'POST',credentials:'same-origin'}});\
                 b.textContent=b.dataset.action+(r.ok?' ✓':' ✗ '+r.status);}});"
            ))) }
        } @else {
            p.muted { "Read-only: actions need PREVIEWD_DASHBOARD_TOKEN." }
        }
        // The status follows the reconciler without a reload.
        script { (PreEscaped(format!(
            "setInterval(async()=>{{const r=await fetch('/environments/{id}?fragment=status',{{credentials:'same-origin'}});\
             if(!r.ok)return;const st=await r.text();const s=document.getElementById('status');\
             s.textContent=st;s.className='status '+st;}},{STATUS_REFRESH_MS});"
        ))) }
        h2 { "Stack" }
        @match &stack {
            Err(e) => p.error { "Cannot read what the reconciler saw: " (format!("{e}")) },
            Ok(None) => p.muted { code { (v.stack_name) } ": not looked at yet" },
            Ok(Some(_)) => {},
        }
        @if let Ok(Some(stack)) = &stack {
            p { code { (v.stack_name) } " " (stack.status.clone().unwrap_or_else(|| "not found".into()))
                " · " span.muted title=(rfc3339(stack.observed_at)) { "seen " (age(stack.observed_at)) " ago" } " · "
                a href=(format!("https://console.aws.amazon.com/cloudformation/home#/stacks?filteringText={}", v.stack_name)) { "AWS console" } }
            @if !stack.outputs.is_empty() {
                table { @for (k, val) in &stack.outputs { tr { th { (k) } td { code { (val) } } } } }
            }
            @if !stack.events.is_empty() {
                details { summary { "Recent stack events" }
                    table { @for e in &stack.events {
                        tr { td { (e.timestamp) } td { (e.logical_id) } td { (e.status) } td { (e.reason.clone().unwrap_or_default()) } }
                    } }
                }
            }
        }
        h2 { "Settings" }
        @match &settings {
            Ok(list) if !list.is_empty() => table {
                tr { th { "Key" } th { "Value" } th { "Layer" } }
                @for s in list { tr { td { code { (s.key) } } td { code { (s.value) } } td title=(s.source) { (s.layer) } } }
            },
            Ok(_) => p.muted { "No settings: the repository is not configured." },
            Err(e) => p.error { (e) },
        }
        h2 { "Events" }
        table {
            @for e in events.iter().rev() {
                tr { td { (rfc3339(e.at)) } td { (e.kind) } td { (e.message) } }
            }
        }
    };
    Html(layout(&format!("previewd: {}", v.branch), body).into_string()).into_response()
}
