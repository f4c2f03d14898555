//! The checks on a commit, as an environment waiting for them sees them: GitHub's check runs (Actions
//! jobs, Apps) and commit statuses (older CI) read as one list of named checks, each pending, passed or
//! failed as branch protection counts it, and the verdict on the ones an environment waits for.

use std::collections::BTreeMap;

use previewd_domain::{CommitSha, RepoName};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client::{GitHub, GithubError, PAGE_SIZE};

/// Pages of check runs or statuses read for one commit: GitHub keeps at most 1000 check runs in a check
/// suite, and a commit with more than this is not one previewd can wait on.
const CHECK_PAGES_MAX: usize = 20;

/// One named check on a commit: a check run (the newest of its name) or a commit status (its context).
/// `name` is GitHub's, unescaped: make it safe before it is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCheck {
    pub name: String,
    pub state: CheckState,
    /// Where a person reads about it: the check run's page, or the status's target.
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckState {
    /// Not concluded yet (queued, in progress, waiting; a status `pending`).
    Pending,
    /// `success`, `neutral` or `skipped`: what branch protection lets through.
    Passed,
    /// Concluded without passing; `conclusion` is GitHub's word for it (`failure`, `timed_out`, `error`…).
    Failed { conclusion: String },
}

/// What the checks an environment waits for say of its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChecksVerdict {
    /// Every required check passed (or none is required).
    Passed,
    /// Nothing failed yet; these required names have not concluded, or have not been reported at all.
    Waiting { pending: Vec<String> },
    /// A required check concluded without passing: waiting longer changes nothing until it is re-run.
    Failed(CommitCheck),
}

/// The verdict on `required` among the checks `found` on a commit. Names are compared exactly, as GitHub
/// compares check names. A name reported more than once (a check run and a status of the same name)
/// passes only when none of them failed or is still pending. One failed required check decides the
/// verdict, whatever else is pending.
pub fn checks_verdict(required: &[String], found: &[CommitCheck]) -> ChecksVerdict {
    let mut pending = Vec::new();
    for name in required {
        let named: Vec<&CommitCheck> = found.iter().filter(|c| c.name == *name).collect();
        if let Some(failed) = named.iter().find(|c| matches!(c.state, CheckState::Failed { .. })) {
            return ChecksVerdict::Failed((*failed).clone());
        }
        if named.is_empty() || named.iter().any(|c| c.state == CheckState::Pending) {
            pending.push(name.clone());
        }
    }
    match pending.is_empty() {
        true => ChecksVerdict::Passed,
        false => ChecksVerdict::Waiting { pending },
    }
}

/// A page of `GET /repos/{owner}/{repo}/commits/{ref}/check-runs`.
#[derive(Deserialize)]
struct CheckRunPage {
    total_count: u64,
    check_runs: Vec<CheckRun>,
}

#[derive(Deserialize)]
struct CheckRun {
    id: u64,
    name: String,
    status: String,
    #[serde(default)]
    conclusion: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    details_url: Option<String>,
}

/// A page of `GET /repos/{owner}/{repo}/commits/{ref}/status`: the newest status of each context.
#[derive(Deserialize)]
struct CombinedStatus {
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Status {
    context: String,
    state: String,
    #[serde(default)]
    target_url: Option<String>,
}

/// A check run's state: only `completed` is concluded; a conclusion that does not pass fails, including
/// one GitHub may add later (branch protection lets through only the three it names).
fn check_run_state(status: &str, conclusion: Option<&str>) -> CheckState {
    match (status, conclusion) {
        ("completed", Some("success" | "neutral" | "skipped")) => CheckState::Passed,
        ("completed", Some(conclusion)) => CheckState::Failed { conclusion: conclusion.to_owned() },
        _ => CheckState::Pending,
    }
}

/// A commit status's state: `success` passes, `failure` and `error` fail, anything else waits.
fn status_state(state: &str) -> CheckState {
    match state {
        "success" => CheckState::Passed,
        "failure" | "error" => CheckState::Failed { conclusion: state.to_owned() },
        _ => CheckState::Pending,
    }
}

/// The newest check run of each name (the highest id: a re-run is a new check run).
fn newest_by_name(runs: Vec<CheckRun>) -> Vec<CheckRun> {
    let mut newest: BTreeMap<String, CheckRun> = BTreeMap::new();
    for run in runs {
        if newest.get(&run.name).is_none_or(|kept| run.id > kept.id) {
            newest.insert(run.name.clone(), run);
        }
    }
    newest.into_values().collect()
}

impl CheckRun {
    fn into_check(self) -> CommitCheck {
        CommitCheck {
            state: check_run_state(&self.status, self.conclusion.as_deref()),
            url: self.html_url.or(self.details_url),
            name: self.name,
        }
    }
}

impl Status {
    fn into_check(self) -> CommitCheck {
        CommitCheck { state: status_state(&self.state), url: self.target_url, name: self.context }
    }
}

impl GitHub {
    /// Every check on commit `sha`: the newest check run of each name, then the newest status of each
    /// context. Both listings are read whole (every page), or the call fails.
    pub async fn commit_checks(&self, repo: &RepoName, sha: &CommitSha) -> Result<Vec<CommitCheck>, GithubError> {
        let mut checks = self.check_runs(repo, sha).await?;
        checks.extend(self.statuses(repo, sha).await?);
        Ok(checks)
    }

