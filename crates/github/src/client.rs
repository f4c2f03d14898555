//! The GitHub API as previewd uses it, through octocrab with a configurable base URL (GitHub Enterprise:
//! `https://HOST/api/v3`). Every call is bounded by a timeout; retrying is the reconciler's job (it
//! requeues with backoff), so a slow GitHub never blocks a worker for long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use octocrab::Octocrab;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use previewd_domain::{BranchName, CommitSha, RepoName, Secret};
use serde::Deserialize;

/// GitHub answers in well under a second; past this something is wrong and the reconciler should retry.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// GitHub's largest page.
const PAGE_SIZE: usize = 100;
/// A repository with more branches than this is not listed (the reaper then deletes nothing).
const MAX_PAGES: usize = 200;
/// Listing pages remembered with their ETag; past this the cache starts afresh.
const ETAG_CACHE_MAX: usize = 4_096;

/// Path segments are encoded whole: a branch may hold `/`, `#`, `?`, `%` and anything else git allows.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub API {what}: HTTP {status}: {message}")]
    Status { what: String, status: u16, message: String },
    #[error("GitHub API {what}: {message}")]
    Transport { what: String, message: String },
    /// An answer that will not change by asking again (a settings "file" that is a folder, say).
    #[error("GitHub API {what}: unexpected answer: {message}")]
    Unexpected { what: String, message: String },
    /// An answer that is no answer (an HTML page from a proxy, a listing that does not add up): proves
    /// nothing, and may well be right next time.
    #[error("GitHub API {what}: garbled answer: {message}")]
    Garbled { what: String, message: String },
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
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

impl GitHub {
    /// `api_url`: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise Server.
    pub fn new(api_url: &str, token: Option<&Secret>) -> Result<Self, GithubError> {
        Self::with_timeout(api_url, token, CALL_TIMEOUT)
    }

    /// As [`GitHub::new`], with another bound on each call.
    pub fn with_timeout(api_url: &str, token: Option<&Secret>, timeout: Duration) -> Result<Self, GithubError> {
        let setup = |e: octocrab::Error| GithubError::Transport { what: "set-up".into(), message: e.to_string() };
        let mut builder = Octocrab::builder()
            .base_uri(api_url)
            .map_err(setup)?
            .set_connect_timeout(Some(timeout))
            .set_read_timeout(Some(timeout))
            .set_write_timeout(Some(timeout));
        if let Some(token) = token {
            builder = builder.personal_token(token.expose().to_owned());
        }
        Ok(Self {
            client: builder.build().map_err(setup)?,
            base: api_url.to_owned(),
            etags: Arc::new(Mutex::new(HashMap::new())),
            timeout,
        })
    }

    fn repo_path(repo: &RepoName) -> String {
        format!("/repos/{}/{}", enc(repo.owner()), enc(repo.name()))
    }

    /// The branch's head commit, or `None` when GitHub answers 404: the truth about a branch.
    pub async fn branch_head(&self, repo: &RepoName, branch: &BranchName) -> Result<Option<CommitSha>, GithubError> {
        let what = format!("get branch {repo}:{branch}");
        let route = format!("{}/branches/{}", Self::repo_path(repo), enc(branch.as_str()));
        match self.get::<Branch>(&route, &what).await? {
            None => Ok(None),
            Some(b) => CommitSha::new(&b.commit.sha)
                .map(Some)
                .map_err(|e| GithubError::Garbled { what, message: e.to_string() }),
        }
    }

    /// Does GitHub show the repository to this token? (A branch 404 proves absence only if it does.)
    pub async fn repo_visible(&self, repo: &RepoName) -> Result<bool, GithubError> {
        let what = format!("get repository {repo}");
        Ok(self.get::<serde_json::Value>(&Self::repo_path(repo), &what).await?.is_some())
    }

