//! The checks on commits: check runs and commit statuses a test sets per repository and commit, listed as
//! GitHub lists them: `/commits/{ref}/check-runs` (wrapped in `{"total_count", "check_runs"}`, the newest
//! run of each name unless `filter=all`, paged) and `/commits/{ref}/status` (the newest status of each
//! context and their combined state, paged).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use axum::http::Method;
use serde_json::{Value, json};

use super::FakeGitHub;
use super::paging::{Paging, page};
use super::reply::{Reply, rfc3339};
use super::routes::Asked;
use super::state::GhState;

/// The first check run id; ids are global and increase, so a re-run has a higher id than the run it repeats.
const FIRST_CHECK_RUN_ID: u64 = 4_000;
/// The first commit status id; ids are global and increase.
const FIRST_STATUS_ID: u64 = 9_000;
/// A check run's statuses, as GitHub names them.
const CHECK_RUN_STATUSES: [&str; 6] = ["queued", "in_progress", "completed", "waiting", "requested", "pending"];
/// A completed check run's conclusions, as GitHub names them.
const CONCLUSIONS: [&str; 9] = [
    "success",
    "neutral",
    "skipped",
    "failure",
    "cancelled",
    "timed_out",
    "action_required",
    "startup_failure",
    "stale",
];
/// A commit status's states, as GitHub names them.
const STATUS_STATES: [&str; 4] = ["error", "failure", "pending", "success"];

/// Every commit's check runs and statuses.
#[derive(Debug, Default)]
pub(super) struct Checks {
    /// (repo, sha) → check runs, oldest first
    runs: BTreeMap<(String, String), Vec<CheckRun>>,
    /// (repo, sha) → every status set, oldest first (GitHub keeps them all; the newest of a context counts)
    statuses: BTreeMap<(String, String), Vec<CommitStatus>>,
    /// check runs created so far, every commit's
    runs_created: u64,
    /// statuses set so far, every commit's
    statuses_set: u64,
}

#[derive(Debug)]
struct CheckRun {
    id: u64,
    name: String,
    status: String,
    conclusion: Option<String>,
    started: SystemTime,
    completed: Option<SystemTime>,
}

#[derive(Debug)]
struct CommitStatus {
    id: u64,
    context: String,
    state: String,
    created: SystemTime,
}

/// The key of a commit: the repository and the commit, as GitHub reads them, without regard to case.
fn commit_key(repo: &str, sha: &str) -> (String, String) {
    (repo.to_ascii_lowercase(), sha.to_ascii_lowercase())
}

/// Refuses what GitHub would never show: an unknown status or conclusion, a conclusion before completion.
fn assert_check_run(status: &str, conclusion: Option<&str>) {
    assert!(CHECK_RUN_STATUSES.contains(&status), "{status} is not a check run status GitHub knows");
    match conclusion {
        Some(c) => assert!(
            status == "completed" && CONCLUSIONS.contains(&c),
            "a conclusion ({c}) comes only with `completed`, and must be one GitHub knows"
        ),
        None => assert_ne!(status, "completed", "a completed check run has a conclusion"),
    }
}

impl Checks {
    /// A new check run of `name` on the commit `key`, with the next id.
    fn add_run(&mut self, key: (String, String), name: &str, status: &str, conclusion: Option<&str>) -> u64 {
        let id = FIRST_CHECK_RUN_ID + self.runs_created;
        self.runs_created += 1;
        let now = SystemTime::now();
        let run = CheckRun {
            id,
            name: name.to_owned(),
            status: status.to_owned(),
            conclusion: conclusion.map(str::to_owned),
            started: now,
            completed: conclusion.map(|_| now),
        };
        self.runs.entry(key).or_default().push(run);
        id
    }
}

impl FakeGitHub {
    /// Sets check run `name` on commit `sha` to `status` (GitHub's: `queued`, `in_progress`, `completed`…)
    /// with `conclusion` (only with `completed`): the newest run of that name changes in place, as a run
    /// moves from queued to completed, or a first run is created. Returns its id.
    pub fn set_check_run(&self, repo: &str, sha: &str, name: &str, status: &str, conclusion: Option<&str>) -> u64 {
        assert_check_run(status, conclusion);
        let mut st = self.lock();
        st.know_repo(&repo.to_ascii_lowercase());
        let key = commit_key(repo, sha);
        if let Some(run) = st.checks.runs.get_mut(&key).and_then(|runs| runs.iter_mut().rev().find(|r| r.name == name))
        {
            run.status = status.to_owned();
            run.conclusion = conclusion.map(str::to_owned);
            run.completed = conclusion.map(|_| SystemTime::now());
            return run.id;
        }
        st.checks.add_run(key, name, status, conclusion)
    }

    /// Re-runs check run `name` on commit `sha`: a new run of that name with a higher id, as GitHub makes
    /// one; the runs it repeats are still listed with `filter=all`. Returns its id.
    pub fn rerun_check_run(&self, repo: &str, sha: &str, name: &str, status: &str, conclusion: Option<&str>) -> u64 {
        assert_check_run(status, conclusion);
        let mut st = self.lock();
        st.know_repo(&repo.to_ascii_lowercase());
        st.checks.add_run(commit_key(repo, sha), name, status, conclusion)
    }