    async fn check_runs(&self, repo: &RepoName, sha: &CommitSha) -> Result<Vec<CommitCheck>, GithubError> {
        let what = format!("list check runs of {repo} at {}", sha.short());
        let first = format!("{}/commits/{sha}/check-runs?per_page={PAGE_SIZE}", Self::repo_path(repo));
        let pages: Vec<CheckRunPage> = self.pages(repo, first, &what).await?;
        let total = pages.iter().map(|p| p.total_count).max().unwrap_or(0);
        let runs: Vec<CheckRun> = pages.into_iter().flat_map(|p| p.check_runs).collect();
        if (runs.len() as u64) < total {
            let message = format!("{} of {total} check runs listed: the listing is incomplete", runs.len());
            return Err(GithubError::Garbled { what, message });
        }
        Ok(newest_by_name(runs).into_iter().map(CheckRun::into_check).collect())
    }

    async fn statuses(&self, repo: &RepoName, sha: &CommitSha) -> Result<Vec<CommitCheck>, GithubError> {
        let what = format!("get the combined status of {repo} at {}", sha.short());
        let first = format!("{}/commits/{sha}/status?per_page={PAGE_SIZE}", Self::repo_path(repo));
        let pages: Vec<CombinedStatus> = self.pages(repo, first, &what).await?;
        Ok(pages.into_iter().flat_map(|p| p.statuses).map(Status::into_check).collect())
    }

    /// Every page of a listing, from `first` on through each `Link: rel="next"` (conditional requests:
    /// an unchanged page costs no rate limit). A 404 (no such repository or commit) is an error: the
    /// checks of a commit GitHub does not show are not known to be missing.
    async fn pages<T: DeserializeOwned>(
        &self,
        repo: &RepoName,
        first: String,
        what: &str,
    ) -> Result<Vec<T>, GithubError> {
        let mut pages = Vec::new();
        let mut next = Some(first);
        while let Some(route) = next {
            if pages.len() >= CHECK_PAGES_MAX {
                let message = format!("more than {CHECK_PAGES_MAX} pages");
                return Err(GithubError::Unexpected { what: what.to_owned(), message });
            }
            let page = self.fetch(repo, &route, what, true).await?.ok_or_else(|| GithubError::Status {
                what: what.to_owned(),
                status: 404,
                message: "no such repository or commit".into(),
            })?;
            let parsed = serde_json::from_slice(&page.body)
                .map_err(|e| GithubError::Garbled { what: what.to_owned(), message: e.to_string() })?;
            pages.push(parsed);
            next = page.next;
        }
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, state: CheckState) -> CommitCheck {
        CommitCheck { name: name.to_owned(), state, url: None }
    }

    fn failed(conclusion: &str) -> CheckState {
        CheckState::Failed { conclusion: conclusion.to_owned() }
    }

    fn waiting(names: &[&str]) -> ChecksVerdict {
        ChecksVerdict::Waiting { pending: names.iter().map(|n| (*n).to_owned()).collect() }
    }

