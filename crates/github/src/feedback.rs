//! What previewd tells GitHub: deployments with their statuses (GitHub's "View deployment" button and the
//! environment's history), and one comment on each open pull request of the branch, edited in place.

pub use previewd_domain::DeploymentState;
use previewd_domain::{BranchName, CommitSha, RepoName};
use serde::Deserialize;
use serde_json::json;

use crate::client::{GitHub, GithubError, Identity, enc};

/// A deployment status's description: GitHub takes at most 140 characters.
pub const DESCRIPTION_MAX: usize = 140;
/// Pages of comments read while looking for previewd's own on a pull request.
const COMMENT_PAGES_MAX: usize = 30;

/// A status to post on a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentStatus {
    pub state: DeploymentState,
    /// The environment's address (`success`).
    pub environment_url: Option<String>,
    /// The environment's page on the dashboard.
    pub log_url: Option<String>,
    pub description: String,
}

#[derive(Deserialize)]
struct Id {
    id: u64,
}

#[derive(Deserialize)]
struct Deployment {
    id: u64,
    sha: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    user: Option<Login>,
}

/// An open pull request of a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenPull {
    pub number: u64,
    /// Who opened it (`None`: a deleted account, "ghost").
    pub author: Option<String>,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<Login>,
    #[serde(default)]
    performed_via_github_app: Option<AppRef>,
}

#[derive(Deserialize)]
struct Login {
    login: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct AppRef {
    id: u64,
}

impl Comment {
    /// Written by `me`? A comment anyone can write; only the author (or an admin) can edit it, and a
    /// marker in it proves nothing.
    fn by(&self, me: &Identity) -> bool {
        match me {
            Identity::Nobody => false,
            Identity::User(login) => self.user.as_ref().is_some_and(|u| u.login.eq_ignore_ascii_case(login)),
            // The App's bot: a person acting through the App (a user-to-server token) is not previewd.
            Identity::App(id) => {
                self.performed_via_github_app.as_ref().is_some_and(|a| a.id == *id)
                    && self.user.as_ref().is_some_and(|u| u.kind.as_deref() == Some("Bot"))
            }
        }
    }
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

impl GitHub {
    async fn write(
        &self,
        method: http::Method,
        repo: &RepoName,
        route: &str,
        body: &serde_json::Value,
        what: &str,
    ) -> Result<Option<String>, GithubError> {
        let answer = self.request(method, route, Some(repo), http::HeaderMap::new(), Some(body), what).await?;
        self.judge(answer.status, &answer.headers, answer.body, what)
    }

    fn parse<T: serde::de::DeserializeOwned>(body: Option<String>, what: &str) -> Result<T, GithubError> {
        let body = body.ok_or_else(|| GithubError::Status {
            what: what.to_owned(),
            status: 404,
            message: "not found".into(),
        })?;
        serde_json::from_str(&body).map_err(|e| GithubError::Garbled { what: what.to_owned(), message: e.to_string() })
    }

    /// The newest deployment of `sha` to `environment`, if previewd (or anyone) created one: a deployment
    /// whose creation answer was lost is found again rather than created twice.
    pub async fn find_deployment(
        &self,
        repo: &RepoName,
        sha: &CommitSha,
        environment: &str,
    ) -> Result<Option<u64>, GithubError> {
        let what = format!("list deployments of {repo} at {}", sha.short());
        let route =
            format!("{}/deployments?sha={sha}&environment={}&per_page=1", Self::repo_path(repo), enc(environment));
        let found: Option<Vec<Deployment>> = self.get(repo, &route, &what).await?;
        // Trusted only for the commit asked about (a filter a proxy or an old server dropped is not).
        Ok(found.unwrap_or_default().into_iter().find(|d| d.sha == sha.as_str()).map(|d| d.id))
    }

