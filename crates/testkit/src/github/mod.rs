//! A stateful fake of the GitHub REST API, for octocrab: branches with their heads, files at commits,
//! branch listings paginated as GitHub does (a `Link` header, a per-page cap), `ETag`s with conditional
//! requests, an account of every request, and faults injected at the wire (error documents, HTML pages
//! from a proxy, empty or broken pages, rate limits, answers that never come) so the client's own parsing
//! and retries are exercised. It can sit under a path prefix, as GitHub Enterprise Server's `/api/v3` does.
//! Paths are decoded segment by segment, so a branch holding `/`, `#` or `%` reaches it intact.
//!
//! Commits carry checks a test sets ([`FakeGitHub::set_check_run`], [`FakeGitHub::set_status`]), listed as
//! GitHub lists check runs and combined statuses.
//!
//! It also takes the writes previewd makes to give feedback: deployments and their statuses, pull request
//! comments (created and edited), each kept with the body as sent and logged in order
//! ([`FakeGitHub::feedback_log`]). Once [`FakeGitHub::enable_app`] is called it authenticates as GitHub
//! does for a GitHub App: a JWT signed with the app's key for `/app/...` and a repository's installation,
//! and an installation token it issued, unexpired, for everything else.

mod app_auth;
mod checks;
mod comments;
mod contents;
mod deployments;
mod faults;
mod paging;
mod pulls;
mod reply;
mod routes;
mod state;

pub use self::faults::{Fault, Target};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::StatusCode;
use jsonwebtoken::DecodingKey;
use serde_json::{Value, json};

use self::app_auth::AppAuth;
use self::comments::{Comment, HUMAN_LOGIN};
use self::faults::Injected;
use self::pulls::Pull;
use self::routes::handle;
use self::state::GhState;

#[derive(Debug, Clone)]
pub struct FakeGitHub {
    state: Arc<Mutex<GhState>>,
    addr: SocketAddr,
    prefix: String,
}

impl FakeGitHub {
    /// Serves on a free port; `prefix` is `""` for github.com or `"/api/v3"` for Enterprise.
    pub async fn start(prefix: &str) -> Self {
        Self::start_on("127.0.0.1:0", prefix).await
    }

    pub async fn start_on(addr: &str, prefix: &str) -> Self {
        let state = Arc::new(Mutex::new(GhState::default()));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Self { state: state.clone(), addr, prefix: prefix.to_owned() };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// The base URL to configure as `PREVIEWD_GITHUB_API_URL`.
    pub fn api_url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GhState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        let spelled = repo;
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        st.know_repo(repo);
        st.spelling.entry(repo.to_owned()).or_insert_with(|| spelled.to_owned());
        st.branches.insert((repo.to_owned(), branch.to_owned()), sha.to_owned());
    }

    pub fn delete_branch(&self, repo: &str, branch: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        self.lock().branches.remove(&(repo.to_owned(), branch.to_owned()));
    }

    /// Renames a branch as GitHub does: the old name answers `301` with the new one's address.
    pub fn rename_branch(&self, repo: &str, from: &str, to: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        let sha = st.branches.remove(&(repo.to_owned(), from.to_owned())).expect("the branch exists");
        st.branches.insert((repo.to_owned(), to.to_owned()), sha);
        st.renamed.insert((repo.to_owned(), from.to_owned()), to.to_owned());
    }

    /// Renames or transfers the repository as GitHub does: every request by its old name answers `301`
    /// to `/repositories/{id}/…`.
    pub fn move_repo(&self, repo: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        let id = 1_000 + st.moved.len() as u64;
        st.moved.insert(repo.to_owned(), id);
    }

    /// Every request answered so far, as `{method, path, query, body, user_agent, accept, api_version}`
    /// (the path as sent, still percent-encoded, without the API prefix; `query` as `[name, value]` pairs;
    /// each header as the list of values sent): for holding them against GitHub's published description.
    pub fn sent(&self) -> Vec<Value> {
        self.lock().sent.clone()
    }

