//! The dashboard, server-rendered with maud (every value escaped: branch names may hold `<script>` or a
//! right-to-left mark). `GET /` opens with how many environments are ready, failed and on their way, then
//! lists them across repositories, filtered, sorted and paged in SQL, each row with what a person needs
//! to act (its pull request and author, relative times, the whole error), and the reaper's last pass
//! below. A small script swaps in fresh rows every few seconds (`?fragment=rows`, `?fragment=summary`)
//! without taking a person's focus, and announces changes of status politely; the page reads the same
//! without it. `GET /environments/{id}` is one environment (see [`environment`]).
//!
//! Accessible as checked by axe-core in a real browser at desktop and phone widths (see
//! `tests/browser`): labelled controls, AA contrast, landmarks, a viewport a phone lays out at its width.

mod environment;

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use previewd_domain::Status;
use previewd_store::{EnvRecord, PullRequest};
use serde::Deserialize;

pub(crate) use self::environment::environment;
use crate::api::rfc3339;
use crate::{AppState, EnvView, ListQuery};

/// Rows per page.
const PAGE_SIZE: i64 = 50;
/// The rows refresh this often, in milliseconds, while the page is open.
const REFRESH_MS: u32 = 3_000;
const STYLE: &str = include_str!("style.css");
const LIST_SCRIPT: &str = include_str!("list.js");

/// How long ago, in words ("3 min ago"), with the exact time in `datetime` and as a tooltip.
fn when(ms: i64) -> Markup {
    let at = rfc3339(ms);
    html! { time datetime=(at) title=(at) { (ago(ms)) } }
}

