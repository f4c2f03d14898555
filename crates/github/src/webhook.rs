//! Webhook intake: the signature is checked on the raw bytes, in constant time, before any JSON is read;
//! then GitHub's payload becomes a private serde struct, then an owned [`WebhookEvent`].
//!
//! Payloads are parsed leniently where GitHub is (optional and null fields, GitHub Enterprise extras),
//! strictly where previewd relies on a field (the repository, the ref, the commit).

use hmac::{Hmac, Mac};
use previewd_domain::{BranchName, CommitSha, RepoName, Secret};
use serde::Deserialize;
use sha2::Sha256;

/// GitHub sends webhook bodies of at most 25 MB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 does not match the body under any configured secret")]
    Mismatch,
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) against every configured secret (several during a
/// rotation). The comparison is constant-time (`Mac::verify_slice`).
pub fn verify_signature(secrets: &[Secret], header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let expected =
        header.strip_prefix("sha256=").and_then(|h| hex::decode(h.trim()).ok()).ok_or(SignatureError::Mismatch)?;
    // An empty key would let anyone sign: such a secret is never accepted.
    for secret in secrets.iter().filter(|s| !s.expose().is_empty()) {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) else { continue };
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// What a webhook means for previewd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    Ping,
    /// The branch exists; at `sha` when the event says (a `create` event does not).
    BranchPresent {
        repo: RepoName,
        /// The repository as GitHub spells it (`Codertocat/Hello-World`); `repo` compares case-blind.
        display: String,
        branch: BranchName,
        sha: Option<CommitSha>,
    },
    /// The branch is gone.
    BranchDeleted {
        repo: RepoName,
        display: String,
        branch: BranchName,
    },
    /// A pull request from the branch was opened (or reopened): it should get previewd's comment.
    PullRequestOpened {
        repo: RepoName,
        branch: BranchName,
    },
    /// Acknowledged and otherwise ignored: tags, other events.
    Ignored {
        reason: String,
    },
}

impl WebhookEvent {
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            WebhookEvent::BranchPresent { repo, .. }
            | WebhookEvent::BranchDeleted { repo, .. }
            | WebhookEvent::PullRequestOpened { repo, .. } => Some(repo),
            _ => None,
        }
    }
}

/// Why a body that passed the signature check is still refused (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("malformed {event} payload: {source}")]
    Json {
        event: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid {event} payload: {reason}")]
    Invalid { event: String, reason: String },
}

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: Repository,
}

/// `create` and `delete` share this shape; `ref` is the short name there.
#[derive(Deserialize)]
struct RefPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    ref_type: String,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    pull_request: PullRequest,
    repository: Repository,
}

#[derive(Deserialize)]
struct PullRequest {
    head: Head,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    git_ref: String,
    /// `null` when the fork it came from was deleted.
    repo: Option<Repository>,
}