    pub fn branch_count(&self, repo: &str) -> usize {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        self.lock().branches.keys().filter(|(r, _)| r == repo).count()
    }

    pub fn set_file(&self, repo: &str, sha: &str, path: &str, text: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        self.lock().files.insert((repo.to_owned(), sha.to_owned(), path.to_owned()), text.to_owned());
    }

    /// `path` is a folder (holding one file, `README.md`) at commit `sha`.
    pub fn set_folder(&self, repo: &str, sha: &str, path: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        self.lock().folders.insert((repo.to_owned(), sha.to_owned(), path.to_owned()));
    }

    /// Answers 404 for the repository and everything in it (`false`: shows it again).
    pub fn hide_repo(&self, repo: &str, hidden: bool) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        if hidden {
            st.hidden.insert(repo.to_owned());
        } else {
            st.hidden.remove(repo);
        }
    }

    /// Serves at most `n` items a page whatever `per_page` asks (GitHub's cap, and the default, is 100), so
    /// a test can make a client that assumes its `per_page` was honoured miss items.
    pub fn set_page_size_cap(&self, n: usize) {
        assert!(n > 0, "a page holds at least one item");
        self.lock().page_cap = n;
    }

    /// Answers the next `n` requests, whatever they ask, with 502.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Answers the next `times` requests matching `target` with `fault`. Faults apply after
    /// [`fail_next`](Self::fail_next) and before anything else (authentication included); when several
    /// match, the first injected wins.
    pub fn inject(&self, target: Target, fault: Fault, times: usize) {
        match fault {
            Fault::Status(code) | Fault::RetryAfter { status: code, .. } => {
                assert!(StatusCode::from_u16(code).is_ok(), "{code} is not an HTTP status");
            }
            Fault::RateLimited { status } => {
                assert!(matches!(status, 403 | 429), "GitHub answers a spent rate limit with 403 or 429, not {status}");
            }
            Fault::Html | Fault::EmptyList | Fault::Delay(_) | Fault::NoLink | Fault::LinkElsewhere(_) => {}
        }
        if times > 0 {
            self.lock().faults.push(Injected { target, fault, remaining: times });
        }
    }

    /// Every request path under the prefix, decoded, without the query.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Every request as `(method, path and query as sent less the prefix, status)`; a delayed request is
    /// listed when it arrives, with the status it would get.
    pub fn calls(&self) -> Vec<(String, String, u16)> {
        self.lock().calls.clone()
    }

    /// Every write request (`POST`, `PATCH`, `PUT`, `DELETE`), answered well or not, as `(method, path and
    /// query as sent less the prefix, body)`: the body is its JSON, `null` when empty, and a JSON string of
    /// the text when it was not JSON.
    pub fn bodies(&self) -> Vec<(String, String, Value)> {
        self.lock().bodies.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// Requests answered `304 Not Modified` since the last [`reset_requests`](Self::reset_requests).
    pub fn not_modified_count(&self) -> usize {
        self.lock().calls.iter().filter(|(_, _, status)| *status == 304).count()
    }

    /// Forgets every request seen so far ([`requests`](Self::requests), [`calls`](Self::calls),
    /// [`bodies`](Self::bodies) and [`unauthenticated_count`](Self::unauthenticated_count)); what the
    /// writes did stays.
    pub fn reset_requests(&self) {
        let mut st = self.lock();
        st.requests.clear();
        st.calls.clear();
        st.bodies.clear();
        st.unauthenticated = 0;
    }

    /// The repository's deployments in the order created: each the request body as sent, plus its `"id"`.
    pub fn deployments(&self, repo: &str) -> Vec<Value> {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let st = self.lock();
        st.deployments
            .iter()
            .filter(|d| d.repo == repo)
            .map(|d| {
                let mut sent = d.sent.clone();
                if let Some(fields) = sent.as_object_mut() {
                    fields.insert("id".to_owned(), json!(d.id));
                }
                sent
            })
            .collect()
    }

    /// The statuses posted for deployment `id` of the repository, each the request body as sent, in the
    /// order posted; empty for a deployment the fake does not have.
    pub fn deployment_statuses(&self, repo: &str, id: u64) -> Vec<Value> {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let st = self.lock();
        st.deployments
            .iter()
            .find(|d| d.repo == repo && d.id == id)
            .map(|d| d.statuses.iter().map(|s| s.sent.clone()).collect())
            .unwrap_or_default()
    }

    /// One line for each write to the repository that succeeded, in order: `deployment {id} {ref}
    /// {environment}`, `status {deployment id} {state}`, `comment create {issue} {comment id}`, `comment
    /// edit {comment id}`.
    pub fn feedback_log(&self, repo: &str) -> Vec<String> {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let st = self.lock();
        st.feedback.iter().filter(|(r, _)| r == repo).map(|(_, line)| line.clone()).collect()
    }

    /// Opens pull request `number` from `head_branch` of the repository itself (head owner = repo owner),
    /// or reopens it; the repository becomes one the fake shows.
    pub fn open_pull(&self, repo: &str, number: u64, head_branch: &str) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        st.know_repo(repo);
        st.pulls.insert((repo.to_owned(), number), Pull { head_branch: head_branch.to_owned(), open: true });
    }

    /// Closes pull request `number`; nothing if the fake does not have it.
    pub fn close_pull(&self, repo: &str, number: u64) {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        if let Some(pull) = self.lock().pulls.get_mut(&(repo.to_owned(), number)) {
            pull.open = false;
        }
    }

    /// The comments on issue or pull request `number`, oldest first, as `(id, body)`.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<(u64, String)> {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let st = self.lock();
        st.comments
            .iter()
            .filter(|(_, c)| c.repo == repo && c.issue == number)
            .map(|(id, c)| (*id, c.body.clone()))
            .collect()
    }

    /// Adds a comment by a person (not previewd) on issue or pull request `number`; returns its id.
    pub fn add_comment(&self, repo: &str, number: u64, body: &str) -> u64 {
        let repo = repo.to_ascii_lowercase();
        let repo = repo.as_str();
        let mut st = self.lock();
        st.know_repo(repo);
        let id = st.next_comment_id;
        st.next_comment_id += 1;
        let now = SystemTime::now();
        let comment = Comment {
            repo: repo.to_owned(),
            issue: number,
            body: body.to_owned(),
            login: HUMAN_LOGIN.to_owned(),
            app: None,
            created: now,
            updated: now,
        };
        st.comments.insert(id, comment);
        id
    }

    /// Deletes comment `id`, as someone might by hand; nothing if there is no such comment.
    pub fn delete_comment(&self, id: u64) {
        self.lock().comments.remove(&id);
    }

    /// Turns on GitHub App authentication: from now on `/app/...` and `/repos/{o}/{r}/installation` want
    /// `Authorization: Bearer <JWT>`, RS256-signed with the key whose public half is `public_key_pem`
    /// (PKCS#1 or SPKI PEM), `iss` the app id; every other request wants an installation token the fake
    /// issued (`token <t>` or `Bearer <t>`) and that has not expired. Tokens issued from now on live for
    /// `token_ttl`. Calling it again replaces the app; tokens already issued keep their expiry.
    pub fn enable_app(&self, app_id: u64, public_key_pem: &str, token_ttl: Duration) {
        let key = DecodingKey::from_rsa_pem(public_key_pem.as_bytes()).expect("the app's public key is RSA, in PEM");
        self.lock().app = Some(AppAuth { app_id, key, token_ttl });
    }

    /// The installation id of the repository owner's installation, if the fake has seen the owner.
    pub fn installation_id(&self, owner: &str) -> Option<u64> {
        self.lock().installations.get(&owner.to_ascii_lowercase()).copied()
    }

    /// How many installation tokens the fake has issued.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens.len()
    }

    /// How many requests were answered 401 "Bad credentials" in app mode for want of a valid installation
    /// token (refused JWTs are not counted).
    pub fn unauthenticated_count(&self) -> usize {
        self.lock().unauthenticated
    }
}

#[cfg(test)]
mod tests;
