//! A stateful fake of the GitHub REST API, for octocrab: branches with their heads, files at commits,
//! branch listings paginated as GitHub does (a `Link` header, a per-page cap), `ETag`s with conditional
//! requests, an account of every request, and faults injected at the wire (error documents, HTML pages
//! from a proxy, empty or broken pages, rate limits, answers that never come) so the client's own parsing
//! and retries are exercised. It can sit under a path prefix, as GitHub Enterprise Server's `/api/v3` does.
//! Paths are decoded segment by segment, so a branch holding `/`, `#` or `%` reaches it intact.
//!
//! It also takes the writes previewd makes to give feedback: deployments and their statuses, pull request
//! comments (created and edited), each kept with the body as sent and logged in order
//! ([`FakeGitHub::feedback_log`]). Once [`FakeGitHub::enable_app`] is called it authenticates as GitHub
//! does for a GitHub App: a JWT signed with the app's key for `/app/...` and a repository's installation,
//! and an installation token it issued, unexpired, for everything else.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// GitHub's page size when a listing names no `per_page`.
const DEFAULT_PER_PAGE: usize = 30;
/// GitHub serves at most 100 items a page whatever `per_page` asks.
const MAX_PER_PAGE: usize = 100;
/// How far ahead an injected 403 puts `x-ratelimit-reset`, so a client honouring it waits briefly.
const RATE_LIMIT_RESET_AFTER: Duration = Duration::from_secs(60);
/// How far ahead [`Fault::RateLimited`] puts `x-ratelimit-reset`, so a test that waits for it stays quick.
const RATE_LIMITED_RESET_AFTER: Duration = Duration::from_secs(2);
/// The largest request body read.
const MAX_BODY_BYTES: usize = 1 << 20;
/// The first installation id handed out; each new repository owner gets the next.
const FIRST_INSTALLATION_ID: u64 = 42;
/// The first issue comment id; comment ids are global and increase.
const FIRST_COMMENT_ID: u64 = 1000;
/// Who writes through the API: previewd's GitHub App.
const BOT_LOGIN: &str = "previewd[bot]";
/// Who writes the comments a test adds with [`FakeGitHub::add_comment`].
const HUMAN_LOGIN: &str = "octocat";
/// The states GitHub takes for a deployment status.
const DEPLOYMENT_STATES: [&str; 7] = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
/// The longest deployment status description GitHub takes, in characters.
const MAX_STATUS_DESCRIPTION: usize = 140;
/// The contents API inlines a file's content up to 1 MB; a larger one comes with `encoding: none`.
const CONTENTS_INLINE_MAX: usize = 1024 * 1024;
/// The longest comment body GitHub takes, in characters.
const MAX_COMMENT_BODY: usize = 65_536;
/// The longest a GitHub App's JWT may live (`exp` - `iat`), in seconds.
const MAX_JWT_LIFETIME: u64 = 600;
/// How far ahead of the fake's clock a JWT's `iat` may be, in seconds.
const JWT_CLOCK_SKEW: u64 = 60;
/// How long an installation token lives when app mode is off: GitHub's hour.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// GitHub's answer to a request for `/app/...` without a JWT it can verify.
const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
/// GitHub's answer past a secondary rate limit.
const SECONDARY_RATE_LIMIT: &str = "You have exceeded a secondary rate limit. Please wait a few minutes before you \
    try again. If you reach out to GitHub Support for help, please include the request ID \
    F00D:1234:5678AB:9ABCDE:66000000.";
/// GitHub's answer past the primary rate limit, for an installation.
const PRIMARY_RATE_LIMIT: &str = "API rate limit exceeded for installation. If you reach out to GitHub Support for \
    help, please include the request ID F00D:1234:5678AB:9ABCDE:66000000.";
/// Where GitHub's rate limit documents point.
const RATE_LIMITS_DOC: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";

/// A failure to answer with instead of the real thing; see [`FakeGitHub::inject`]. A fault that answers in
/// place of the real thing (all but [`Delay`](Self::Delay) and [`NoLink`](Self::NoLink)) leaves the fake's
/// state as it was, so a faulted write changes nothing.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP status with GitHub's JSON error document ({"message": …, "documentation_url": …}).
    Status(u16),
    /// 200 with an HTML body (a proxy's or captive portal's error page), Content-Type text/html.
    Html,
    /// 200 with an empty JSON array `[]` (only meaningful for listings).
    EmptyList,
    /// No answer for this long (the client should time out first); then the real answer.
    Delay(Duration),
    /// The requested page answered normally but without any `Link` header, so a client that trusts it
    /// stops early although more pages exist: broken pagination.
    NoLink,
    /// The requested page answered normally, its `Link` header's next page on another host: the
    /// loopback port given (a server that should never hear previewd's credentials).
    LinkElsewhere(u16),
    /// A secondary rate limit: `status` (GitHub uses 403 or 429) with GitHub's "You have exceeded a
    /// secondary rate limit" document and `retry-after: seconds`; the primary quota is not spent.
    RetryAfter {
        /// The HTTP status to answer with.
        status: u16,
        /// What `retry-after` says.
        seconds: u64,
    },
    /// The primary rate limit spent: `status` (403 or 429) with `x-ratelimit-remaining: 0` and
    /// `x-ratelimit-reset` two seconds from now (unix seconds).
    RateLimited {
        /// The HTTP status to answer with, 403 or 429.
        status: u16,
    },
}

/// Which requests an injected [`Fault`] applies to: matched on the path, whatever the method, except
/// [`Writes`](Self::Writes), which is matched on the method alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/repos/{o}/{r}/branches`, any page.
    BranchList,
    /// `/repos/{o}/{r}/branches` for this page only (a missing `page` is page 1).
    BranchListPage(usize),
    /// `/repos/{o}/{r}/branches/{name}`.
    Branch,
    /// `/repos/{o}/{r}`.
    Repo,
    /// `/repos/{o}/{r}/contents/{path}`.
    Contents,
    /// `/repos/{o}/{r}/deployments` and everything under it (a deployment, its statuses).
    Deployments,
    /// `/repos/{o}/{r}/pulls` and everything under it.
    Pulls,
    /// `/repos/{o}/{r}/issues/...`: issue comments, listed, created or edited.
    Comments,
    /// Every `POST`, `PATCH`, `PUT` or `DELETE`, whatever the path.
    Writes,
    /// `/app/installations/{id}/access_tokens`.
    InstallationToken,
    /// Every request.
    Any,
}

/// What a request asks for, as far as fault targets care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Repo,
    BranchList { page: usize },
    Branch,
    Contents,
    Deployments,
    Pulls,
    Comments,
    InstallationToken,
    Other,
}

impl Endpoint {
    fn of(segs: &[&str], page: usize) -> Self {
        match segs {
            ["repos", _, _] => Self::Repo,
            ["repos", _, _, "branches"] => Self::BranchList { page },
            ["repos", _, _, "branches", _] => Self::Branch,
            ["repos", _, _, "contents", ..] => Self::Contents,
            ["repos", _, _, "deployments", ..] => Self::Deployments,
            ["repos", _, _, "pulls", ..] => Self::Pulls,
            ["repos", _, _, "issues", ..] => Self::Comments,
            ["app", "installations", _, "access_tokens"] => Self::InstallationToken,
            _ => Self::Other,
        }
    }
}

impl Target {
    /// Whether this target covers a request for `endpoint`; `write` tells whether its method writes.
    fn matches(self, endpoint: Endpoint, write: bool) -> bool {
        match (self, endpoint) {
            (Self::Any, _) | (Self::BranchList, Endpoint::BranchList { .. }) => true,
            (Self::Writes, _) => write,
            (Self::BranchListPage(want), Endpoint::BranchList { page }) => want == page,
            (Self::Branch, Endpoint::Branch) | (Self::Repo, Endpoint::Repo) => true,
            (Self::Contents, Endpoint::Contents) | (Self::Deployments, Endpoint::Deployments) => true,
            (Self::Pulls, Endpoint::Pulls) | (Self::Comments, Endpoint::Comments) => true,
            (Self::InstallationToken, Endpoint::InstallationToken) => true,
            _ => false,
        }
    }
}

/// Whether a request with this method changes something (and so is a target for [`Target::Writes`]).
fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PATCH, Method::PUT, Method::DELETE].contains(method)
}

#[derive(Debug)]
struct Injected {
    target: Target,
    fault: Fault,
    remaining: usize,
}

/// GitHub App authentication, once [`FakeGitHub::enable_app`] has turned it on.
#[derive(Debug)]
struct AppAuth {
    app_id: u64,
    key: DecodingKey,
    token_ttl: Duration,
}

impl AppAuth {
    /// Whether GitHub would take `jwt` from this app at `now` (unix seconds): RS256 under the app's key,
    /// not expired, `iss` the app id (a number or a string), living at most ten minutes and not issued
    /// in the future.
    fn accepts(&self, jwt: &str, now: u64) -> bool {
        let mut validation = Validation::new(Algorithm::RS256);
        // `iss` is checked below: jsonwebtoken only counts a string as present, and GitHub takes a number.
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        let Ok(data) = jsonwebtoken::decode::<Value>(jwt, &self.key, &validation) else { return false };
        let claims = data.claims;
        let issued_by_app = match &claims["iss"] {
            Value::Number(n) => n.as_u64() == Some(self.app_id),
            Value::String(s) => *s == self.app_id.to_string(),
            _ => false,
        };
        let lifetime_ok = match (claims["iat"].as_u64(), claims["exp"].as_u64()) {
            (Some(iat), Some(exp)) => iat <= exp && exp - iat <= MAX_JWT_LIFETIME && iat <= now + JWT_CLOCK_SKEW,
            _ => false,
        };
        issued_by_app && lifetime_ok
    }
}

