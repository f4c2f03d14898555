//! The GitHub API as previewd uses it, through octocrab with a configurable base URL (GitHub Enterprise:
//! `https://HOST/api/v3`). Every call is bounded by a timeout; retrying is the reconciler's job (it
//! requeues with backoff), so a slow GitHub never blocks a worker for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use octocrab::Octocrab;
use previewd_domain::{BranchName, CommitSha, RepoName, Secret};
use serde::Deserialize;

use crate::auth::{AppAuth, Credentials, InstallationToken, REFRESH_MARGIN, expiry};
pub use crate::error::GithubError;
pub use crate::wire::USER_AGENT;
pub(crate) use crate::wire::enc;
use crate::wire::{http_client, next_link, operation, rate_limited, renamed_to, under};

/// GitHub answers in well under a second; past this something is wrong and the reconciler should retry.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// GitHub's largest page.
pub(crate) const PAGE_SIZE: usize = 100;
/// A repository with more branches than this is not listed (the reaper then deletes nothing).
const MAX_PAGES: usize = 200;
/// Listing pages remembered with their ETag; past this the cache starts afresh.
const ETAG_CACHE_MAX: usize = 4_096;

/// What GitHub says of one branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchHead {
    /// It exists, at this commit.
    At(CommitSha),
    /// 404 (GitHub's own): no such branch, or no repository the token can see.
    Missing,
    /// 301 to another branch of the same repository: renamed. Gone under this name, once a complete
    /// listing agrees.
    Renamed(BranchName),
}

impl BranchHead {
    /// The commit, if the branch exists under this name.
    pub fn at(&self) -> Option<&CommitSha> {
        match self {
            BranchHead::At(sha) => Some(sha),
            _ => None,
        }
    }
}

/// A complete listing of a repository's branches: every page answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchListing {
    pub branches: Vec<(BranchName, CommitSha)>,
}

#[derive(Debug, Clone)]
pub struct GitHub {
    client: Octocrab,
    /// The API base URL, for paths (a `Link` header gives absolute URLs).
    base: String,
    /// Listing pages by route: their ETag, body and next page.
    etags: Arc<Mutex<HashMap<String, Cached>>>,
    /// One call (and reading its answer) may take this long.
    timeout: Duration,
    auth: Arc<Auth>,
    /// Who previewd writes as, once asked (see [`GitHub::identity`]).
    identity: Arc<tokio::sync::OnceCell<Identity>>,
}

/// Who previewd writes as on GitHub: what it wrote, and only that, is its own to find and edit again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials: previewd writes nothing.
    Nobody,
    /// A token's user (`GET /user`), by login; GitHub compares logins without regard to case.
    User(String),
    /// A GitHub App: what it writes carries `performed_via_github_app.id`.
    App(u64),
}

#[derive(Debug)]
enum Auth {
    None,
    Token(Secret),
    App(AppAuth),
}

/// An answer: status, headers and body.
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: String,
}

#[derive(Deserialize)]
struct Branch {
    name: String,
    commit: Commit,
}

#[derive(Deserialize)]
struct Commit {
    sha: String,
}