    /// Creates a deployment of `sha` to `environment`: transient, not production, no merging, no required
    /// status checks (the environment exists already; GitHub is only told).
    pub async fn create_deployment(
        &self,
        repo: &RepoName,
        sha: &CommitSha,
        environment: &str,
        description: &str,
    ) -> Result<u64, GithubError> {
        let what = format!("create a deployment of {repo} at {}", sha.short());
        let body = json!({
            "ref": sha.as_str(),
            "environment": environment,
            "transient_environment": true,
            "production_environment": false,
            "auto_merge": false,
            "required_contexts": [],
            "description": truncate(description, DESCRIPTION_MAX),
        });
        let route = format!("{}/deployments", Self::repo_path(repo));
        let answer = self.write(http::Method::POST, repo, &route, &body, &what).await?;
        Ok(Self::parse::<Id>(answer, &what)?.id)
    }

    pub async fn create_deployment_status(
        &self,
        repo: &RepoName,
        deployment: u64,
        status: &DeploymentStatus,
    ) -> Result<(), GithubError> {
        let what = format!("post {} on deployment {deployment} of {repo}", status.state.as_str());
        let mut body = json!({
            "state": status.state.as_str(),
            "description": truncate(&status.description, DESCRIPTION_MAX),
        });
        if let Some(url) = &status.environment_url {
            body["environment_url"] = json!(url);
        }
        if let Some(url) = &status.log_url {
            body["log_url"] = json!(url);
        }
        let route = format!("{}/deployments/{deployment}/statuses", Self::repo_path(repo));
        let answer = self.write(http::Method::POST, repo, &route, &body, &what).await?;
        Self::parse::<Id>(answer, &what)?;
        Ok(())
    }

    /// The open pull requests whose head is `branch` of the repository itself (not a fork's namesake).
    pub async fn open_pulls(&self, repo: &RepoName, branch: &BranchName) -> Result<Vec<OpenPull>, GithubError> {
        let what = format!("list open pull requests of {repo} from {branch}");
        let head = format!("{}:{}", repo.owner(), branch.as_str());
        let route = format!("{}/pulls?state=open&head={}&per_page=100", Self::repo_path(repo), enc(&head));
        let pulls: Option<Vec<Pull>> = self.get(repo, &route, &what).await?;
        Ok(pulls
            .unwrap_or_default()
            .into_iter()
            .map(|p| OpenPull { number: p.number, author: p.user.map(|u| u.login) })
            .collect())
    }

    /// previewd's comment on the pull request: the first previewd wrote (see [`GitHub::identity`]) whose
    /// body carries `marker`. Another's comment carrying the marker is not adopted.
    pub async fn find_comment(&self, repo: &RepoName, number: u64, marker: &str) -> Result<Option<u64>, GithubError> {
        let me = self.identity().await?;
        let what = format!("list comments of {repo}#{number}");
        for page in 1..=COMMENT_PAGES_MAX {
            let route = format!("{}/issues/{number}/comments?per_page=100&page={page}", Self::repo_path(repo));
            let comments: Vec<Comment> = self.get(repo, &route, &what).await?.unwrap_or_default();
            if let Some(c) =
                comments.iter().find(|c| c.by(&me) && c.body.as_deref().is_some_and(|b| b.contains(marker)))
            {
                return Ok(Some(c.id));
            }
            if comments.len() < 100 {
                return Ok(None);
            }
        }
        Ok(None)
    }

    pub async fn create_comment(&self, repo: &RepoName, number: u64, body: &str) -> Result<u64, GithubError> {
        let what = format!("comment on {repo}#{number}");
        let route = format!("{}/issues/{number}/comments", Self::repo_path(repo));
        let answer = self.write(http::Method::POST, repo, &route, &json!({ "body": body }), &what).await?;
        Ok(Self::parse::<Id>(answer, &what)?.id)
    }

    /// Replaces a comment's text; `false` when the comment is gone (deleted by a person).
    pub async fn edit_comment(&self, repo: &RepoName, id: u64, body: &str) -> Result<bool, GithubError> {
        let what = format!("edit comment {id} of {repo}");
        let route = format!("{}/issues/comments/{id}", Self::repo_path(repo));
        let answer = self.write(http::Method::PATCH, repo, &route, &json!({ "body": body }), &what).await?;
        Ok(answer.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_fit_githubs_limit() {
        let long = "é".repeat(200);
        let cut = truncate(&long, DESCRIPTION_MAX);
        assert_eq!(cut.chars().count(), DESCRIPTION_MAX);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", DESCRIPTION_MAX), "short");
    }
}