/// A deployment as created through the API.
#[derive(Debug)]
struct Deployment {
    repo: String,
    id: u64,
    /// the request body as sent
    sent: Value,
    git_ref: String,
    task: String,
    environment: String,
    description: String,
    payload: Value,
    transient: bool,
    production: bool,
    created: SystemTime,
    updated: SystemTime,
    /// in the order posted
    statuses: Vec<DeploymentStatus>,
}

impl Deployment {
    fn url(&self, base: &str) -> String {
        format!("{base}/repos/{}/deployments/{}", self.repo, self.id)
    }

    fn json(&self, base: &str) -> Value {
        json!({
            "url": self.url(base),
            "id": self.id,
            "node_id": format!("DE_fake{}", self.id),
            "sha": self.git_ref,
            "ref": self.git_ref,
            "task": self.task,
            "payload": self.payload,
            "original_environment": self.environment,
            "environment": self.environment,
            "description": self.description,
            "creator": user_json(BOT_LOGIN),
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.updated),
            "statuses_url": format!("{}/statuses", self.url(base)),
            "repository_url": format!("{base}/repos/{}", self.repo),
            "transient_environment": self.transient,
            "production_environment": self.production,
        })
    }
}

/// A deployment status as posted through the API.
#[derive(Debug)]
struct DeploymentStatus {
    id: u64,
    /// the request body as sent
    sent: Value,
    state: String,
    environment: String,
    environment_url: String,
    log_url: String,
    description: String,
    created: SystemTime,
}

impl DeploymentStatus {
    fn json(&self, base: &str, deployment: &Deployment) -> Value {
        let deployment_url = deployment.url(base);
        json!({
            "url": format!("{deployment_url}/statuses/{}", self.id),
            "id": self.id,
            "node_id": format!("DES_fake{}", self.id),
            "state": self.state,
            "creator": user_json(BOT_LOGIN),
            "description": self.description,
            "environment": self.environment,
            "target_url": self.log_url,
            "log_url": self.log_url,
            "environment_url": self.environment_url,
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.created),
            "deployment_url": deployment_url,
            "repository_url": format!("{base}/repos/{}", deployment.repo),
        })
    }
}

/// A pull request a test opened, with [`FakeGitHub::open_pull`].
#[derive(Debug)]
struct Pull {
    head_branch: String,
    open: bool,
}

/// An issue or pull request comment.
#[derive(Debug)]
struct Comment {
    repo: String,
    issue: u64,
    body: String,
    login: String,
    /// The GitHub App it was written through, if any (`performed_via_github_app`).
    app: Option<u64>,
    created: SystemTime,
    updated: SystemTime,
}

impl Comment {
    fn json(&self, id: u64, base: &str, on_pull: bool) -> Value {
        let kind = if on_pull { "pull" } else { "issues" };
        json!({
            "id": id,
            "node_id": format!("IC_fake{id}"),
            "url": format!("{base}/repos/{}/issues/comments/{id}", self.repo),
            "html_url": format!("https://github.com/{}/{kind}/{}#issuecomment-{id}", self.repo, self.issue),
            "issue_url": format!("{base}/repos/{}/issues/{}", self.repo, self.issue),
            "body": self.body,
            "user": user_json(&self.login),
            "performed_via_github_app": self.app.map(|id| json!({ "id": id, "slug": "previewd", "name": "previewd" })),
            "author_association": "NONE",
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.updated),
        })
    }
}

/// A GitHub user as it appears in another object: a `[bot]` login is an app's bot.
fn user_json(login: &str) -> Value {
    let kind = if login.ends_with("[bot]") { "Bot" } else { "User" };
    json!({ "login": login, "type": kind })
}

/// GitHub's timestamps: RFC 3339, UTC, whole seconds.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The owner of `owner/name`.
fn owner_of(repo: &str) -> &str {
    repo.split_once('/').map_or(repo, |(owner, _)| owner)
}

#[derive(Debug)]
struct GhState {
    /// (repo, branch) → head sha
    branches: BTreeMap<(String, String), String>,
    /// repositories GitHub shows (any that ever had a branch or a pull request)
    repos: BTreeSet<String>,
    /// (repo, sha, path) → text
    files: BTreeMap<(String, String, String), String>,
    /// (repository, commit, path) of folders
    folders: BTreeSet<(String, String, String)>,
    /// repository (lower case) → its name as the test spelled it, as GitHub answers it
    spelling: BTreeMap<String, String>,
    /// (repository, old branch) → new branch
    renamed: BTreeMap<(String, String), String>,
    /// moved repositories → their id
    moved: BTreeMap<String, u64>,
    /// every request, for [`FakeGitHub::sent`]
    sent: Vec<Value>,
    /// requests answered per credential, for `x-ratelimit-*`
    used: BTreeMap<String, u64>,
    /// every request path under the prefix, decoded
    requests: Vec<String>,
    /// every request: (method, path and query as sent less the prefix, status answered)
    calls: Vec<(String, String, u16)>,
    /// every write request: (method, path and query as sent less the prefix, body)
    bodies: Vec<(String, String, Value)>,
    /// answer this many requests with 502
    fail_next: usize,
    /// faults in the order injected; the first that matches a request answers it
    faults: Vec<Injected>,
    /// at most this many items a page, whatever `per_page` asks
    page_cap: usize,
    /// repositories answered with 404 throughout, as for a token that lost access
    hidden: BTreeSet<String>,
    /// deployments in the order created, every repository's
    deployments: Vec<Deployment>,
    /// the last deployment id handed out (ids are global)
    last_deployment_id: u64,
    /// the last deployment status id handed out (ids are global)
    last_status_id: u64,
    /// (repo, number) → pull request
    pulls: BTreeMap<(String, u64), Pull>,
    /// comment id → comment; ids increase, so this is also the order they were written in
    comments: BTreeMap<u64, Comment>,
    /// the next comment id to hand out
    next_comment_id: u64,
    /// (repo, line) for each write that succeeded, in order
    feedback: Vec<(String, String)>,
    /// GitHub App authentication, when on
    app: Option<AppAuth>,
    /// repository owner → installation id
    installations: BTreeMap<String, u64>,
    /// installation token → when it expires
    tokens: BTreeMap<String, SystemTime>,
    /// requests answered 401 for want of a valid installation token
    unauthenticated: usize,
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
            app: None,
            installations: BTreeMap::new(),
            tokens: BTreeMap::new(),
            unauthenticated: 0,
        }
    }
}

impl GhState {
    /// Consumes one use of the first injected fault that matches.
    fn take_fault(&mut self, endpoint: Endpoint, write: bool) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.target.matches(endpoint, write))?;
        let injected = &mut self.faults[i];
        injected.remaining -= 1;
        let fault = injected.fault.clone();
        if injected.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }

    /// Shows the repository from now on, and gives its owner an installation if it has none yet.
    fn know_repo(&mut self, repo: &str) {
        self.repos.insert(repo.to_owned());
        let next = FIRST_INSTALLATION_ID + self.installations.len() as u64;
        self.installations.entry(owner_of(repo).to_owned()).or_insert(next);
    }

    /// An issue exists for the fake if it is a pull request or has comments.
    fn issue_exists(&self, repo: &str, number: u64) -> bool {
        self.pulls.contains_key(&(repo.to_owned(), number))
            || self.comments.values().any(|c| c.repo == repo && c.issue == number)
    }

    fn log(&mut self, repo: &str, line: String) {
        self.feedback.push((repo.to_owned(), line));
    }
}

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

