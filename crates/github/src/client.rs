//! The GitHub API as previewd uses it, through octocrab with a configurable base URL (GitHub Enterprise:
//! `https://HOST/api/v3`). Every call is bounded by a timeout; retrying is the reconciler's job (it
//! requeues with backoff), so a slow GitHub never blocks a worker for long.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use octocrab::Octocrab;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use previewd_domain::{BranchName, CommitSha, RepoName, Secret};
use serde::Deserialize;

/// GitHub answers in well under a second; past this something is wrong and the reconciler should retry.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// GitHub's largest page.
const PAGE_SIZE: usize = 100;
/// A repository with more branches than this is not listed (the reaper then deletes nothing).
const MAX_PAGES: usize = 200;

/// Path segments are encoded whole: a branch may hold `/`, `#`, `?`, `%` and anything else git allows.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub API {what}: HTTP {status}: {message}")]
    Status { what: String, status: u16, message: String },
    #[error("GitHub API {what}: {message}")]
    Transport { what: String, message: String },
    #[error("GitHub API {what}: unexpected answer: {message}")]
    Unexpected { what: String, message: String },
}

/// A complete listing of a repository's branches: every page answered 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchListing {
    pub branches: Vec<(BranchName, CommitSha)>,
}

#[derive(Debug, Clone)]
pub struct GitHub {
    client: Octocrab,
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
        let setup = |e: octocrab::Error| GithubError::Transport { what: "set-up".into(), message: e.to_string() };
        let mut builder = Octocrab::builder()
            .base_uri(api_url)
            .map_err(setup)?
            .set_connect_timeout(Some(CALL_TIMEOUT))
            .set_read_timeout(Some(CALL_TIMEOUT))
            .set_write_timeout(Some(CALL_TIMEOUT));
        if let Some(token) = token {
            builder = builder.personal_token(token.expose().to_owned());
        }
        Ok(Self { client: builder.build().map_err(setup)? })
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
                .map_err(|e| GithubError::Unexpected { what, message: e.to_string() }),
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

    /// Every branch of the repository, or an error: a partial listing is never returned.
    pub async fn list_branches(&self, repo: &RepoName) -> Result<BranchListing, GithubError> {
        let what = format!("list branches of {repo}");
        let mut branches = Vec::new();
        for page in 1..=MAX_PAGES {
            let route = format!("{}/branches?per_page={PAGE_SIZE}&page={page}", Self::repo_path(repo));
            let batch: Vec<Branch> = self.get(&route, &what).await?.ok_or_else(|| GithubError::Status {
                what: what.clone(),
                status: 404,
                message: "repository not found".into(),
            })?;
            let last = batch.len() < PAGE_SIZE;
            for b in batch {
                let unexpected = |e: previewd_domain::NameError| GithubError::Unexpected {
                    what: what.clone(),
                    message: e.to_string(),
                };
                branches.push((
                    BranchName::new(&b.name).map_err(unexpected)?,
                    CommitSha::new(&b.commit.sha).map_err(unexpected)?,
                ));
            }
            if last {
                return Ok(BranchListing { branches });
            }
        }
        Err(GithubError::Unexpected { what, message: format!("more than {} branches", MAX_PAGES * PAGE_SIZE) })
    }

    /// GET `route`; `Ok(None)` on 404, an error on any other non-success.
    async fn get<T: serde::de::DeserializeOwned>(&self, route: &str, what: &str) -> Result<Option<T>, GithubError> {
        let result = tokio_timeout(self.client.get::<serde_json::Value, _, ()>(route, None)).await;
        let value = match result {
            Err(()) => {
                return Err(GithubError::Transport {
                    what: what.to_owned(),
                    message: format!("no answer in {CALL_TIMEOUT:?}"),
                });
            }
            Ok(Ok(v)) => v,
            Ok(Err(octocrab::Error::GitHub { source, .. })) if source.status_code == http::StatusCode::NOT_FOUND => {
                return Ok(None);
            }
            Ok(Err(octocrab::Error::GitHub { source, .. })) => {
                return Err(GithubError::Status {
                    what: what.to_owned(),
                    status: source.status_code.as_u16(),
                    message: source.message.clone(),
                });
            }
            Ok(Err(e)) => return Err(GithubError::Transport { what: what.to_owned(), message: e.to_string() }),
        };
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| GithubError::Unexpected { what: what.to_owned(), message: e.to_string() })
    }
}

async fn tokio_timeout<F: std::future::Future>(f: F) -> Result<F::Output, ()> {
    tokio::time::timeout(CALL_TIMEOUT, f).await.map_err(|_| ())
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
}