    /// A file's text at a commit, or `None` when it does not exist there.
    pub async fn file_at(&self, repo: &RepoName, path: &str, sha: &CommitSha) -> Result<Option<String>, GithubError> {
        let what = format!("get {path} of {repo} at {}", sha.short());
        let path_enc: Vec<String> = path.split('/').map(enc).collect();
        let route = format!("{}/contents/{}?ref={}", Self::repo_path(repo), path_enc.join("/"), sha);
        let Some(c) = self.get::<Contents>(&route, &what).await? else { return Ok(None) };
        let unexpected = |message: String| GithubError::Unexpected { what: what.clone(), message };
        if c.encoding.as_deref() != Some("base64") {
            return Err(unexpected(format!("{path} is not a file")));
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
            let page = self.fetch(&route, &what, true).await?.ok_or_else(|| GithubError::Status {
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

    /// GET `route` and parse its JSON; `Ok(None)` on 404, an error on any other non-success.
    async fn get<T: serde::de::DeserializeOwned>(&self, route: &str, what: &str) -> Result<Option<T>, GithubError> {
        let Some(page) = self.fetch(route, what, false).await? else { return Ok(None) };
        serde_json::from_slice(&page.body)
            .map(Some)
            .map_err(|e| GithubError::Garbled { what: what.to_owned(), message: e.to_string() })
    }

    /// GET `route` (a path, or an absolute URL from a `Link` header): its body and the next page's URL;
    /// `Ok(None)` on 404. With `conditional`, the answer is cached by ETag and asked for with
    /// `If-None-Match`. A body that is not JSON (an HTML error page from a proxy) is an error, whatever the
    /// status said.
    async fn fetch(&self, route: &str, what: &str, conditional: bool) -> Result<Option<Page>, GithubError> {
        let err = |message: String| GithubError::Transport { what: what.to_owned(), message };
        let cached =
            if conditional { self.etags.lock().unwrap_or_else(|p| p.into_inner()).get(route).cloned() } else { None };
        let mut headers = http::HeaderMap::new();
        if let Some(c) = &cached
            && let Ok(v) = http::HeaderValue::from_str(&c.etag)
        {
            headers.insert(http::header::IF_NONE_MATCH, v);
        }
        let uri = if route.starts_with("http://") || route.starts_with("https://") {
            route.to_owned()
        } else {
            format!("{}{}", self.base.trim_end_matches('/'), route)
        };
        let response = match tokio::time::timeout(
            self.timeout,
            self.client._get_with_headers(uri.as_str(), Some(headers)),
        )
        .await
        {
            Err(_) => return Err(err(format!("no answer in {:?}", self.timeout))),
            Ok(Err(e)) => return Err(err(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let header = |name: http::header::HeaderName| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let etag = header(http::header::ETAG);
        let next = header(http::header::LINK).and_then(|l| next_link(&l));
        let content_type = header(http::header::CONTENT_TYPE);
        let json = content_type.as_deref().is_none_or(|t| t.contains("json"));
        if status == http::StatusCode::NOT_MODIFIED
            && let Some(c) = cached
        {
            return Ok(Some(Page { body: c.body, next: c.next }));
        }
        let body = match tokio::time::timeout(self.timeout, self.client.body_to_string(response)).await {
            Err(_) => return Err(err(format!("no answer in {:?}", self.timeout))),
            Ok(Err(e)) => return Err(err(e.to_string())),
            Ok(Ok(b)) => b,
        };
        // An HTML page (a proxy's, a captive portal's) is no answer from GitHub, whatever its status:
        // a 404 in HTML proves nothing about a branch.
        if !json {
            return Err(GithubError::Garbled {
                what: what.to_owned(),
                message: format!("HTTP {} answered with a body that is not JSON", status.as_u16()),
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
        let body = bytes::Bytes::from(body);
        if conditional && let Some(etag) = etag {
            let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
            if etags.len() >= ETAG_CACHE_MAX {
                etags.clear();
            }
            etags.insert(route.to_owned(), Cached { etag, body: body.clone(), next: next.clone() });
        }
        Ok(Some(Page { body, next }))
    }
}

/// One answer: its body, and the next page from its `Link` header.
struct Page {
    body: bytes::Bytes,
    next: Option<String>,
}

#[derive(Debug, Clone)]
struct Cached {
    etag: String,
    body: bytes::Bytes,
    next: Option<String>,
}

/// The `rel="next"` URL of a `Link` header: `<https://…?page=2>; rel="next", <…>; rel="last"`.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_branch_names_stay_one_path_segment() {
        assert_eq!(enc("feat/x#y?z%20"), "feat%2Fx%23y%3Fz%2520");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let h = r#"<https://api.github.com/repositories/1/branches?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/branches?per_page=100&page=5>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("https://api.github.com/repositories/1/branches?per_page=100&page=2"));
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev", <https://x/?page=1>; rel="first""#), None);
    }
}