/// An answer built under the lock and sent after it is released, so a delay never blocks other requests.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: StatusCode, value: &Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        Self { status, headers, body: serde_json::to_vec(value).expect("JSON serialises") }
    }

    fn ok(value: &Value) -> Self {
        Self::json(StatusCode::OK, value)
    }

    fn created(value: &Value) -> Self {
        Self::json(StatusCode::CREATED, value)
    }

    /// GitHub's error document with this message.
    fn message(status: StatusCode, message: &str) -> Self {
        Self::json(
            status,
            &json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.as_str(),
            }),
        )
    }

    /// GitHub's error document, with the headers its clients look at for the statuses that have them.
    fn error(status: StatusCode) -> Self {
        let message = match status.as_u16() {
            401 => "Bad credentials",
            403 => "API rate limit exceeded",
            404 => "Not Found",
            500 | 502 => "Server Error",
            _ => status.canonical_reason().unwrap_or("Unexpected error"),
        };
        let mut reply = Self::message(status, message);
        if status == StatusCode::FORBIDDEN {
            reply.rate_limit_headers(0, RATE_LIMIT_RESET_AFTER);
        }
        reply
    }

    fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND)
    }

    /// GitHub's 422 for a body that lacks a field it requires.
    fn invalid_request(field: &str) -> Self {
        Self::message(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid request.\n\n\"{field}\" wasn't supplied."))
    }

    /// GitHub's 422 "Validation Failed", with the one error that failed it.
    fn validation_failed(resource: &str, field: &str, code: &str, message: &str) -> Self {
        Self::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "message": "Validation Failed",
                "errors": [{ "resource": resource, "field": field, "code": code, "message": message }],
                "documentation_url": "https://docs.github.com/rest",
                "status": "422",
            }),
        )
    }

    /// A secondary rate limit: the primary quota is untouched, `retry-after` says when to come back.
    fn secondary_rate_limit(status: StatusCode, seconds: u64) -> Self {
        let mut reply = Self::json(
            status,
            &json!({
                "message": SECONDARY_RATE_LIMIT,
                "documentation_url": format!("{RATE_LIMITS_DOC}#about-secondary-rate-limits"),
                "status": status.as_str(),
            }),
        );
        reply.header("retry-after", &seconds.to_string());
        reply.rate_limit_headers(4999, Duration::from_secs(3600));
        reply
    }

    /// The primary rate limit spent, resetting shortly.
    fn rate_limited(status: StatusCode) -> Self {
        let mut reply = Self::json(
            status,
            &json!({
                "message": PRIMARY_RATE_LIMIT,
                "documentation_url": format!("{RATE_LIMITS_DOC}#about-primary-rate-limits"),
                "status": status.as_str(),
            }),
        );
        reply.rate_limit_headers(0, RATE_LIMITED_RESET_AFTER);
        reply
    }

    /// The `x-ratelimit-*` headers of a quota of 5000 with `remaining` left, resetting `reset_after` from now.
    fn rate_limit_headers(&mut self, remaining: u64, reset_after: Duration) {
        let reset = unix_seconds(SystemTime::now().checked_add(reset_after).unwrap_or_else(SystemTime::now));
        self.header("x-ratelimit-limit", "5000");
        self.header("x-ratelimit-remaining", &remaining.to_string());
        self.header("x-ratelimit-used", &5000_u64.saturating_sub(remaining).to_string());
        self.header("x-ratelimit-resource", "core");
        self.header("x-ratelimit-reset", &reset.to_string());
    }

    /// What a captive portal or a misconfigured proxy serves in place of the API.
    fn html() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        let body = b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n\
            <body><h1>Network access requires sign-in</h1><p>Please log in to continue.</p></body></html>\n";
        Self { status: StatusCode::OK, headers, body: body.to_vec() }
    }

    fn header(&mut self, name: &'static str, value: &str) {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.insert(HeaderName::from_static(name), value);
    }

    /// A strong validator over the exact bytes, so it changes whenever the body does.
    fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(Sha256::digest(&self.body)))
    }

    /// Adds the `ETag` to a 200 and turns it into a 304 if the client already holds that version.
    fn conditional(mut self, method: &Method, if_none_match: Option<&str>) -> Self {
        if *method != Method::GET || self.status != StatusCode::OK || self.headers.contains_key("x-fake-fault") {
            return self;
        }
        let etag = self.etag();
        // If-None-Match compares weakly and may list several tags.
        let held = if_none_match.is_some_and(|v| {
            v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        });
        if held {
            self = Self { status: StatusCode::NOT_MODIFIED, headers: HeaderMap::new(), body: Vec::new() };
        }
        self.header("etag", &etag);
        self
    }

    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

fn branch_json(name: &str, sha: &str) -> Value {
    json!({
        "name": name,
        "commit": { "sha": sha, "url": format!("https://api.github.com/commits/{sha}") },
        "protected": false,
        "_links": { "self": "https://api.github.com/branches", "html": "https://github.com/branches" },
    })
}

/// The request as the answer needs it: everything is read before the lock is taken.
#[derive(Debug)]
struct Asked<'a> {
    method: Method,
    /// The host the client addressed, for absolute URLs in `Link`.
    host: String,
    /// `http://{host}{prefix}`, for the URLs in answers.
    base: String,
    /// The path as sent, prefix included, still percent-encoded.
    raw_path: &'a str,
    /// Query pairs in the order sent.
    query: Vec<(String, String)>,
    /// The `Authorization` header, if any and readable.
    authorization: Option<&'a str>,
    /// The body's JSON; `null` when there was none, the text as a JSON string when it was not JSON.
    body: Value,
    /// Why the body cannot be used, when it cannot: answered instead of the request.
    bad_body: Option<(StatusCode, &'static str)>,
}

impl Asked<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A query parameter that filters a listing: absent or empty filters nothing.
    fn filter(&self, name: &str) -> Option<&str> {
        self.param(name).filter(|v| !v.is_empty())
    }

    /// The credential in `Authorization` when its scheme is one of `schemes` (compared ignoring case).
    fn credential(&self, schemes: &[&str]) -> Option<&str> {
        let (scheme, credential) = self.authorization?.trim().split_once(' ')?;
        schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)).then(|| credential.trim())
    }

    /// This same request for another page, as GitHub writes it in `Link`: the query kept, `page` last.
    fn page_url(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.query.iter().filter(|(k, _)| k != "page") {
            query.append_pair(k, v);
        }
        query.append_pair("page", &page.to_string());
        format!("http://{}{}?{}", self.host, self.raw_path, query.finish())
    }

    /// GitHub's `Link` header for `page` of `last`: prev, next, last, first, each only where it applies,
    /// and no header at all for a listing that fits on one page.
    fn link(&self, page: usize, last: usize) -> Option<String> {
        if last <= 1 && page <= 1 {
            return None;
        }
        let mut rels = Vec::new();
        if page > 1 {
            rels.push((page - 1, "prev"));
        }
        if page < last {
            rels.push((page + 1, "next"));
            rels.push((last, "last"));
        }
        if page > 1 {
            rels.push((1, "first"));
        }
        let parts: Vec<String> =
            rels.into_iter().map(|(p, rel)| format!("<{}>; rel=\"{rel}\"", self.page_url(p))).collect();
        Some(parts.join(", "))
    }
}

/// How a listing is to be paged: the page asked for (1 when none), the fake's cap on items a page, and
/// whether to send `Link`.
#[derive(Debug, Clone, Copy)]
struct Paging {
    page: usize,
    cap: usize,
    link: bool,
}

/// One page of `items` as GitHub serves a listing: `per_page` items (30 when not asked) within the cap,
/// and a `Link` header unless everything fits on one page.
fn listing(asked: &Asked<'_>, paging: Paging, items: Vec<Value>) -> Reply {
    let asked_per_page = asked.param("per_page").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PER_PAGE);
    let per_page = asked_per_page.clamp(1, paging.cap);
    let last = items.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = items.into_iter().skip((paging.page - 1).saturating_mul(per_page)).take(per_page).collect();
    let mut reply = Reply::ok(&Value::Array(items));
    if paging.link
        && let Some(link) = asked.link(paging.page, last)
    {
        reply.header("link", &link);
    }
    reply
}