    #[test]
    fn required_checks_pass_wait_or_fail() {
        use CheckState::{Passed, Pending};
        let cases: Vec<(&str, Vec<&str>, Vec<CommitCheck>, ChecksVerdict)> = vec![
            ("nothing required", vec![], vec![check("build", failed("failure"))], ChecksVerdict::Passed),
            (
                "all passed",
                vec!["build", "test"],
                vec![check("build", Passed), check("test", Passed)],
                ChecksVerdict::Passed,
            ),
            (
                "one pending",
                vec!["build", "test"],
                vec![check("build", Passed), check("test", Pending)],
                waiting(&["test"]),
            ),
            ("not reported yet", vec!["build", "test"], vec![check("build", Passed)], waiting(&["test"])),
            ("nothing reported", vec!["build"], vec![], waiting(&["build"])),
            (
                "others are not waited for",
                vec!["build"],
                vec![check("build", Passed), check("lint", Pending)],
                ChecksVerdict::Passed,
            ),
            (
                "another's failure is not ours",
                vec!["build"],
                vec![check("build", Passed), check("lint", failed("failure"))],
                ChecksVerdict::Passed,
            ),
            ("names are case-sensitive", vec!["Build"], vec![check("build", Passed)], waiting(&["Build"])),
            (
                "a failure wins over pending",
                vec!["build", "test"],
                vec![check("build", Pending), check("test", failed("timed_out"))],
                ChecksVerdict::Failed(check("test", failed("timed_out"))),
            ),
            (
                "a failure wins over what is not reported",
                vec!["deploy", "test"],
                vec![check("test", failed("error"))],
                ChecksVerdict::Failed(check("test", failed("error"))),
            ),
            (
                "a run and a status of one name: both must pass",
                vec!["ci"],
                vec![check("ci", Passed), check("ci", Pending)],
                waiting(&["ci"]),
            ),
            (
                "a run and a status of one name: either fails it",
                vec!["ci"],
                vec![check("ci", Passed), check("ci", failed("failure"))],
                ChecksVerdict::Failed(check("ci", failed("failure"))),
            ),
        ];
        for (case, required, found, expected) in cases {
            let required: Vec<String> = required.into_iter().map(str::to_owned).collect();
            assert_eq!(checks_verdict(&required, &found), expected, "{case}");
        }
    }

    #[test]
    fn conclusions_count_as_branch_protection_counts_them() {
        for status in ["queued", "in_progress", "waiting", "requested", "pending"] {
            assert_eq!(check_run_state(status, None), CheckState::Pending, "{status}");
        }
        for conclusion in ["success", "neutral", "skipped"] {
            assert_eq!(check_run_state("completed", Some(conclusion)), CheckState::Passed, "{conclusion}");
        }
        for conclusion in ["failure", "cancelled", "timed_out", "action_required", "startup_failure", "stale"] {
            assert_eq!(check_run_state("completed", Some(conclusion)), failed(conclusion), "{conclusion}");
        }
        assert_eq!(status_state("success"), CheckState::Passed);
        assert_eq!(status_state("failure"), failed("failure"));
        assert_eq!(status_state("error"), failed("error"));
        assert_eq!(status_state("pending"), CheckState::Pending);
    }

    #[test]
    fn a_rerun_replaces_the_run_it_repeats() {
        let run = |id: u64, name: &str, conclusion: &str| CheckRun {
            id,
            name: name.to_owned(),
            status: "completed".into(),
            conclusion: Some(conclusion.to_owned()),
            html_url: Some(format!("https://github.com/acme/shop/runs/{id}")),
            details_url: None,
        };
        let runs = vec![
            run(7, "build", "success"),
            run(9, "build", "failure"),
            run(8, "build", "cancelled"),
            run(3, "test", "success"),
        ];
        let checks: Vec<CommitCheck> = newest_by_name(runs).into_iter().map(CheckRun::into_check).collect();
        assert_eq!(
            checks,
            [
                CommitCheck {
                    name: "build".into(),
                    state: failed("failure"),
                    url: Some("https://github.com/acme/shop/runs/9".into())
                },
                CommitCheck {
                    name: "test".into(),
                    state: CheckState::Passed,
                    url: Some("https://github.com/acme/shop/runs/3".into())
                },
            ]
        );
    }

    #[test]
    fn githubs_answers_parse() {
        let page: CheckRunPage = serde_json::from_str(
            r#"{"total_count":1,"check_runs":[{"id":4,"head_sha":"ce587453ced02b1526dfb4cb910479d431683101",
            "name":"mighty_readme","status":"completed","conclusion":"neutral","started_at":"2018-05-04T01:14:52Z",
            "completed_at":"2018-05-04T01:14:52Z","html_url":"https://github.com/github/hello-world/runs/4",
            "details_url":"https://example.com","output":{"title":"Mighty Readme report"}}]}"#,
        )
        .expect("a check run page");
        let check = page.check_runs.into_iter().next().expect("one").into_check();
        assert_eq!(check.state, CheckState::Passed);
        assert_eq!(check.url.as_deref(), Some("https://github.com/github/hello-world/runs/4"));
        let combined: CombinedStatus = serde_json::from_str(
            r#"{"state":"success","statuses":[{"id":1,"state":"error","description":null,"target_url":null,
            "context":"continuous-integration/jenkins","created_at":"2012-07-20T01:19:13Z"}],
            "sha":"6dcb09b5b57875f334f61aebed695e2e4193db5e","total_count":1}"#,
        )
        .expect("a combined status");
        let status = combined.statuses.into_iter().next().expect("one").into_check();
        assert_eq!(
            (status.name.as_str(), status.state, status.url),
            ("continuous-integration/jenkins", failed("error"), None)
        );
    }
}