#[derive(Deserialize)]
struct Contents {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

impl GitHub {
    /// `api_url`: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server; each call
    /// (and reading its answer) may take `timeout`.
    pub fn new(api_url: &str, credentials: &Credentials, timeout: Duration) -> Result<Self, GithubError> {
        let setup = |message: String| GithubError::Transport { what: "set-up".into(), message };
        let client = http_client(api_url).map_err(setup)?;
        let auth = match credentials {
            Credentials::None => Auth::None,
            Credentials::Token(t) => Auth::Token(t.clone()),
            Credentials::App { app_id, private_key } => {
                Auth::App(AppAuth::new(*app_id, private_key, REFRESH_MARGIN).map_err(|e| setup(e.to_string()))?)
            }
        };
        Ok(Self {
            client,
            base: api_url.to_owned(),
            etags: Arc::new(Mutex::new(HashMap::new())),
            timeout,
            auth: Arc::new(auth),
            identity: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Who previewd writes as: the App, or the token's user (asked of GitHub once, then remembered).
    pub async fn identity(&self) -> Result<Identity, GithubError> {
        let identity = self
            .identity
            .get_or_try_init(|| async {
                match self.auth.as_ref() {
                    Auth::None => Ok(Identity::Nobody),
                    Auth::App(app) => Ok(Identity::App(app.app_id)),
                    Auth::Token(_) => {
                        #[derive(Deserialize)]
                        struct User {
                            login: String,
                        }
                        let what = "find the token's user";
                        let answer =
                            self.request(http::Method::GET, "/user", None, http::HeaderMap::new(), None, what).await?;
                        let body = self.judge(answer.status, &answer.headers, answer.body, what)?.ok_or_else(|| {
                            GithubError::Status { what: what.to_owned(), status: 404, message: "no user".into() }
                        })?;
                        let user: User = serde_json::from_str(&body)
                            .map_err(|e| GithubError::Garbled { what: what.to_owned(), message: e.to_string() })?;
                        Ok(Identity::User(user.login))
                    }
                }
            })
            .await?;
        Ok(identity.clone())
    }

    /// Renews a GitHub App's installation tokens this long before they expire (five minutes unless set).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        if let Some(Auth::App(app)) = Arc::get_mut(&mut self.auth) {
            app.margin = margin;
        }
        self
    }

    pub(crate) fn repo_path(repo: &RepoName) -> String {
        format!("/repos/{}/{}", enc(repo.owner()), enc(repo.name()))
    }

    /// What GitHub says of the branch: its head commit, missing (GitHub's own 404), or renamed (a 301 to
    /// another branch of the same repository). A 301 anywhere else means the repository moved: an error
    /// that asks a person to update the configuration, since what previewd knows by that name proves
    /// nothing about the new one.
    pub async fn branch_head(&self, repo: &RepoName, branch: &BranchName) -> Result<BranchHead, GithubError> {
        let what = format!("get branch {repo}:{branch}");
        let route = format!("{}/branches/{}", Self::repo_path(repo), enc(branch.as_str()));
        let answer = self.request(http::Method::GET, &route, Some(repo), http::HeaderMap::new(), None, &what).await?;
        if answer.status == http::StatusCode::MOVED_PERMANENTLY {
            let location = answer.headers.get(http::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            if let Some(to) = renamed_to(&self.base, repo, location).filter(|to| to != branch) {
                return Ok(BranchHead::Renamed(to));
            }
        }
        match self.judge(answer.status, &answer.headers, answer.body, &what)? {
            None => Ok(BranchHead::Missing),
            Some(body) => {
                let b: Branch = serde_json::from_str(&body)
                    .map_err(|e| GithubError::Garbled { what: what.clone(), message: e.to_string() })?;
                CommitSha::new(&b.commit.sha)
                    .map(BranchHead::At)
                    .map_err(|e| GithubError::Garbled { what, message: e.to_string() })
            }
        }
    }

    /// Does GitHub show the repository to this token? (A branch 404 proves absence only if it does.)
    pub async fn repo_visible(&self, repo: &RepoName) -> Result<bool, GithubError> {
        let what = format!("get repository {repo}");
        Ok(self.get::<serde_json::Value>(repo, &Self::repo_path(repo), &what).await?.is_some())
    }

    /// A file's text at a commit, or `None` when it does not exist there.
    /// The text of `path` at commit `sha`, `None` when there is no such file. Anything but a UTF-8 file
    /// of at most `max_bytes` (a folder, a link, a submodule, a larger file) is refused with the reason:
    /// it will not change by asking again.
    pub async fn file_at(
        &self,
        repo: &RepoName,
        path: &str,
        sha: &CommitSha,
        max_bytes: usize,
    ) -> Result<Option<String>, GithubError> {
        let what = format!("get {path} of {repo} at {}", sha.short());
        let path_enc: Vec<String> = path.split('/').map(enc).collect();
        let route = format!("{}/contents/{}?ref={}", Self::repo_path(repo), path_enc.join("/"), sha);
        let Some(answer) = self.get::<serde_json::Value>(repo, &route, &what).await? else { return Ok(None) };
        let unexpected = |message: String| GithubError::Unexpected { what: what.clone(), message };
        if answer.is_array() {
            return Err(unexpected(format!("{path} is a folder, not a file")));
        }
        let c: Contents = serde_json::from_value(answer)
            .map_err(|e| GithubError::Garbled { what: what.clone(), message: e.to_string() })?;
        if c.kind.as_deref() != Some("file") {
            return Err(unexpected(format!("{path} is a {}, not a file", c.kind.as_deref().unwrap_or("thing"))));
        }
        // GitHub leaves out the content of a file over 1 MB (`encoding: none`); the size is always there.
        if c.size.is_none_or(|size| size > max_bytes as u64) || c.encoding.as_deref() == Some("none") {
            let size = c.size.map_or_else(|| "of unknown size".to_owned(), |s| format!("{s} bytes"));
            return Err(unexpected(format!("{path} is {size}, over the {max_bytes} bytes it may hold")));
        }
        if c.encoding.as_deref() != Some("base64") {
            return Err(unexpected(format!("{path} comes in an unknown encoding")));
        }
        let raw: String = c.content.unwrap_or_default().chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = BASE64.decode(raw).map_err(|_| unexpected("content is not base64".into()))?;
        String::from_utf8(bytes).map(Some).map_err(|_| unexpected(format!("{path} is not UTF-8")))
    }

    /// Every branch of the repository, or an error: a partial listing is never returned. Pages are
    /// followed through the `Link` header's `rel="next"`, as GitHub asks clients to; a full page without
    /// one, an answer that is not a JSON list, or any failing page fails the whole listing. Unchanged pages
    /// are answered 304 against their ETag (free of GitHub's rate limit) and taken from the cache.
    pub async fn list_branches(&self, repo: &RepoName) -> Result<BranchListing, GithubError> {
        let what = format!("list branches of {repo}");
        let garbled = |message: String| GithubError::Garbled { what: what.clone(), message };
        let mut branches = Vec::new();
        let first = format!("{}/branches?per_page={PAGE_SIZE}", Self::repo_path(repo));
        let mut route = first.clone();
        // A full last page carries no next link (a repository of exactly 100 branches): then the page
        // after it is asked for by number, and must be empty for the listing to be complete.
        let mut probing = false;
        for number in 1..=MAX_PAGES {
            let page = self.fetch(repo, &route, &what, true).await?.ok_or_else(|| GithubError::Status {
                what: what.clone(),
                status: 404,
                message: "repository not found".into(),
            })?;
            let batch: Vec<Branch> =
                serde_json::from_slice(&page.body).map_err(|e| garbled(format!("not a branch list: {e}")))?;
            if probing {
                return match batch.is_empty() {
                    true => Ok(BranchListing { branches }),
                    false => Err(garbled("a full page without a link to the next, though more exist".into())),
                };
            }
            if batch.is_empty() && page.next.is_some() {
                return Err(garbled("an empty page before the last: the listing may be incomplete".into()));
            }
            let full = batch.len() >= PAGE_SIZE;
            for b in batch {
                let unexpected = |e: previewd_domain::NameError| garbled(e.to_string());
                branches.push((
                    BranchName::new(&b.name).map_err(unexpected)?,
                    CommitSha::new(&b.commit.sha).map_err(unexpected)?,
                ));
            }
            match page.next {
                Some(next) => route = next,
                None if full => {
                    probing = true;
                    route = format!("{first}&page={}", number + 1);
                }
                None => return Ok(BranchListing { branches }),
            }
        }
        Err(GithubError::Unexpected { what, message: format!("more than {} branches", MAX_PAGES * PAGE_SIZE) })
    }

    /// GET `route` of `repo` and parse its JSON; `Ok(None)` on 404, an error on any other non-success.
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        repo: &RepoName,
        route: &str,
        what: &str,
    ) -> Result<Option<T>, GithubError> {
        let Some(page) = self.fetch(repo, route, what, false).await? else { return Ok(None) };
        serde_json::from_slice(&page.body)
            .map(Some)
            .map_err(|e| GithubError::Garbled { what: what.to_owned(), message: e.to_string() })
    }

    /// GET `route` (a path, or an absolute URL from a `Link` header) of `repo`: its body and the next
    /// page's URL; `Ok(None)` on 404. With `conditional`, the answer is cached by ETag and asked for with
    /// `If-None-Match`. A body that is not JSON (an HTML error page from a proxy) is an error, whatever the
    /// status said.
    pub(crate) async fn fetch(
        &self,
        repo: &RepoName,
        route: &str,
        what: &str,
        conditional: bool,
    ) -> Result<Option<Page>, GithubError> {
        let cached =
            if conditional { self.etags.lock().unwrap_or_else(|p| p.into_inner()).get(route).cloned() } else { None };
        let mut headers = http::HeaderMap::new();
        if let Some(c) = &cached
            && let Ok(v) = http::HeaderValue::from_str(&c.etag)
        {
            headers.insert(http::header::IF_NONE_MATCH, v);
        }
        let answer = self.request(http::Method::GET, route, Some(repo), headers, None, what).await?;
        let header =
            |name: http::header::HeaderName| answer.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let next = header(http::header::LINK).and_then(|l| next_link(&l));
        if answer.status == http::StatusCode::NOT_MODIFIED
            && let Some(c) = cached
        {
            return Ok(Some(Page { body: c.body, next: c.next }));
        }
        let Some(body) = self.judge(answer.status, &answer.headers, answer.body, what)? else { return Ok(None) };
        let body = bytes::Bytes::from(body);
        if conditional && let Some(etag) = header(http::header::ETAG) {
            let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
            if etags.len() >= ETAG_CACHE_MAX {
                etags.clear();
            }
            etags.insert(route.to_owned(), Cached { etag, body: body.clone(), next: next.clone() });
        }
        Ok(Some(Page { body, next }))
    }

    /// The body of a successful answer; `Ok(None)` for GitHub's own 404; an error for anything else: a
    /// rate limit (with when to try again), another status, or a body that is not JSON.
    pub(crate) fn judge(
        &self,
        status: http::StatusCode,
        headers: &http::HeaderMap,
        body: String,
        what: &str,
    ) -> Result<Option<String>, GithubError> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let content_type = header("content-type");
        let json = content_type.is_none_or(|t| t.contains("json"));
        // An HTML page (a proxy's, a captive portal's) is no answer from GitHub, whatever its status:
        // a 404 in HTML proves nothing about a branch.
        if !json {
            return Err(GithubError::Garbled {
                what: what.to_owned(),
                message: format!("HTTP {} answered with a body that is not JSON", status.as_u16()),
            });
        }
        if let Some(wait) = rate_limited(status, headers) {
            return Err(GithubError::RateLimited { what: what.to_owned(), retry_after: wait });
        }
        if status == http::StatusCode::MOVED_PERMANENTLY {
            // A renamed or transferred repository: what previewd knows by the old name proves nothing
            // about the new one, and following it would act on a repository nobody configured.
            let location = header("location").unwrap_or("");
            return Err(GithubError::Unexpected {
                what: what.to_owned(),
                message: format!(
                    "HTTP 301: the repository moved (renamed or transferred; Location: {}): update [repos] in \
                     the configuration; nothing is changed meanwhile",
                    previewd_domain::text::quote(location)
                ),
            });
        }
        if status == http::StatusCode::NOT_FOUND {
            // GitHub's own 404: JSON with a message. Anything else (a bare 404 from something in between)
            // says nothing about the branch.
            let genuine = content_type.is_some()
                && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v.get("message").is_some());
            if !genuine {
                return Err(GithubError::Garbled {
                    what: what.to_owned(),
                    message: "HTTP 404 that is not GitHub's JSON error".into(),
                });
            }
            return Ok(None);
        }
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_owned());
            return Err(GithubError::Status { what: what.to_owned(), status: status.as_u16(), message });
        }
        Ok(Some(body))
    }

    /// Sends one request to `route` (a path under the API, or an absolute URL) with previewd's
    /// credentials for `repo`, bounded by the timeout, and reads the whole answer.
    pub(crate) async fn request(
        &self,
        method: http::Method,
        route: &str,
        repo: Option<&RepoName>,
        headers: http::HeaderMap,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Answer, GithubError> {
        let authorization = self.authorization(repo, what).await?;
        let answer = self.send(method, route, authorization.as_ref(), headers, body, what).await?;
        // Each credential has a quota of its own; the gauge appears once GitHub has said something.
        if let Some(n) = answer.headers.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        {
            let credential = match (self.auth.as_ref(), repo) {
                (Auth::None, _) => "anonymous".to_owned(),
                (Auth::Token(_), _) => "token".to_owned(),
                (Auth::App(_), None) => "app".to_owned(),
                (Auth::App(app), Some(repo)) => app
                    .installations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(repo.as_str())
                    .map_or_else(|| "app".to_owned(), u64::to_string),
            };
            let label = previewd_metrics::CredentialLabel { credential };
            previewd_metrics::METRICS.github_rate_limit_remaining.get_or_create(&label).set(n);
        }
        Ok(answer)
    }

    async fn send(
        &self,
        method: http::Method,
        route: &str,
        authorization: Option<&Secret>,
        headers: http::HeaderMap,
        body: Option<&serde_json::Value>,
        what: &str,
    ) -> Result<Answer, GithubError> {
        let err = |message: String| GithubError::Transport { what: what.to_owned(), message };
        let uri = if route.starts_with("http://") || route.starts_with("https://") {
            // An absolute URL comes from an answer's `Link` header: credentials go only to the API.
            if !under(&self.base, route) {
                return Err(GithubError::Unexpected {
                    what: what.to_owned(),
                    message: format!(
                        "a link to {} is outside the configured API {}: not followed",
                        route.chars().take(200).collect::<String>(),
                        self.base
                    ),
                });
            }
            route.to_owned()
        } else {
            format!("{}{}", self.base.trim_end_matches('/'), route)
        };
        let method_name = method.clone();
        let mut builder = http::Request::builder().method(method).uri(uri.as_str());
        for (k, v) in &headers {
            builder = builder.header(k, v);
        }
        if let Some(secret) = authorization {
            let mut v = http::HeaderValue::from_str(&format!("Bearer {}", secret.expose()))
                .map_err(|_| err("the credentials are not a valid header value".into()))?;
            v.set_sensitive(true);
            builder = builder.header(http::header::AUTHORIZATION, v);
        }
        let request = self.client.build_request(builder, body).map_err(|e| err(e.to_string()))?;
        let op = operation(&method_name, route);
        let count = |outcome: &str| {
            let labels = previewd_metrics::GithubLabels { operation: op.to_owned(), outcome: outcome.to_owned() };
            previewd_metrics::METRICS.github_requests.get_or_create(&labels).inc();
        };
        // One bound for the call and the reading of its answer.
        let call = async {
            let response = self.client.execute(request).await?;
            let (status, headers) = (response.status(), response.headers().clone());
            Ok::<_, octocrab::Error>((status, headers, self.client.body_to_string(response).await?))
        };
        let (status, headers, body) = match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                count("no_response");
                return Err(err(format!("no answer in {:?}", self.timeout)));
            }
            Ok(Err(e)) => {
                count("no_response");
                return Err(err(e.to_string()));
            }
            Ok(Ok(answer)) => answer,
        };
        count(match status.as_u16() {
            304 => "not_modified",
            404 => "not_found",
            403 | 429 if rate_limited(status, &headers).is_some() => "throttled",
            s if s < 400 => "ok",
            s if s < 500 => "client_error",
            _ => "server_error",
        });
        Ok(Answer { status, headers, body })
    }

    /// The credentials for a request about `repo`: the token, or the App installation's token (renewed
    /// before it expires).
    async fn authorization(&self, repo: Option<&RepoName>, what: &str) -> Result<Option<Secret>, GithubError> {
        let app = match self.auth.as_ref() {
            Auth::None => return Ok(None),
            Auth::Token(t) => return Ok(Some(t.clone())),
            Auth::App(app) => app,
        };
        let jwt = |app: &AppAuth| {
            app.jwt().map_err(|e| GithubError::Unexpected { what: what.to_owned(), message: e.to_string() })
        };
        let Some(repo) = repo else { return jwt(app).map(Some) };
        let cached = app.installations.lock().unwrap_or_else(|p| p.into_inner()).get(repo.as_str()).copied();
        let installation = match cached {
            Some(id) => id,
            None => {
                let what = format!("find the GitHub App installation for {repo}");
                let route = format!("{}/installation", Self::repo_path(repo));
                let answer =
                    self.send(http::Method::GET, &route, Some(&jwt(app)?), http::HeaderMap::new(), None, &what).await?;
                let body = self.judge(answer.status, &answer.headers, answer.body, &what)?.ok_or_else(|| {
                    GithubError::Status {
                        what: what.clone(),
                        status: 404,
                        message: "the App is not installed on this repository".into(),
                    }
                })?;
                #[derive(Deserialize)]
                struct Installation {
                    id: u64,
                }
                let id = serde_json::from_str::<Installation>(&body)
                    .map_err(|e| GithubError::Garbled { what: what.clone(), message: e.to_string() })?
                    .id;
                app.installations.lock().unwrap_or_else(|p| p.into_inner()).insert(repo.as_str().to_owned(), id);
                id
            }
        };
        let mut tokens = app.tokens.lock().await;
        if let Some((token, expires)) = tokens.get(&installation)
            && std::time::SystemTime::now() + app.margin < *expires
        {
            return Ok(Some(token.clone()));
        }
        let what = format!("get an installation token for {repo}");
        let route = format!("/app/installations/{installation}/access_tokens");
        let answer =
            self.send(http::Method::POST, &route, Some(&jwt(app)?), http::HeaderMap::new(), None, &what).await?;
        let body = self.judge(answer.status, &answer.headers, answer.body, &what)?.ok_or_else(|| {
            // The App was uninstalled since: look the installation up again next time.
            app.installations.lock().unwrap_or_else(|p| p.into_inner()).remove(repo.as_str());
            GithubError::Status { what: what.clone(), status: 404, message: "no such installation".into() }
        })?;
        let t: InstallationToken =
            serde_json::from_str(&body).map_err(|e| GithubError::Garbled { what, message: e.to_string() })?;
        let token = Secret::new(t.token);
        tokens.insert(installation, (token.clone(), expiry(&t.expires_at)));
        tracing::debug!(installation, "GitHub App installation token renewed");
        Ok(Some(token))
    }
}

/// One answer: its body, and the next page from its `Link` header.
pub(crate) struct Page {
    pub(crate) body: bytes::Bytes,
    pub(crate) next: Option<String>,
}

#[derive(Debug, Clone)]
struct Cached {
    etag: String,
    body: bytes::Bytes,
    next: Option<String>,
}