async fn handle(State(fake): State<FakeGitHub>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (body, bad_body) = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) if bytes.is_empty() => (Value::Null, None),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(json) => (json, None),
            Err(_) => (
                Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                Some((StatusCode::BAD_REQUEST, "Problems parsing JSON")),
            ),
        },
        Err(_) => (Value::Null, Some((StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"))),
    };
    let headers = &parts.headers;
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).map_or_else(|| fake.addr.to_string(), str::to_owned);
    let asked = Asked {
        method: parts.method.clone(),
        base: format!("http://{host}{}", fake.prefix),
        host,
        raw_path: parts.uri.path(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect(),
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
        body,
        bad_body,
    };
    let if_none_match = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    let sent = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sent = sent.strip_prefix(fake.prefix.as_str()).unwrap_or(sent).to_owned();

    let (reply, delay) = {
        let mut st = fake.lock();
        if is_write(&asked.method) {
            st.bodies.push((asked.method.to_string(), sent.clone(), asked.body.clone()));
        }
        let raw = sent.split('?').next().unwrap_or("").to_owned();
        let query: Vec<Value> = asked.query.iter().map(|(k, v)| json!([k, v])).collect();
        let body = if asked.body.is_null() { Value::Null } else { asked.body.clone() };
        let all = |name| -> Vec<&str> { headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect() };
        let (agent, accept) = (all(axum::http::header::USER_AGENT), all(axum::http::header::ACCEPT));
        st.sent.push(json!({
            "method": asked.method.as_str(), "path": raw, "query": query, "body": body,
            "user_agent": agent, "accept": accept, "api_version": all(axum::http::HeaderName::from_static("x-github-api-version")),
        }));
        let (reply, delay) = answer(&fake, &mut st, &asked);
        let mut reply = reply.conditional(&asked.method, if_none_match);
        // As GitHub: every answer says where the caller stands with its rate limit (per credential).
        if !reply.headers.contains_key("x-ratelimit-remaining") {
            let who = asked.authorization.unwrap_or("anonymous").to_owned();
            let used = st.used.entry(who).or_insert(0);
            *used += 1;
            let used = *used;
            let reset = unix_seconds(SystemTime::now()) + 3600;
            reply.header("x-ratelimit-limit", "5000");
            reply.header("x-ratelimit-used", &used.to_string());
            reply.header("x-ratelimit-remaining", &5000u64.saturating_sub(used).to_string());
            reply.header("x-ratelimit-reset", &reset.to_string());
            reply.header("x-ratelimit-resource", "core");
        }
        st.calls.push((asked.method.to_string(), sent, reply.status.as_u16()));
        (reply, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    reply.into_response()
}

/// The answer, and how long to hold it back.
fn answer(fake: &FakeGitHub, st: &mut GhState, asked: &Asked<'_>) -> (Reply, Option<Duration>) {
    let Some(path) = asked.raw_path.strip_prefix(&fake.prefix) else { return (Reply::not_found(), None) };
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let mut segs = segs;
    // GitHub reads owner and repository names without regard to case.
    if segs.first().is_some_and(|s| s == "repos") && segs.len() >= 3 {
        segs[1] = segs[1].to_ascii_lowercase();
        segs[2] = segs[2].to_ascii_lowercase();
    }
    st.requests.push(segs.join("/"));
    if st.fail_next > 0 {
        st.fail_next -= 1;
        return (Reply::error(StatusCode::BAD_GATEWAY), None);
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    // GitHub treats a missing, unparsable or zero page as the first.
    let page = asked.param("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let mut paging = Paging { page, cap: st.page_cap, link: true };
    let mut delay = None;
    let mut elsewhere = None;
    // A fault that answers in place of the request returns before anything is looked up or changed.
    match st.take_fault(Endpoint::of(&segs, page), is_write(&asked.method)) {
        Some(Fault::Status(code)) => {
            return (Reply::error(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)), None);
        }
        Some(Fault::Html) => return (Reply::html(), None),
        Some(Fault::EmptyList) => return (Reply::ok(&json!([])), None),
        Some(Fault::RetryAfter { status, seconds }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            return (Reply::secondary_rate_limit(status, seconds), None);
        }
        Some(Fault::RateLimited { status }) => {
            return (Reply::rate_limited(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN)), None);
        }
        Some(Fault::Delay(d)) => delay = Some(d),
        Some(Fault::NoLink) => paging.link = false,
        Some(Fault::LinkElsewhere(port)) => elsewhere = Some(port),
        None => {}
    }
    let mut reply = if let Some(refused) = refuse_unauthenticated(st, asked, &segs) {
        refused
    } else if let Some(moved) = moved(st, asked, path, &segs) {
        moved
    } else if let Some((status, message)) = asked.bad_body {
        Reply::message(status, message)
    } else {
        route(st, asked, &segs, paging)
    };
    // The fault's answer must reach the client as it is, not as a 304 for the healthy page it resembles.
    if !paging.link {
        reply.header("x-fake-fault", "no-link");
    }
    if let Some(port) = elsewhere {
        let next = format!("<http://127.0.0.1:{port}{}?per_page=100&page=2>; rel=\"next\"", asked.raw_path);
        reply.header("link", &next);
        reply.header("x-fake-fault", "link-elsewhere");
    }
    (reply, delay)
}

/// GitHub's `301 Moved Permanently` for a renamed branch (to the new branch) or a moved repository (to
/// `/repositories/{id}/…`), if the request names one.
fn moved(st: &GhState, asked: &Asked<'_>, path: &str, segs: &[&str]) -> Option<Reply> {
    let ["repos", owner, name, rest @ ..] = segs else { return None };
    let repo = format!("{owner}/{name}");
    let location = if let Some(id) = st.moved.get(&repo) {
        let raw_rest: Vec<&str> = path.split('/').skip(4).collect();
        let tail = if raw_rest.is_empty() { String::new() } else { format!("/{}", raw_rest.join("/")) };
        format!("{}/repositories/{id}{tail}", asked.base)
    } else if let ["branches", branch] = rest
        && let Some(to) = st.renamed.get(&(repo.clone(), (*branch).to_owned()))
        && !st.branches.contains_key(&(repo.clone(), (*branch).to_owned()))
    {
        let to = percent_encoding::utf8_percent_encode(to, percent_encoding::NON_ALPHANUMERIC);
        format!("{}/repos/{owner}/{name}/branches/{to}", asked.base)
    } else {
        return None;
    };
    let mut reply = Reply::message(StatusCode::MOVED_PERMANENTLY, "Moved Permanently");
    reply.header("location", &location);
    Some(reply)
}

/// In app mode, the 401 for a request without the credentials its path wants: a JWT of the app for
/// `/app/...` and a repository's installation, an unexpired installation token the fake issued for
/// anything else (these refusals are counted). `None` when the request may go on.
fn refuse_unauthenticated(st: &mut GhState, asked: &Asked<'_>, segs: &[&str]) -> Option<Reply> {
    let app = st.app.as_ref()?;
    let now = SystemTime::now();
    if matches!(segs, ["app", ..] | ["repos", _, _, "installation"]) {
        let verified = asked.credential(&["bearer"]).is_some_and(|jwt| app.accepts(jwt, unix_seconds(now)));
        return (!verified).then(|| Reply::message(StatusCode::UNAUTHORIZED, JWT_UNDECODABLE));
    }
    let valid = asked
        .credential(&["token", "bearer"])
        .and_then(|token| st.tokens.get(token))
        .is_some_and(|expires| *expires > now);
    if valid {
        None
    } else {
        st.unauthenticated += 1;
        Some(Reply::error(StatusCode::UNAUTHORIZED))
    }
}

fn route(st: &mut GhState, asked: &Asked<'_>, segs: &[&str], paging: Paging) -> Reply {
    if let ["repos", owner, name, ..] = segs
        && st.hidden.contains(&format!("{owner}/{name}"))
    {
        return Reply::not_found();
    }
    match segs {
        ["repos", owner, name] => {
            let repo = format!("{owner}/{name}");
            if st.repos.contains(&repo) {
                let full_name = st.spelling.get(&repo).unwrap_or(&repo);
                Reply::ok(&json!({"full_name": full_name, "private": true, "default_branch": "main"}))
            } else {
                Reply::not_found()
            }
        }
        ["repos", owner, name, "branches"] => {
            let repo = format!("{owner}/{name}");
            let items: Vec<Value> =
                st.branches.iter().filter(|((r, _), _)| *r == repo).map(|((_, b), sha)| branch_json(b, sha)).collect();
            listing(asked, paging, items)
        }
        ["repos", owner, name, "branches", branch] => {
            match st.branches.get(&(format!("{owner}/{name}"), (*branch).to_owned())) {
                Some(sha) => Reply::ok(&branch_json(branch, sha)),
                None => Reply::not_found(),
            }
        }
        ["repos", owner, name, "contents", rest @ ..] => {
            let repo = format!("{owner}/{name}");
            let path = rest.join("/");
            let sha = asked.param("ref").unwrap_or_default().to_owned();
            if st.folders.contains(&(repo.clone(), sha.clone(), path.clone())) {
                let inner = format!("{path}/README.md");
                return Reply::ok(
                    &json!([{ "type": "file", "size": 5, "name": "README.md", "path": inner, "sha": sha }]),
                );
            }
            match st.files.get(&(repo, sha.clone(), path.clone())) {
                // Over 1 MB GitHub leaves the content out and says so.
                Some(text) if text.len() > CONTENTS_INLINE_MAX => Reply::ok(&json!({
                    "type": "file",
                    "encoding": "none",
                    "size": text.len(),
                    "name": path.rsplit('/').next(),
                    "path": path,
                    "sha": sha,
                    "content": "",
                })),
                Some(text) => Reply::ok(&json!({
                    "type": "file",
                    "encoding": "base64",
                    "size": text.len(),
                    "name": path.rsplit('/').next(),
                    "path": path,
                    "sha": sha,
                    "content": base64::engine::general_purpose::STANDARD.encode(text),
                })),
                None => Reply::not_found(),
            }
        }
        ["repos", owner, name, "installation"] if asked.method == Method::GET => {
            installation(st, &format!("{owner}/{name}"))
        }
        ["repos", owner, name, "deployments", rest @ ..] => {
            deployments(st, asked, &format!("{owner}/{name}"), rest, paging)
        }
        ["repos", owner, name, "pulls", rest @ ..] => pulls(st, asked, &format!("{owner}/{name}"), rest, paging),
        ["repos", owner, name, "issues", rest @ ..] => issues(st, asked, &format!("{owner}/{name}"), rest, paging),
        ["app", "installations", id, "access_tokens"] if asked.method == Method::POST => access_token(st, id),
        // The token's user; an installation token belongs to no user.
        ["user"] if asked.method == Method::GET => match st.app {
            Some(_) => Reply::message(StatusCode::FORBIDDEN, "Resource not accessible by integration"),
            None => Reply::ok(&user_json(BOT_LOGIN)),
        },
        _ => Reply::not_found(),
    }
}

/// `GET /repos/{o}/{r}/installation`: the app's installation on the repository's owner.
fn installation(st: &GhState, repo: &str) -> Reply {
    let owner = owner_of(repo);
    match st.installations.get(owner) {
        Some(id) if st.repos.contains(repo) => Reply::ok(&json!({
            "id": id,
            "account": { "login": owner, "type": "Organization" },
            "app_id": st.app.as_ref().map(|app| app.app_id),
            "target_type": "Organization",
            "repository_selection": "all",
            "access_tokens_url": format!("https://api.github.com/app/installations/{id}/access_tokens"),
            "html_url": format!("https://github.com/organizations/{owner}/settings/installations/{id}"),
        })),
        _ => Reply::not_found(),
    }
}

/// `POST /app/installations/{id}/access_tokens`: a new installation token.
fn access_token(st: &mut GhState, id: &str) -> Reply {
    let Some(id) = id.parse::<u64>().ok().filter(|id| st.installations.values().any(|known| known == id)) else {
        return Reply::not_found();
    };
    let ttl = st.app.as_ref().map_or(DEFAULT_TOKEN_TTL, |app| app.token_ttl);
    let token: String = format!("ghs_{}", (0..36).map(|_| fastrand::alphanumeric()).collect::<String>());
    let expires = SystemTime::now().checked_add(ttl).unwrap_or_else(SystemTime::now);
    st.tokens.insert(token.clone(), expires);
    Reply::created(&json!({
        "token": token,
        "expires_at": rfc3339(expires),
        "permissions": {
            "contents": "read",
            "deployments": "write",
            "issues": "write",
            "metadata": "read",
            "pull_requests": "write",
            "statuses": "write",
        },
        "repository_selection": "all",
        "installation_id": id,
    }))
}

/// `/repos/{o}/{r}/deployments/...`: list and create deployments, list and post their statuses.
fn deployments(st: &mut GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) {
        return Reply::not_found();
    }
    match rest {
        [] if asked.method == Method::GET => {
            let items: Vec<Value> = st
                .deployments
                .iter()
                .rev()
                .filter(|d| d.repo == repo)
                .filter(|d| asked.filter("sha").is_none_or(|sha| d.git_ref == sha))
                .filter(|d| asked.filter("ref").is_none_or(|r| d.git_ref == r))
                .filter(|d| asked.filter("task").is_none_or(|task| d.task == task))
                .filter(|d| asked.filter("environment").is_none_or(|env| d.environment == env))
                .map(|d| d.json(&asked.base))
                .collect();
            listing(asked, paging, items)
        }
        [] if asked.method == Method::POST => create_deployment(st, asked, repo),
        [id, more @ ..] => {
            let found =
                id.parse::<u64>().ok().and_then(|id| st.deployments.iter().position(|d| d.repo == repo && d.id == id));
            let Some(index) = found else { return Reply::not_found() };
            match more {
                [] if asked.method == Method::GET => Reply::ok(&st.deployments[index].json(&asked.base)),
                ["statuses"] if asked.method == Method::GET => {
                    let deployment = &st.deployments[index];
                    let items = deployment.statuses.iter().rev().map(|s| s.json(&asked.base, deployment)).collect();
                    listing(asked, paging, items)
                }
                ["statuses"] if asked.method == Method::POST => create_deployment_status(st, asked, index),
                _ => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// `POST /repos/{o}/{r}/deployments`, with GitHub's defaults for what the body leaves out.
fn create_deployment(st: &mut GhState, asked: &Asked<'_>, repo: &str) -> Reply {
    let sent = &asked.body;
    let Some(git_ref) = sent["ref"].as_str().filter(|r| !r.is_empty()) else {
        return Reply::invalid_request("ref");
    };
    let environment = sent["environment"].as_str().unwrap_or("production").to_owned();
    let payload = match &sent["payload"] {
        Value::Null => json!({}),
        Value::String(s) if s.is_empty() => json!({}),
        other => other.clone(),
    };
    st.last_deployment_id += 1;
    let now = SystemTime::now();
    let deployment = Deployment {
        repo: repo.to_owned(),
        id: st.last_deployment_id,
        sent: sent.clone(),
        git_ref: git_ref.to_owned(),
        task: sent["task"].as_str().unwrap_or("deploy").to_owned(),
        description: sent["description"].as_str().unwrap_or_default().to_owned(),
        payload,
        transient: sent["transient_environment"].as_bool().unwrap_or(false),
        production: sent["production_environment"].as_bool().unwrap_or(environment == "production"),
        environment,
        created: now,
        updated: now,
        statuses: Vec::new(),
    };
    let reply = Reply::created(&deployment.json(&asked.base));
    st.log(repo, format!("deployment {} {} {}", deployment.id, deployment.git_ref, deployment.environment));
    st.deployments.push(deployment);
    reply
}

/// `POST /repos/{o}/{r}/deployments/{id}/statuses` for the deployment at `index`.
fn create_deployment_status(st: &mut GhState, asked: &Asked<'_>, index: usize) -> Reply {
    let sent = &asked.body;
    let Some(state) = sent["state"].as_str() else {
        return Reply::validation_failed("DeploymentStatus", "state", "missing_field", "state is missing");
    };
    if !DEPLOYMENT_STATES.contains(&state) {
        return Reply::validation_failed(
            "DeploymentStatus",
            "state",
            "invalid",
            &format!("state must be one of {}", DEPLOYMENT_STATES.join(", ")),
        );
    }
    let description = sent["description"].as_str().unwrap_or_default();
    if description.chars().count() > MAX_STATUS_DESCRIPTION {
        return Reply::validation_failed(
            "DeploymentStatus",
            "description",
            "custom",
            &format!("description is too long (maximum is {MAX_STATUS_DESCRIPTION} characters)"),
        );
    }
    st.last_status_id += 1;
    let now = SystemTime::now();
    let deployment = &st.deployments[index];
    let status = DeploymentStatus {
        id: st.last_status_id,
        sent: sent.clone(),
        state: state.to_owned(),
        environment: sent["environment"].as_str().unwrap_or(deployment.environment.as_str()).to_owned(),
        environment_url: sent["environment_url"].as_str().unwrap_or_default().to_owned(),
        // `target_url` is the older name of `log_url`.
        log_url: sent["log_url"].as_str().or_else(|| sent["target_url"].as_str()).unwrap_or_default().to_owned(),
        description: description.to_owned(),
        created: now,
    };
    let reply = Reply::created(&status.json(&asked.base, deployment));
    let (repo, line) = (deployment.repo.clone(), format!("status {} {state}", deployment.id));
    let deployment = &mut st.deployments[index];
    deployment.updated = now;
    deployment.statuses.push(status);
    st.log(&repo, line);
    reply
}

/// `/repos/{o}/{r}/pulls` and `/repos/{o}/{r}/pulls/{n}`.
fn pulls(st: &GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) || asked.method != Method::GET {
        return Reply::not_found();
    }
    let owner = owner_of(repo);
    let json_of = |number: u64, pull: &Pull| {
        let sha = st.branches.get(&(repo.to_owned(), pull.head_branch.clone())).cloned().unwrap_or_default();
        json!({
            "url": format!("{}/repos/{repo}/pulls/{number}", asked.base),
            "id": number,
            "number": number,
            "state": if pull.open { "open" } else { "closed" },
            "title": pull.head_branch,
            "html_url": format!("https://github.com/{repo}/pull/{number}"),
            "user": user_json(owner),
            "head": {
                "label": format!("{owner}:{}", pull.head_branch),
                "ref": pull.head_branch,
                "sha": sha,
                "repo": { "full_name": repo, "owner": { "login": owner } },
            },
            "base": { "label": format!("{owner}:main"), "ref": "main", "repo": { "full_name": repo } },
        })
    };
    match rest {
        [] => {
            // GitHub ignores a `head` without `owner:`, and lists everything: a classic client mistake.
            let head = asked.filter("head").and_then(|h| h.split_once(':'));
            let state = asked.param("state").unwrap_or("open");
            // Newest first, as GitHub sorts by default; numbers stand in for creation times.
            let items: Vec<Value> = st
                .pulls
                .iter()
                .rev()
                .filter(|((r, _), _)| r == repo)
                .filter(|(_, pull)| match state {
                    "all" => true,
                    "closed" => !pull.open,
                    _ => pull.open,
                })
                .filter(|(_, pull)| {
                    head.is_none_or(|(who, branch)| who.eq_ignore_ascii_case(owner) && branch == pull.head_branch)
                })
                .map(|((_, number), pull)| json_of(*number, pull))
                .collect();
            listing(asked, paging, items)
        }
        [number] => {
            match number.parse::<u64>().ok().and_then(|n| st.pulls.get(&(repo.to_owned(), n)).map(|p| (n, p))) {
                Some((number, pull)) => Reply::ok(&json_of(number, pull)),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// `/repos/{o}/{r}/issues/{n}/comments` (list, create) and `/repos/{o}/{r}/issues/comments/{id}` (get, edit).
fn issues(st: &mut GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) {
        return Reply::not_found();
    }
    match rest {
        ["comments", id] => {
            let Some(id) = id.parse::<u64>().ok().filter(|id| st.comments.get(id).is_some_and(|c| c.repo == repo))
            else {
                return Reply::not_found();
            };
            if asked.method == Method::GET {
                let comment = &st.comments[&id];
                let on_pull = st.pulls.contains_key(&(repo.to_owned(), comment.issue));
                return Reply::ok(&comment.json(id, &asked.base, on_pull));
            }
            if asked.method != Method::PATCH {
                return Reply::not_found();
            }
            let Some(body) = asked.body["body"].as_str() else { return Reply::invalid_request("body") };
            if let Some(refused) = refuse_comment_body(body) {
                return refused;
            }
            let body = body.to_owned();
            let Some(comment) = st.comments.get_mut(&id) else { return Reply::not_found() };
            comment.body = body;
            comment.updated = SystemTime::now();
            let issue = comment.issue;
            let on_pull = st.pulls.contains_key(&(repo.to_owned(), issue));
            let reply = Reply::ok(&st.comments[&id].json(id, &asked.base, on_pull));
            st.log(repo, format!("comment edit {id}"));
            reply
        }
        [number, "comments"] => {
            let Some(issue) = number.parse::<u64>().ok().filter(|n| st.issue_exists(repo, *n)) else {
                return Reply::not_found();
            };
            let on_pull = st.pulls.contains_key(&(repo.to_owned(), issue));
            if asked.method == Method::GET {
                let items: Vec<Value> = st
                    .comments
                    .iter()
                    .filter(|(_, c)| c.repo == repo && c.issue == issue)
                    .map(|(id, c)| c.json(*id, &asked.base, on_pull))
                    .collect();
                return listing(asked, paging, items);
            }
            if asked.method != Method::POST {
                return Reply::not_found();
            }
            let Some(body) = asked.body["body"].as_str() else { return Reply::invalid_request("body") };
            if let Some(refused) = refuse_comment_body(body) {
                return refused;
            }
            let body = body.to_owned();
            let id = st.next_comment_id;
            st.next_comment_id += 1;
            let now = SystemTime::now();
            let app = st.app.as_ref().map(|a| a.app_id);
            let (owned, login) = (repo.to_owned(), BOT_LOGIN.to_owned());
            let comment = Comment { repo: owned, issue, body, login, app, created: now, updated: now };
            let reply = Reply::created(&comment.json(id, &asked.base, on_pull));
            st.comments.insert(id, comment);
            st.log(repo, format!("comment create {issue} {id}"));
            reply
        }
        _ => Reply::not_found(),
    }
}

/// GitHub's 422 for a comment body it does not take, if it does not.
fn refuse_comment_body(body: &str) -> Option<Reply> {
    (body.chars().count() > MAX_COMMENT_BODY).then(|| {
        Reply::validation_failed(
            "IssueComment",
            "body",
            "custom",
            &format!("body is too long (maximum is {MAX_COMMENT_BODY} characters)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "acme/shop";

    /// A fake under Enterprise's prefix, so every URL the tests see carries it.
    async fn fake_with_branches(n: usize) -> FakeGitHub {
        let fake = FakeGitHub::start("/api/v3").await;
        for i in 0..n {
            fake.set_branch(REPO, &format!("b{i:03}"), &format!("{i:040}"));
        }
        fake
    }

    fn branches_url(fake: &FakeGitHub, query: &str) -> String {
        format!("{}/repos/{REPO}/branches?{query}", fake.api_url())
    }

    fn link_of(response: &reqwest::Response) -> Option<String> {
        response.headers().get("link").map(|v| v.to_str().expect("ASCII").to_owned())
    }

    async fn names(response: reqwest::Response) -> Vec<String> {
        let items: Vec<serde_json::Value> = response.json().await.expect("a JSON list");
        items.iter().map(|b| b["name"].as_str().expect("a name").to_owned()).collect()
    }

    #[tokio::test]
    async fn link_header_walks_three_pages() {
        let fake = fake_with_branches(250).await;
        let http = reqwest::Client::new();
        let base = branches_url(&fake, "per_page=100");
        let at = |page: usize| format!("<{base}&page={page}>");

        let first = http.get(branches_url(&fake, "per_page=100")).send().await.expect("page 1");
        assert_eq!(
            link_of(&first).as_deref(),
            Some(format!(r#"{}; rel="next", {}; rel="last""#, at(2), at(3)).as_str())
        );
        let names1 = names(first).await;
        assert_eq!((names1.len(), names1[0].as_str()), (100, "b000"));

        let second = http.get(branches_url(&fake, "per_page=100&page=2")).send().await.expect("page 2");
        let expected =
            format!(r#"{}; rel="prev", {}; rel="next", {}; rel="last", {}; rel="first""#, at(1), at(3), at(3), at(1));
        assert_eq!(link_of(&second).as_deref(), Some(expected.as_str()));
        assert_eq!(names(second).await[0], "b100");

        let third = http.get(branches_url(&fake, "per_page=100&page=3")).send().await.expect("page 3");
        let link = link_of(&third).expect("a Link header");
        assert!(!link.contains(r#"rel="next""#), "{link}");
        assert!(link.contains(r#"rel="prev""#) && link.contains(r#"rel="first""#), "{link}");
        let names3 = names(third).await;
        assert_eq!((names3.len(), names3[49].as_str()), (50, "b249"));
        assert_eq!(fake.branch_count(REPO), 250);
    }

    #[tokio::test]
    async fn page_size_is_capped() {
        let fake = fake_with_branches(25).await;
        let http = reqwest::Client::new();
        let one = http.get(branches_url(&fake, "per_page=1000")).send().await.expect("listing");
        assert_eq!(link_of(&one), None, "25 branches fit on one page of 100");
        assert_eq!(names(one).await.len(), 25);

        fake.set_page_size_cap(10);
        let capped = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        let link = link_of(&capped).expect("a Link header");
        assert!(link.ends_with(r#"per_page=100&page=3>; rel="last""#), "{link}");
        assert_eq!(names(capped).await.len(), 10);
    }

    #[tokio::test]
    async fn etag_and_if_none_match_give_304() {
        let fake = fake_with_branches(3).await;
        let http = reqwest::Client::new();
        let url = format!("{}/repos/{REPO}", fake.api_url());
        let first = http.get(&url).send().await.expect("repo");
        assert_eq!(first.status(), 200);
        let etag = first.headers().get("etag").expect("an ETag").to_str().expect("ASCII").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let again = http.get(&url).header("if-none-match", &etag).send().await.expect("repo");
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers().get("etag").map(|v| v.to_str().ok()), Some(Some(etag.as_str())));
        assert!(again.bytes().await.expect("body").is_empty());

        // A change to what the listing shows changes its ETag.
        let list = branches_url(&fake, "per_page=10");
        let listed = http.get(&list).send().await.expect("listing");
        let list_etag = listed.headers().get("etag").expect("an ETag").clone();
        fake.set_branch(REPO, "b000", &"f".repeat(40));
        let changed = http.get(&list).header("if-none-match", list_etag).send().await.expect("listing");
        assert_eq!(changed.status(), 200);
        assert_eq!(fake.not_modified_count(), 1);
    }

    #[tokio::test]
    async fn fault_on_second_page_fails_it_once() {
        let fake = fake_with_branches(250).await;
        fake.inject(Target::BranchListPage(2), Fault::Status(500), 1);
        let http = reqwest::Client::new();
        let get = |query: &'static str| http.get(branches_url(&fake, query)).send();
        assert_eq!(get("per_page=100").await.expect("page 1").status(), 200);
        let failed = get("per_page=100&page=2").await.expect("page 2");
        assert_eq!(failed.status(), 500);
        let doc: serde_json::Value = failed.json().await.expect("an error document");
        assert_eq!(doc["message"], "Server Error");
        assert!(doc["documentation_url"].is_string());
        assert_eq!(get("per_page=100&page=2").await.expect("page 2 again").status(), 200);
        assert_eq!(get("per_page=100&page=3").await.expect("page 3").status(), 200);
    }

    #[tokio::test]
    async fn html_empty_and_linkless_faults() {
        let fake = fake_with_branches(250).await;
        let http = reqwest::Client::new();
        fake.inject(Target::Branch, Fault::Html, 1);
        let branch = format!("{}/repos/{REPO}/branches/b001", fake.api_url());
        let html = http.get(&branch).send().await.expect("branch");
        assert_eq!(html.status(), 200);
        let content_type = html.headers().get("content-type").expect("a Content-Type").to_str().expect("ASCII");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(html.text().await.expect("body").contains("<html>"));
        assert_eq!(http.get(&branch).send().await.expect("branch").status(), 200);

        fake.inject(Target::BranchList, Fault::EmptyList, 1);
        fake.inject(Target::BranchList, Fault::NoLink, 1);
        let empty = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        assert_eq!(link_of(&empty), None);
        assert!(names(empty).await.is_empty());
        let linkless = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        assert_eq!(link_of(&linkless), None);
        assert_eq!(names(linkless).await.len(), 100);

        fake.inject(Target::Repo, Fault::Status(401), 1);
        let denied = http.get(format!("{}/repos/{REPO}", fake.api_url())).send().await.expect("repo");
        assert_eq!(denied.status(), 401);
        assert_eq!(denied.json::<serde_json::Value>().await.expect("JSON")["message"], "Bad credentials");
    }

    #[tokio::test]
    async fn a_delay_holds_back_only_its_own_answer() {
        let fake = fake_with_branches(1).await;
        fake.inject(Target::Repo, Fault::Delay(Duration::from_secs(30)), 1);
        let http = reqwest::Client::new();
        let slow = http.get(format!("{}/repos/{REPO}", fake.api_url())).timeout(Duration::from_millis(300)).send();
        let slow = tokio::spawn(slow);
        // Wait until the delayed request has arrived, so the next one runs while it sleeps.
        while fake.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let quick = http.get(branches_url(&fake, "")).timeout(Duration::from_millis(250)).send().await;
        assert_eq!(quick.expect("not blocked by the delay").status(), 200);
        assert!(slow.await.expect("joined").expect_err("times out").is_timeout());
    }

    #[tokio::test]
    async fn requests_are_accounted() {
        let fake = fake_with_branches(2).await;
        let http = reqwest::Client::new();
        fake.fail_next(1);
        let url = branches_url(&fake, "per_page=1&page=2");
        assert_eq!(http.get(&url).send().await.expect("listing").status(), 502);
        let ok = http.get(&url).send().await.expect("listing");
        let etag = ok.headers().get("etag").expect("an ETag").clone();
        assert_eq!(http.get(&url).header("if-none-match", etag).send().await.expect("listing").status(), 304);
        let missing = format!("{}/repos/{REPO}/branches/feat%2Fx", fake.api_url());
        assert_eq!(http.get(&missing).send().await.expect("branch").status(), 404);

        assert_eq!(fake.request_count(), 4);
        assert_eq!(fake.not_modified_count(), 1);
        let listing = "/repos/acme/shop/branches?per_page=1&page=2";
        let call = |path: &str, status: u16| ("GET".to_owned(), path.to_owned(), status);
        assert_eq!(
            fake.calls(),
            [
                call(listing, 502),
                call(listing, 200),
                call(listing, 304),
                call("/repos/acme/shop/branches/feat%2Fx", 404),
            ]
        );
        assert_eq!(fake.requests().last().map(String::as_str), Some("repos/acme/shop/branches/feat/x"));

        fake.reset_requests();
        assert_eq!((fake.request_count(), fake.requests().len(), fake.not_modified_count()), (0, 0, 0));
    }

    fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::RequestBuilder {
        http.post(url).json(body)
    }

    async fn json_of(response: reqwest::Response) -> Value {
        response.json().await.expect("a JSON answer")
    }

    fn ids(items: &Value) -> Vec<u64> {
        items.as_array().expect("a JSON list").iter().map(|i| i["id"].as_u64().expect("an id")).collect()
    }

    #[tokio::test]
    async fn deployments_and_statuses_round_trip() {
        let fake = fake_with_branches(1).await;
        let http = reqwest::Client::new();
        let url = format!("{}/repos/{REPO}/deployments", fake.api_url());
        let first = json!({
            "ref": "abc123", "environment": "pr-7", "transient_environment": true,
            "production_environment": false, "auto_merge": false, "required_contexts": [],
            "description": "preview of #7", "payload": {"pr": 7},
        });
        let second = json!({
            "ref": "def456", "environment": "pr-8", "transient_environment": true,
            "production_environment": false, "auto_merge": false, "required_contexts": [],
        });
        let created = post_json(&http, &url, &first).send().await.expect("create");
        assert_eq!(created.status(), 201);
        let deployment = json_of(created).await;
        assert_eq!(deployment["id"], 1);
        assert_eq!((&deployment["sha"], &deployment["ref"]), (&json!("abc123"), &json!("abc123")));
        assert_eq!(deployment["task"], "deploy");
        assert_eq!((&deployment["environment"], &deployment["description"]), (&json!("pr-7"), &json!("preview of #7")));
        assert_eq!(deployment["transient_environment"], true);
        assert_eq!(deployment["production_environment"], false);
        assert_eq!(deployment["creator"]["login"], "previewd[bot]");
        let statuses_url = deployment["statuses_url"].as_str().expect("a URL");
        assert!(statuses_url.ends_with("/api/v3/repos/acme/shop/deployments/1/statuses"), "{statuses_url}");
        assert!(deployment["created_at"].as_str().expect("a time").ends_with('Z'));
        let created = post_json(&http, &url, &second).send().await.expect("create");
        assert_eq!(json_of(created).await["id"], 2);
        let unknown = format!("{}/repos/acme/nowhere/deployments", fake.api_url());
        assert_eq!(post_json(&http, &unknown, &first).send().await.expect("create").status(), 404);
        let no_ref = post_json(&http, &url, &json!({"environment": "pr-9"})).send().await.expect("create");
        assert_eq!(no_ref.status(), 422);

        let list = |query: &'static str| http.get(format!("{url}?{query}")).send();
        assert_eq!(ids(&json_of(list("").await.expect("list")).await), [2, 1], "newest first");
        assert_eq!(ids(&json_of(list("environment=pr-7").await.expect("list")).await), [1]);
        assert_eq!(ids(&json_of(list("sha=def456").await.expect("list")).await), [2]);
        assert_eq!(ids(&json_of(list("ref=abc123&environment=pr-8").await.expect("list")).await), Vec::<u64>::new());
        let paged = list("per_page=1&page=2").await.expect("list");
        assert!(link_of(&paged).expect("a Link header").contains(r#"rel="prev""#));
        assert_eq!(ids(&json_of(paged).await), [1]);

        let statuses = format!("{url}/1/statuses");
        let mut posted = Vec::new();
        for state in ["in_progress", "success"] {
            let body = json!({
                "state": state, "environment_url": "https://pr-7.preview.example.com",
                "log_url": "https://previewd.example.com/envs/pr-7", "description": "x".repeat(140),
                "auto_inactive": false,
            });
            let answered = post_json(&http, &statuses, &body).send().await.expect("status");
            assert_eq!(answered.status(), 201);
            let status = json_of(answered).await;
            assert_eq!((&status["state"], &status["environment_url"]), (&json!(state), &body["environment_url"]));
            assert_eq!(status["log_url"], body["log_url"]);
            assert!(status["deployment_url"].as_str().expect("a URL").ends_with("/repos/acme/shop/deployments/1"));
            posted.push(body);
        }
        let listed = json_of(http.get(&statuses).send().await.expect("statuses")).await;
        let states: Vec<&str> =
            listed.as_array().expect("a list").iter().map(|s| s["state"].as_str().expect("a state")).collect();
        assert_eq!(states, ["success", "in_progress"], "newest first");

        let too_long = json!({"state": "success", "description": "x".repeat(141)});
        let refused = post_json(&http, &statuses, &too_long).send().await.expect("status");
        assert_eq!(refused.status(), 422);
        assert_eq!(json_of(refused).await["message"], "Validation Failed");
        let bad_state = post_json(&http, &statuses, &json!({"state": "done"})).send().await.expect("status");
        assert_eq!(bad_state.status(), 422);
        assert_eq!(json_of(bad_state).await["message"], "Validation Failed");
        let nowhere = format!("{url}/99/statuses");
        let nowhere_status = post_json(&http, &nowhere, &json!({"state": "success"})).send().await;
        assert_eq!(nowhere_status.expect("status").status(), 404);
        assert_eq!(http.get(&nowhere).send().await.expect("statuses").status(), 404);

        let with_id = |body: &Value, id: u64| {
            let mut body = body.clone();
            body["id"] = json!(id);
            body
        };
        assert_eq!(fake.deployments(REPO), [with_id(&first, 1), with_id(&second, 2)]);
        assert_eq!(fake.deployment_statuses(REPO, 1), posted);
        assert!(fake.deployment_statuses(REPO, 2).is_empty());
        assert_eq!(
            fake.feedback_log(REPO),
            ["deployment 1 abc123 pr-7", "deployment 2 def456 pr-8", "status 1 in_progress", "status 1 success"]
        );
        let writes = fake.bodies();
        assert_eq!(writes[0], ("POST".to_owned(), "/repos/acme/shop/deployments".to_owned(), first.clone()));
        assert_eq!(writes.len(), 9, "every write is recorded, refused or not");
    }

    #[tokio::test]
    async fn pulls_filter_by_head_and_state() {
        let fake = FakeGitHub::start("").await;
        fake.set_branch(REPO, "feat/x", &"a".repeat(40));
        fake.open_pull(REPO, 7, "feat/x");
        fake.open_pull(REPO, 8, "feat/y");
        fake.open_pull(REPO, 9, "feat/x");
        fake.close_pull(REPO, 9);
        let http = reqwest::Client::new();
        let url = format!("{}/repos/{REPO}/pulls", fake.api_url());
        let numbers = |query: &'static [(&'static str, &'static str)]| {
            let request = http.get(&url).query(query).send();
            async move {
                let listed = json_of(request.await.expect("pulls")).await;
                let listed = listed.as_array().expect("a list");
                listed.iter().map(|p| p["number"].as_u64().expect("a number")).collect::<Vec<_>>()
            }
        };
        assert_eq!(numbers(&[("state", "open"), ("head", "acme:feat/x")]).await, [7]);
        assert_eq!(numbers(&[("head", "acme:feat/x")]).await, [7], "state defaults to open");
        assert_eq!(numbers(&[("state", "all"), ("head", "acme:feat/x")]).await, [9, 7]);
        assert_eq!(numbers(&[("state", "closed")]).await, [9]);
        assert_eq!(numbers(&[]).await, [8, 7]);
        assert_eq!(numbers(&[("head", "someone:feat/x")]).await, Vec::<u64>::new());
        assert_eq!(numbers(&[("head", "feat/x")]).await, [8, 7], "GitHub ignores a head without its owner");
        assert_eq!(numbers(&[("per_page", "1"), ("page", "2")]).await, [7]);

        let listed = json_of(http.get(&url).query(&[("head", "acme:feat/x")]).send().await.expect("pulls")).await;
        let pull = &listed[0];
        assert_eq!((&pull["state"], &pull["head"]["ref"]), (&json!("open"), &json!("feat/x")));
        assert_eq!((&pull["head"]["label"], &pull["head"]["repo"]["full_name"]), (&json!("acme:feat/x"), &json!(REPO)));
        assert_eq!(pull["head"]["sha"], "a".repeat(40));
        assert_eq!(pull["html_url"], "https://github.com/acme/shop/pull/7");
        let unknown = format!("{}/repos/acme/nowhere/pulls", fake.api_url());
        assert_eq!(http.get(unknown).send().await.expect("pulls").status(), 404);
    }

    #[tokio::test]
    async fn comments_are_created_listed_in_pages_and_edited() {
        let fake = FakeGitHub::start("/api/v3").await;
        fake.open_pull(REPO, 7, "feat/x");
        let human = fake.add_comment(REPO, 7, "looks good");
        assert_eq!(human, 1000);
        let http = reqwest::Client::new();
        let url = format!("{}/repos/{REPO}/issues/7/comments", fake.api_url());
        for i in 0..4 {
            let created = post_json(&http, &url, &json!({"body": format!("bot {i}")})).send().await.expect("comment");
            assert_eq!(created.status(), 201);
            let comment = json_of(created).await;
            assert_eq!((&comment["id"], &comment["user"]["login"]), (&json!(1001 + i), &json!("previewd[bot]")));
            assert_eq!(comment["html_url"], format!("https://github.com/acme/shop/pull/7#issuecomment-{}", 1001 + i));
        }

        let first = http.get(&url).query(&[("per_page", "2")]).send().await.expect("page 1");
        let link = link_of(&first).expect("a Link header");
        assert!(link.ends_with(r#"per_page=2&page=3>; rel="last""#), "{link}");
        let first = json_of(first).await;
        assert_eq!(ids(&first), [1000, 1001], "oldest first");
        assert_eq!(first[0]["user"]["login"], "octocat");
        let last = http.get(&url).query(&[("per_page", "2"), ("page", "3")]).send().await.expect("page 3");
        assert_eq!(ids(&json_of(last).await), [1004]);

        let edit = format!("{}/repos/{REPO}/issues/comments/1002", fake.api_url());
        let edited = http.patch(&edit).json(&json!({"body": "edited"})).send().await.expect("edit");
        assert_eq!(edited.status(), 200);
        assert_eq!(json_of(edited).await["body"], "edited");
        let missing = format!("{}/repos/{REPO}/issues/comments/5000", fake.api_url());
        assert_eq!(http.patch(&missing).json(&json!({"body": "x"})).send().await.expect("edit").status(), 404);
        let no_body = http.patch(&edit).json(&json!({})).send().await.expect("edit");
        assert_eq!(no_body.status(), 422);
        let not_json = http.patch(&edit).body("{not json").send().await.expect("edit");
        assert_eq!(not_json.status(), 400);
        assert_eq!(json_of(not_json).await["message"], "Problems parsing JSON");
        let no_issue = format!("{}/repos/{REPO}/issues/99/comments", fake.api_url());
        assert_eq!(post_json(&http, &no_issue, &json!({"body": "x"})).send().await.expect("comment").status(), 404);

        let bodies = |comments: Vec<(u64, String)>| comments.into_iter().map(|(_, body)| body).collect::<Vec<_>>();
        assert_eq!(bodies(fake.comments(REPO, 7)), ["looks good", "bot 0", "edited", "bot 2", "bot 3"]);
        fake.delete_comment(1001);
        assert_eq!(fake.comments(REPO, 7).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1000, 1002, 1003, 1004]);
        assert_eq!(
            fake.feedback_log(REPO),
            [
                "comment create 7 1001",
                "comment create 7 1002",
                "comment create 7 1003",
                "comment create 7 1004",
                "comment edit 1002"
            ]
        );
        let (method, path, body) = fake.bodies().into_iter().nth(4).expect("the edit's body");
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/repos/acme/shop/issues/comments/1002"));
        assert_eq!(body, json!({"body": "edited"}));
    }

    #[tokio::test]
    async fn a_faulted_write_changes_nothing() {
        let fake = fake_with_branches(1).await;
        fake.open_pull(REPO, 7, "b000");
        let http = reqwest::Client::new();
        let comments = format!("{}/repos/{REPO}/issues/7/comments", fake.api_url());
        let deployments = format!("{}/repos/{REPO}/deployments", fake.api_url());
        fake.inject(Target::Writes, Fault::RetryAfter { status: 403, seconds: 7 }, 2);

        let refused = post_json(&http, &comments, &json!({"body": "hello"})).send().await.expect("comment");
        assert_eq!(refused.status(), 403);
        assert_eq!(refused.headers().get("retry-after").map(|v| v.to_str().ok()), Some(Some("7")));
        let message = json_of(refused).await["message"].as_str().expect("a message").to_owned();
        assert!(message.starts_with("You have exceeded a secondary rate limit"), "{message}");
        // A read is no write: it passes, and leaves the fault for the next write.
        assert_eq!(http.get(&comments).send().await.expect("comments").status(), 200);
        let deployment = json!({"ref": "0".repeat(40), "environment": "pr-7"});
        assert_eq!(post_json(&http, &deployments, &deployment).send().await.expect("deploy").status(), 403);
        assert!(fake.comments(REPO, 7).is_empty());
        assert!(fake.deployments(REPO).is_empty());
        assert!(fake.feedback_log(REPO).is_empty());

        assert_eq!(post_json(&http, &comments, &json!({"body": "hello"})).send().await.expect("comment").status(), 201);
        assert_eq!(fake.comments(REPO, 7), [(1000, "hello".to_owned())], "ids were not spent on refused writes");
        assert_eq!(fake.bodies().len(), 3);

        fake.inject(Target::Comments, Fault::RateLimited { status: 429 }, 1);
        let limited = http.get(&comments).send().await.expect("comments");
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers().get("x-ratelimit-remaining").map(|v| v.to_str().ok()), Some(Some("0")));
        let reset: u64 = limited.headers()["x-ratelimit-reset"].to_str().expect("ASCII").parse().expect("unix seconds");
        let now = unix_seconds(SystemTime::now());
        assert!((now..=now + 3).contains(&reset), "{reset} is not about two seconds after {now}");
        assert_eq!(http.get(&comments).send().await.expect("comments").status(), 200);
    }

    /// A GitHub App's key pair: the private key as PKCS#1 PEM, the public one as SPKI PEM.
    fn app_key() -> (String, String) {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("an RSA key");
        let private = key.to_pkcs1_pem(LineEnding::LF).expect("PEM").to_string();
        let public = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("PEM");
        (private, public)
    }

    fn app_jwt(private_pem: &str, claims: &Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("an RSA key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::RS256), claims, &key).expect("a JWT")
    }

    #[tokio::test]
    async fn app_mode_wants_a_jwt_then_an_installation_token() {
        let (private_pem, public_pem) = app_key();
        let fake = fake_with_branches(1).await;
        fake.enable_app(4242, &public_pem, Duration::from_secs(3600));
        let http = reqwest::Client::new();
        let api = fake.api_url();
        let now = unix_seconds(SystemTime::now());
        // As octocrab makes it: `iss` a number, issued a minute early, ten minutes to live.
        let jwt = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 540, "iss": 4242}));

        let installation_url = format!("{api}/repos/{REPO}/installation");
        let refused = http.get(&installation_url).send().await.expect("installation");
        assert_eq!(refused.status(), 401);
        assert_eq!(json_of(refused).await["message"], "A JSON web token could not be decoded");
        let stranger = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 540, "iss": "1"}));
        let too_long = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 600, "iss": "4242"}));
        for bad in ["not-a-jwt", stranger.as_str(), too_long.as_str()] {
            let refused = http.get(&installation_url).bearer_auth(bad).send().await.expect("installation");
            assert_eq!(refused.status(), 401, "{bad}");
        }
        let installation = http.get(&installation_url).bearer_auth(&jwt).send().await.expect("installation");
        assert_eq!(installation.status(), 200);
        let installation = json_of(installation).await;
        assert_eq!((&installation["id"], &installation["account"]["login"]), (&json!(42), &json!("acme")));
        assert_eq!(installation["app_id"], 4242);
        assert_eq!(fake.installation_id("acme"), Some(42));

        let tokens_url = format!("{api}/app/installations/42/access_tokens");
        let issued = http.post(&tokens_url).bearer_auth(&jwt).send().await.expect("token");
        assert_eq!(issued.status(), 201);
        let issued = json_of(issued).await;
        let token = issued["token"].as_str().expect("a token").to_owned();
        assert!(token.starts_with("ghs_"), "{token}");
        assert!(issued["expires_at"].as_str().expect("a time").ends_with('Z'));
        assert_eq!(issued["repository_selection"], "all");
        assert_eq!(fake.tokens_issued(), 1);
        let elsewhere = format!("{api}/app/installations/7/access_tokens");
        assert_eq!(http.post(&elsewhere).bearer_auth(&jwt).send().await.expect("token").status(), 404);
        // A string `iss` is taken too.
        let string_iss = app_jwt(&private_pem, &json!({"iat": now, "exp": now + 600, "iss": "4242"}));
        assert_eq!(http.post(&tokens_url).bearer_auth(&string_iss).send().await.expect("token").status(), 201);

        let repo_url = format!("{api}/repos/{REPO}");
        let with_token = http.get(&repo_url).header("authorization", format!("token {token}")).send().await;
        assert_eq!(with_token.expect("repo").status(), 200);
        assert_eq!(http.get(&repo_url).bearer_auth(&token).send().await.expect("repo").status(), 200);
        assert_eq!(fake.unauthenticated_count(), 0);
        let missing = http.get(&repo_url).send().await.expect("repo");
        assert_eq!(missing.status(), 401);
        assert_eq!(json_of(missing).await["message"], "Bad credentials");
        let with_jwt = http.get(&repo_url).bearer_auth(&jwt).send().await.expect("repo");
        assert_eq!(with_jwt.status(), 401, "a JWT is no installation token");
        assert_eq!(fake.unauthenticated_count(), 2);

        fake.enable_app(4242, &public_pem, Duration::from_secs(1));
        let issued = json_of(http.post(&tokens_url).bearer_auth(&jwt).send().await.expect("token")).await;
        let short_lived = issued["token"].as_str().expect("a token").to_owned();
        assert_eq!(http.get(&repo_url).bearer_auth(&short_lived).send().await.expect("repo").status(), 200);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(http.get(&repo_url).bearer_auth(&short_lived).send().await.expect("repo").status(), 401);
        assert_eq!(fake.unauthenticated_count(), 3);
        assert_eq!(http.get(&repo_url).bearer_auth(&token).send().await.expect("repo").status(), 200, "still valid");
    }
}
