//! What the fake holds: repositories, branches, files, the checks on commits, the writes made through it,
//! the faults waiting, and its account of every request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use serde_json::Value;

use super::app_auth::AppAuth;
use super::checks::Checks;
use super::comments::Comment;
use super::deployments::Deployment;
use super::faults::Injected;
use super::paging::MAX_PER_PAGE;
use super::pulls::Pull;

/// The first installation id handed out; each new repository owner gets the next.
const FIRST_INSTALLATION_ID: u64 = 42;
/// The first issue comment id; comment ids are global and increase.
const FIRST_COMMENT_ID: u64 = 1000;

/// The owner of `owner/name`.
pub(super) fn owner_of(repo: &str) -> &str {
    repo.split_once('/').map_or(repo, |(owner, _)| owner)
}

#[derive(Debug)]
pub(super) struct GhState {
    /// (repo, branch) → head sha
    pub(super) branches: BTreeMap<(String, String), String>,
    /// repositories GitHub shows (any that ever had a branch or a pull request)
    pub(super) repos: BTreeSet<String>,
    /// (repo, sha, path) → text
    pub(super) files: BTreeMap<(String, String, String), String>,
    /// (repository, commit, path) of folders
    pub(super) folders: BTreeSet<(String, String, String)>,
    /// repository (lower case) → its name as the test spelled it, as GitHub answers it
    pub(super) spelling: BTreeMap<String, String>,
    /// (repository, old branch) → new branch
    pub(super) renamed: BTreeMap<(String, String), String>,
    /// moved repositories → their id
    pub(super) moved: BTreeMap<String, u64>,
    /// every request, for [`FakeGitHub::sent`](super::FakeGitHub::sent)
    pub(super) sent: Vec<Value>,
    /// requests answered per credential, for `x-ratelimit-*`
    pub(super) used: BTreeMap<String, u64>,
    /// every request path under the prefix, decoded
    pub(super) requests: Vec<String>,
    /// every request: (method, path and query as sent less the prefix, status answered)
    pub(super) calls: Vec<(String, String, u16)>,
    /// every write request: (method, path and query as sent less the prefix, body)
    pub(super) bodies: Vec<(String, String, Value)>,
    /// answer this many requests with 502
    pub(super) fail_next: usize,
    /// faults in the order injected; the first that matches a request answers it
    pub(super) faults: Vec<Injected>,
    /// at most this many items a page, whatever `per_page` asks
    pub(super) page_cap: usize,
    /// repositories answered with 404 throughout, as for a token that lost access
    pub(super) hidden: BTreeSet<String>,
    /// deployments in the order created, every repository's
    pub(super) deployments: Vec<Deployment>,
    /// the last deployment id handed out (ids are global)
    pub(super) last_deployment_id: u64,
    /// the last deployment status id handed out (ids are global)
    pub(super) last_status_id: u64,
    /// (repo, number) → pull request
    pub(super) pulls: BTreeMap<(String, u64), Pull>,
    /// comment id → comment; ids increase, so this is also the order they were written in
    pub(super) comments: BTreeMap<u64, Comment>,
    /// the next comment id to hand out
    pub(super) next_comment_id: u64,
    /// (repo, line) for each write that succeeded, in order
    pub(super) feedback: Vec<(String, String)>,
    /// check runs and commit statuses, per commit
    pub(super) checks: Checks,
    /// GitHub App authentication, when on
    pub(super) app: Option<AppAuth>,
    /// repository owner → installation id
    pub(super) installations: BTreeMap<String, u64>,
    /// installation token → when it expires
    pub(super) tokens: BTreeMap<String, SystemTime>,
    /// requests answered 401 for want of a valid installation token
    pub(super) unauthenticated: usize,
}

impl Default for GhState {
    fn default() -> Self {
        Self {
            branches: BTreeMap::new(),
            repos: BTreeSet::new(),
            files: BTreeMap::new(),
            folders: BTreeSet::new(),
            spelling: BTreeMap::new(),
            renamed: BTreeMap::new(),
            moved: BTreeMap::new(),
            sent: Vec::new(),
            used: BTreeMap::new(),
            requests: Vec::new(),
            calls: Vec::new(),
            bodies: Vec::new(),
            fail_next: 0,
            faults: Vec::new(),
            page_cap: MAX_PER_PAGE,
            hidden: BTreeSet::new(),
            deployments: Vec::new(),
            last_deployment_id: 0,
            last_status_id: 0,
            pulls: BTreeMap::new(),
            comments: BTreeMap::new(),
            next_comment_id: FIRST_COMMENT_ID,
            feedback: Vec::new(),
            checks: Checks::default(),
            app: None,
            installations: BTreeMap::new(),
            tokens: BTreeMap::new(),
            unauthenticated: 0,
        }
    }
}

impl GhState {
    /// Shows the repository from now on, and gives its owner an installation if it has none yet.
    pub(super) fn know_repo(&mut self, repo: &str) {
        self.repos.insert(repo.to_owned());
        let next = FIRST_INSTALLATION_ID + self.installations.len() as u64;
        self.installations.entry(owner_of(repo).to_owned()).or_insert(next);
    }

    /// An issue exists for the fake if it is a pull request or has comments.
    pub(super) fn issue_exists(&self, repo: &str, number: u64) -> bool {
        self.pulls.contains_key(&(repo.to_owned(), number))
            || self.comments.values().any(|c| c.repo == repo && c.issue == number)
    }

    pub(super) fn log(&mut self, repo: &str, line: String) {
        self.feedback.push((repo.to_owned(), line));
    }
}