fn ago(ms: i64) -> String {
    let secs = ((previewd_store::now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        s if s < 60 => format!("{s} s ago"),
        s if s < 3600 => format!("{} min ago", s / 60),
        s if s < 86400 => format!("{} h ago", s / 3600),
        s => counted(s / 86400, "day", "days") + " ago",
    }
}

/// "1 environment", "2 environments".
fn counted(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
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
                meta name="viewport" content="width=device-width, initial-scale=1";
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
    /// `rows`: only the table's rows; `summary`: only the counts; for the live refresh.
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

fn commit_link(state: &AppState, e: &EnvView) -> Markup {
    match &e.sha {
        Some(sha) => {
            let short = &sha[..7.min(sha.len())];
            html! { a href=(format!("{}/{}/commit/{sha}", state.github_web_url, e.repo)) { code { (short) } } }
        }
        None => html! { span.muted { "—" } },
    }
}

/// The branch's open pull requests, each linked, with who opened it.
fn pull_links(state: &AppState, e: &EnvView, pulls: &[PullRequest]) -> Markup {
    html! {
        @for (i, p) in pulls.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(format!("{}/{}/pull/{}", state.github_web_url, e.repo, p.number)) { "#" (p.number) }
            @if let Some(author) = &p.author { " by " bdi { (author) } }
        }
        @if pulls.is_empty() { span.muted { "—" } }
    }
}

fn rows(state: &AppState, envs: &[EnvRecord], pulls: &HashMap<i64, Vec<PullRequest>>) -> Markup {
    html! {
        @for e in envs {
            @let v = EnvView::from(e);
            tr data-env=(v.id) data-status=(v.status) data-branch=(v.branch) {
                td data-label="Repository" { (v.repo) }
                // <bdi>: a right-to-left mark in a branch name cannot reorder the rest of the row.
                td data-label="Branch" { a href=(format!("/environments/{}", v.id)) { bdi { (v.branch) } } }
                td data-label="Status" { span class={ "status " (v.status) } { (v.status) } @if v.keep { " (kept)" } }
                td data-label="URL" {
                    @match (&v.url, e.status) {
                        (Some(url), Status::Ready) if web_link(url) => a href=(url) { (url) },
                        (Some(url), Status::Ready) => span { (url) },
                        _ => span.muted { (v.dns_name) },
                    }
                }
                td data-label="Pull request" { (pull_links(state, &v, pulls.get(&e.id).map_or(&[][..], Vec::as_slice))) }
                td data-label="Commit" { (commit_link(state, &v)) }
                td data-label="Last change" { (when(e.updated_at)) }
                td data-label="Created" { (when(e.created_at)) }
                td data-label="Test data" {
                    @match e.seeded_at { Some(at) => { "seeded " (when(at)) }, None => span.muted { "—" } }
                }
                // The whole error, wrapped: a cut one hides what to do, which comes last.
                td.error data-label="Last error" { @if let Some(err) = &v.last_error { (err) } }
            }
        }
        @if envs.is_empty() {
            tr { td colspan="10" .muted { "No environments match." } }
        }
    }
}

/// How many environments are ready, failed and on their way, over every repository.
async fn summary(state: &AppState) -> Markup {
    let counts = match state.store.status_counts().await {
        Ok(counts) => counts,
        Err(_) => return html! { span.muted { "Cannot count environments now." } },
    };
    let of = |wanted: &[Status]| -> u64 {
        counts.iter().filter(|(_, s, _)| wanted.iter().any(|w| w.as_str() == s)).map(|(_, _, n)| *n as u64).sum()
    };
    let (ready, failed) = (of(&[Status::Ready]), of(&[Status::Failed]));
    let (waiting, deleting) = (of(&[Status::Pending, Status::Provisioning]), of(&[Status::Deleting]));
    html! {
        a.ready href="/?status=ready" { (ready) " ready" } " · "
        a.failed href="/?status=failed" { (failed) " failed" } " · "
        span.pending { (waiting) " on their way" }
        @if deleting > 0 { " · " span.deleting { (deleting) " being torn down" } }
    }
}

async fn reaper_banner(state: &AppState) -> Markup {
    match state.store.last_reaper_pass().await {
        Ok(Some(p)) => html! {
            p class={ "reaper " (p.outcome) } {
                "The reaper's last pass, " (when(p.finished_at)) ": " (p.summary)
            }
        },
        _ => html! { p.reaper.muted { "The reaper has not run yet." } },
    }
}

pub(crate) async fn page(State(state): State<AppState>, Query(pq): Query<PageQuery>) -> Response {
    let list = pq.list();
    let mut filter = match list.filter() {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    if pq.fragment.as_deref() == Some("summary") {
        return Html(summary(&state).await.into_string()).into_response();
    }
    let page = pq.page.as_deref().and_then(|p| p.parse::<i64>().ok()).unwrap_or(1).max(1);
    filter.limit = PAGE_SIZE;
    filter.offset = (page - 1).saturating_mul(PAGE_SIZE);
    let (envs, total) = match state.store.list_page(&filter).await {
        Ok(found) => found,
        Err(e) => return unavailable(e),
    };
    let ids: Vec<i64> = envs.iter().map(|e| e.id).collect();
    let mut pulls: HashMap<i64, Vec<PullRequest>> = HashMap::new();
    for p in state.store.pull_requests(&ids).await.unwrap_or_default() {
        pulls.entry(p.env_id).or_default().push(p);
    }
    if pq.fragment.as_deref() == Some("rows") {
        return Html(rows(&state, &envs, &pulls).into_string()).into_response();
    }
    let query_without_page = |page: i64| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("repo", &list.repo), ("status", &list.status), ("q", &list.q), ("sort", &list.sort)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                s.append_pair(k, v);
            }
        }
        if list.deleted {
            s.append_pair("deleted", "true");
        }
        s.append_pair("page", &page.to_string());
        s.finish()
    };
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let repos: Vec<String> = state.repos.keys().map(|r| r.to_string()).collect();
    let selected = |a: &Option<String>, b: &str| a.as_deref() == Some(b);
    let body = html! {
        header { h1 { "previewd" } p.summary #summary { (summary(&state).await) } }
        main {
            form.filters method="get" action="/" role="search" aria-label="Filter environments" {
                label { "Repository"
                    select name="repo" {
                        option value="" { "every repository" }
                        @for r in &repos { option value=(r) selected[selected(&list.repo, r)] { (r) } }
                    }
                }
                label { "Status"
                    select name="status" {
                        option value="" { "any status" }
                        @for s in Status::ALL {
                            option value=(s.as_str()) selected[selected(&list.status, s.as_str())] { (s.as_str()) }
                        }
                    }
                }
                label { "Branch" input type="search" name="q" placeholder="part of its name" value=(list.q.clone().unwrap_or_default()); }
                label { "Sort"
                    select name="sort" {
                        @for (v, label) in [("updated", "last change"), ("branch", "branch"), ("status", "status"), ("repo", "repository")] {
                            option value=(v) selected[selected(&list.sort, v)] { "by " (label) }
                        }
                    }
                }
                label.check { input type="checkbox" name="deleted" value="true" checked[list.deleted]; "deleted too" }
                button { "Show" }
            }
            table.envs {
                caption.visually-hidden { "Environments, newest activity first unless sorted otherwise" }
                thead { tr {
                    @for h in ["Repository", "Branch", "Status", "URL", "Pull request", "Commit", "Last change", "Created", "Test data", "Last error"] {
                        th scope="col" { (h) }
                    }
                } }
                tbody #rows data-query=(query_without_page(page)) data-refresh=(REFRESH_MS) { (rows(&state, &envs, &pulls)) }
            }
            div #announce .visually-hidden role="status" aria-live="polite" {}
            nav aria-label="Pages" {
                p.muted {
                    (counted(total.max(0) as u64, "environment", "environments"))
                    @if page > 1 { " · " a href=(format!("/?{}", query_without_page(page - 1))) { "newer" } }
                    " · page " (page) " of " (pages)
                    @if page < pages { " · " a href=(format!("/?{}", query_without_page(page + 1))) { "older" } }
                    " · JSON: " a href="/api/environments" { "/api/environments" }
                }
            }
        }
        footer { (reaper_banner(&state).await) }
        script { (PreEscaped(LIST_SCRIPT)) }
    };
    Html(layout("previewd", body).into_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ages_read_as_words() {
        assert_eq!(counted(1u64, "environment", "environments"), "1 environment");
        assert_eq!(counted(0u64, "environment", "environments"), "0 environments");
        let now = previewd_store::now_ms();
        assert_eq!(ago(now - 5_000), "5 s ago");
        assert_eq!(ago(now - 3 * 60_000), "3 min ago");
        assert_eq!(ago(now - 86_400_000), "1 day ago");
        assert_eq!(ago(now - 3 * 86_400_000), "3 days ago");
    }
}