    /// Sets commit status `context` of commit `sha` to `state` (`error`, `failure`, `pending` or
    /// `success`): a new status, as GitHub makes one for every call; the newest of a context counts.
    pub fn set_status(&self, repo: &str, sha: &str, context: &str, state: &str) {
        assert!(STATUS_STATES.contains(&state), "{state} is not a commit status state GitHub knows");
        let mut st = self.lock();
        st.know_repo(&repo.to_ascii_lowercase());
        let checks = &mut st.checks;
        let id = FIRST_STATUS_ID + checks.statuses_set;
        checks.statuses_set += 1;
        let status =
            CommitStatus { id, context: context.to_owned(), state: state.to_owned(), created: SystemTime::now() };
        checks.statuses.entry(commit_key(repo, sha)).or_default().push(status);
    }
}

/// `/repos/{o}/{r}/commits/{ref}/check-runs` and `/repos/{o}/{r}/commits/{ref}/status`.
pub(super) fn commit_checks(st: &GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) || asked.method != Method::GET {
        return Reply::not_found();
    }
    match rest {
        [sha, "check-runs"] => check_runs(st, asked, repo, sha, paging),
        [sha, "status"] => combined_status(st, asked, repo, sha, paging),
        _ => Reply::not_found(),
    }
}

/// Newest first; with `filter=latest` (the default) only the newest run of each name. `check_name` and
/// `status` filter as GitHub's do.
fn check_runs(st: &GhState, asked: &Asked<'_>, repo: &str, sha: &str, paging: Paging) -> Reply {
    let runs = st.checks.runs.get(&commit_key(repo, sha)).map(Vec::as_slice).unwrap_or_default();
    let all = asked.param("filter") == Some("all");
    let mut seen = BTreeSet::new();
    let items: Vec<Value> = runs
        .iter()
        .rev()
        .filter(|r| all || seen.insert(r.name.clone()))
        .filter(|r| asked.filter("check_name").is_none_or(|n| r.name == n))
        .filter(|r| asked.filter("status").is_none_or(|s| r.status == s))
        .map(|r| check_run_json(asked, repo, sha, r))
        .collect();
    let total = items.len();
    let (items, link) = page(asked, paging, items);
    let mut reply = Reply::ok(&json!({ "total_count": total, "check_runs": items }));
    if let Some(link) = link {
        reply.header("link", &link);
    }
    reply
}

fn check_run_json(asked: &Asked<'_>, repo: &str, sha: &str, run: &CheckRun) -> Value {
    let url = format!("{}/repos/{repo}/check-runs/{}", asked.base, run.id);
    json!({
        "id": run.id,
        "head_sha": sha,
        "node_id": format!("CR_fake{}", run.id),
        "external_id": "",
        "url": url,
        "html_url": format!("https://github.com/{repo}/runs/{}", run.id),
        "details_url": format!("https://ci.example.com/{repo}/runs/{}", run.id),
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": rfc3339(run.started),
        "completed_at": run.completed.map(rfc3339),
        "output": {
            "title": null,
            "summary": null,
            "text": null,
            "annotations_count": 0,
            "annotations_url": format!("{url}/annotations"),
        },
        "name": run.name,
        "check_suite": { "id": 1 },
        "app": { "id": 15368, "slug": "github-actions", "name": "GitHub Actions" },
        "pull_requests": [],
    })
}

/// The newest status of each context, newest first, and their combined state: `failure` if any failed
/// or erred, else `pending` if any is pending or there is none, else `success`.
fn combined_status(st: &GhState, asked: &Asked<'_>, repo: &str, sha: &str, paging: Paging) -> Reply {
    let statuses = st.checks.statuses.get(&commit_key(repo, sha)).map(Vec::as_slice).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let latest: Vec<&CommitStatus> = statuses.iter().rev().filter(|s| seen.insert(s.context.clone())).collect();
    let any = |states: &[&str]| latest.iter().any(|s| states.contains(&s.state.as_str()));
    let state = if any(&["failure", "error"]) {
        "failure"
    } else if latest.is_empty() || any(&["pending"]) {
        "pending"
    } else {
        "success"
    };
    let items: Vec<Value> = latest.iter().map(|s| status_json(asked, repo, sha, s)).collect();
    let (items, link) = page(asked, paging, items);
    let full_name = st.spelling.get(repo).map_or(repo, String::as_str);
    let mut reply = Reply::ok(&json!({
        "state": state,
        "statuses": items,
        "sha": sha,
        "total_count": latest.len(),
        "repository": { "full_name": full_name },
        "commit_url": format!("{}/repos/{repo}/commits/{sha}", asked.base),
        "url": format!("{}/repos/{repo}/commits/{sha}/status", asked.base),
    }));
    if let Some(link) = link {
        reply.header("link", &link);
    }
    reply
}

fn status_json(asked: &Asked<'_>, repo: &str, sha: &str, status: &CommitStatus) -> Value {
    json!({
        "url": format!("{}/repos/{repo}/statuses/{sha}", asked.base),
        "avatar_url": null,
        "id": status.id,
        "node_id": format!("SC_fake{}", status.id),
        "state": status.state,
        "description": null,
        "target_url": format!("https://ci.example.com/{repo}/{sha}"),
        "context": status.context,
        "created_at": rfc3339(status.created),
        "updated_at": rfc3339(status.created),
    })
}