/// Parses a verified body for the `X-GitHub-Event` name `event`.
pub fn parse_event(event: &str, body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let json_err = |source| ParseError::Json { event: event.to_owned(), source };
    let invalid = |reason: String| ParseError::Invalid { event: event.to_owned(), reason };
    let repo = |r: &Repository| RepoName::new(&r.full_name).map_err(|e| invalid(e.to_string()));
    let branch = |b: &str| BranchName::new(b).map_err(|e| invalid(e.to_string()));
    match event {
        "ping" => {
            // Any JSON object will do; a ping is an acknowledgement only.
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).map_err(json_err)?;
            Ok(WebhookEvent::Ping)
        }
        "push" => {
            let p: PushPayload = serde_json::from_slice(body).map_err(json_err)?;
            let Some(name) = p.git_ref.strip_prefix("refs/heads/") else {
                return Ok(WebhookEvent::Ignored { reason: format!("push to {} is not a branch", clip(&p.git_ref)) });
            };
            let (repo, branch) = (repo(&p.repository)?, branch(name)?);
            let display = p.repository.full_name;
            let after = CommitSha::new(&p.after).map_err(|e| invalid(e.to_string()))?;
            if p.deleted || after.is_zero() {
                Ok(WebhookEvent::BranchDeleted { repo, display, branch })
            } else {
                Ok(WebhookEvent::BranchPresent { repo, display, branch, sha: Some(after) })
            }
        }
        "create" | "delete" => {
            let p: RefPayload = serde_json::from_slice(body).map_err(json_err)?;
            if p.ref_type != "branch" {
                return Ok(WebhookEvent::Ignored { reason: format!("{event} of a {}", clip(&p.ref_type)) });
            }
            let (repo, branch) = (repo(&p.repository)?, branch(&p.git_ref)?);
            let display = p.repository.full_name;
            Ok(if event == "create" {
                WebhookEvent::BranchPresent { repo, display, branch, sha: None }
            } else {
                WebhookEvent::BranchDeleted { repo, display, branch }
            })
        }
        "pull_request" => {
            let p: PullRequestPayload = serde_json::from_slice(body).map_err(json_err)?;
            if !matches!(p.action.as_str(), "opened" | "reopened") {
                return Ok(WebhookEvent::Ignored { reason: format!("pull request {}", clip(&p.action)) });
            }
            let repo = repo(&p.repository)?;
            // A fork's branch of the same name is not the branch previewd provisions.
            let same = p
                .pull_request
                .head
                .repo
                .as_ref()
                .is_some_and(|h| h.full_name.eq_ignore_ascii_case(&p.repository.full_name));
            if !same {
                return Ok(WebhookEvent::Ignored { reason: "pull request from a fork".into() });
            }
            Ok(WebhookEvent::PullRequestOpened { repo, branch: branch(&p.pull_request.head.git_ref)? })
        }
        other => Ok(WebhookEvent::Ignored { reason: format!("event {} is not handled", clip(other)) }),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_against_every_secret() {
        let secrets = [Secret::new("new"), Secret::new("old")];
        let body = br#"{"zen":"x"}"#;
        assert_eq!(verify_signature(&secrets, Some(&sign("old", body)), body), Ok(()));
        assert_eq!(verify_signature(&secrets, Some(&sign("new", body)), body), Ok(()));
        assert_eq!(verify_signature(&secrets, Some(&sign("other", body)), body), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(&secrets, None, body), Err(SignatureError::Missing));
        assert_eq!(verify_signature(&secrets, Some("sha256=zz"), body), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(&secrets, Some(&sign("new", b"other body")), body), Err(SignatureError::Mismatch));
        // GitHub's own example from its documentation.
        let doc = [Secret::new("It's a Secret to Everybody")];
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify_signature(&doc, Some(sig), b"Hello, World!"), Ok(()));
        assert!(verify_signature(&[], Some(sig), b"Hello, World!").is_err());
        let empty = [Secret::new("")];
        assert!(verify_signature(&empty, Some(&sign("", b"x")), b"x").is_err(), "an empty secret signs nothing");
    }

    #[test]
    fn pushes_tags_and_deletions() {
        let push = |r: &str, after: &str, deleted: bool| {
            format!(
                r#"{{"ref":"{r}","before":"{z}","after":"{after}","deleted":{deleted},"base_ref":null,"head_commit":null,"repository":{{"full_name":"Acme/Shop"}}}}"#,
                z = "0".repeat(40)
            )
        };
        let sha = "a".repeat(40);
        assert_eq!(
            parse_event("push", push("refs/heads/feature/x", &sha, false).as_bytes()).expect("parses"),
            WebhookEvent::BranchPresent {
                repo: RepoName::new("acme/shop").expect("repo"),
                display: "Acme/Shop".into(),
                branch: BranchName::new("feature/x").expect("branch"),
                sha: Some(CommitSha::new(&sha).expect("sha")),
            }
        );
        assert!(matches!(
            parse_event("push", push("refs/heads/x", &"0".repeat(40), true).as_bytes()).expect("parses"),
            WebhookEvent::BranchDeleted { .. }
        ));
        assert!(matches!(
            parse_event("push", push("refs/tags/v1", &sha, false).as_bytes()).expect("parses"),
            WebhookEvent::Ignored { .. }
        ));
        assert!(matches!(parse_event("issues", b"{}").expect("parses"), WebhookEvent::Ignored { .. }));
    }

    #[test]
    fn pull_requests_from_the_repository_itself() {
        let pr = |action: &str, head_repo: &str| {
            format!(
                r#"{{"action":"{action}","number":7,"pull_request":{{"head":{{"ref":"feature/x","repo":{head_repo}}}}},"repository":{{"full_name":"Acme/Shop"}}}}"#
            )
        };
        assert_eq!(
            parse_event("pull_request", pr("opened", r#"{"full_name":"acme/shop"}"#).as_bytes()).expect("parses"),
            WebhookEvent::PullRequestOpened {
                repo: RepoName::new("acme/shop").expect("repo"),
                branch: BranchName::new("feature/x").expect("branch"),
            }
        );
        for (action, head) in [
            ("opened", r#"{"full_name":"someone/shop"}"#),
            ("opened", "null"),
            ("closed", r#"{"full_name":"acme/shop"}"#),
        ] {
            let parsed = parse_event("pull_request", pr(action, head).as_bytes()).expect("parses");
            assert!(matches!(parsed, WebhookEvent::Ignored { .. }), "{action} {head}: {parsed:?}");
        }
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(matches!(parse_event("push", b"{not json"), Err(ParseError::Json { .. })));
        assert!(matches!(parse_event("push", br#"{"ref":"refs/heads/x"}"#), Err(ParseError::Json { .. })));
        let bad_branch =
            format!(r#"{{"ref":"refs/heads/a..b","after":"{}","repository":{{"full_name":"a/b"}}}}"#, "a".repeat(40));
        assert!(matches!(parse_event("push", bad_branch.as_bytes()), Err(ParseError::Invalid { .. })));
        assert!(matches!(parse_event("ping", b"[]"), Err(ParseError::Json { .. })));
    }
}
