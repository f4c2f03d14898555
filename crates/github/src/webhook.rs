//! Webhook intake: the signature is checked on the raw bytes, in constant time, before any JSON is read;
//! then GitHub's payload becomes a private serde struct, then an owned [`WebhookEvent`].
//!
//! Payloads are parsed leniently where GitHub is (optional and null fields, GitHub Enterprise extras),
//! strictly where previewd relies on a field (the repository, the ref, the commit).

use hmac::{Hmac, Mac};
use previewd_domain::text::quote;
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
    /// A check run, check suite or workflow run concluded on commit `sha`, or a status other than
    /// `pending` was set on it: environments waiting for that commit's checks should look again.
    CommitChecked {
        repo: RepoName,
        display: String,
        sha: CommitSha,
        /// What concluded, for logs and events ("check run build completed: failure"); names quoted safe.
        what: String,
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
            | WebhookEvent::PullRequestOpened { repo, .. }
            | WebhookEvent::CommitChecked { repo, .. } => Some(repo),
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

/// `check_run`, `check_suite` and `workflow_run` share this shape: the object the event is named after,
/// read leniently (only its commit is relied on; names may be missing or empty).
#[derive(Deserialize)]
struct CheckPayload {
    action: String,
    #[serde(default)]
    check_run: Option<CheckSubject>,
    #[serde(default)]
    check_suite: Option<CheckSubject>,
    #[serde(default)]
    workflow_run: Option<CheckSubject>,
    /// The workflow a `workflow_run` belongs to.
    #[serde(default)]
    workflow: Option<Named>,
    repository: Repository,
}

/// A check run, check suite or workflow run: its commit, name (a suite is named by its app) and
/// conclusion.
#[derive(Deserialize)]
struct CheckSubject {
    head_sha: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    app: Option<Named>,
    #[serde(default)]
    conclusion: Option<String>,
}

#[derive(Deserialize)]
struct Named {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct StatusPayload {
    sha: String,
    state: String,
    #[serde(default)]
    context: Option<String>,
    repository: Repository,
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
        "check_run" | "check_suite" | "workflow_run" => check_concluded(event, body),
        "status" => status_set(body),
        other => Ok(WebhookEvent::Ignored { reason: format!("event {} is not handled", clip(other)) }),
    }
}

/// A `check_run`, `check_suite` or `workflow_run` event: it counts once `completed`.
fn check_concluded(event: &str, body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let p: CheckPayload =
        serde_json::from_slice(body).map_err(|source| ParseError::Json { event: event.to_owned(), source })?;
    let kind = event.replace('_', " ");
    if p.action != "completed" {
        return Ok(WebhookEvent::Ignored { reason: format!("{kind} {}", clip(&quote(&p.action))) });
    }
    let subject = match event {
        "check_run" => p.check_run,
        "check_suite" => p.check_suite,
        _ => p.workflow_run,
    };
    let Some(subject) = subject else {
        return Err(ParseError::Invalid { event: event.to_owned(), reason: format!("no {event} object") });
    };
    // A workflow run's own name may be empty; its workflow's is not. A suite is named by its app.
    let workflow = p.workflow.as_ref().and_then(|w| w.name.as_deref());
    let app = subject.app.as_ref().and_then(|a| a.name.as_deref());
    let name = [subject.name.as_deref(), workflow, app].into_iter().flatten().find(|n| !n.is_empty());
    let name = name.map_or_else(|| "(unnamed)".to_owned(), quote);
    let conclusion = subject.conclusion.as_deref().map_or_else(|| "no conclusion".to_owned(), quote);
    let what = format!("{kind} {name} completed: {conclusion}");
    commit_checked(event, p.repository, &subject.head_sha, what)
}

/// A `status` event: it counts once the state is other than `pending`.
fn status_set(body: &[u8]) -> Result<WebhookEvent, ParseError> {
    let p: StatusPayload =
        serde_json::from_slice(body).map_err(|source| ParseError::Json { event: "status".into(), source })?;
    if p.state == "pending" {
        return Ok(WebhookEvent::Ignored { reason: "status pending".into() });
    }
    let context = p.context.as_deref().filter(|c| !c.is_empty()).map_or_else(|| "(no context)".to_owned(), quote);
    let what = format!("status {context}: {}", quote(&p.state));
    commit_checked("status", p.repository, &p.sha, what)
}

fn commit_checked(event: &str, repository: Repository, sha: &str, what: String) -> Result<WebhookEvent, ParseError> {
    let invalid = |reason: String| ParseError::Invalid { event: event.to_owned(), reason };
    let repo = RepoName::new(&repository.full_name).map_err(|e| invalid(e.to_string()))?;
    let sha = CommitSha::new(sha).map_err(|e| invalid(e.to_string()))?;
    Ok(WebhookEvent::CommitChecked { repo, display: repository.full_name, sha, what })
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

    /// GitHub's example payloads (`@octokit/webhooks-examples`, kept in `tests/fixtures/github`).
    fn example(name: &str) -> serde_json::Value {
        let text = match name {
            "check_run" => include_str!("../../../tests/fixtures/github/check_run.json"),
            "check_run-created" => include_str!("../../../tests/fixtures/github/check_run-created.json"),
            "check_suite" => include_str!("../../../tests/fixtures/github/check_suite.json"),
            "workflow_run" => include_str!("../../../tests/fixtures/github/workflow_run.json"),
            "status" => include_str!("../../../tests/fixtures/github/status.json"),
            other => panic!("no example {other}"),
        };
        serde_json::from_str(text).expect("example JSON")
    }

    fn parse_example(event: &str, example: &serde_json::Value) -> WebhookEvent {
        parse_event(event, &serde_json::to_vec(example).expect("JSON")).expect("parses")
    }

    fn checked(display: &str, sha: &str, what: &str) -> WebhookEvent {
        WebhookEvent::CommitChecked {
            repo: RepoName::new(display).expect("repo"),
            display: display.into(),
            sha: CommitSha::new(sha).expect("sha"),
            what: what.into(),
        }
    }

    #[test]
    fn concluded_checks_and_statuses_name_their_commit() {
        let hello = "Codertocat/Hello-World";
        let cases = [
            (
                "check_run",
                checked(
                    hello,
                    "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                    "check run Octocoders-linter completed: failure",
                ),
            ),
            (
                "check_suite",
                checked(
                    hello,
                    "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                    "check suite octocoders-linter completed: success",
                ),
            ),
            (
                "workflow_run",
                checked(
                    "octo-org/octo-repo",
                    "3484a3fb816e0859fd6e1cea078d76385ff50625",
                    "workflow run test completed: success",
                ),
            ),
            ("status", checked(hello, "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "status default: success")),
        ];
        for (event, expected) in cases {
            let parsed = parse_example(event, &example(event));
            assert_eq!(parsed, expected, "{event}");
            assert_eq!(parsed.repo(), expected.repo(), "{event}");
        }
    }

    #[test]
    fn only_concluded_checks_count() {
        let created = parse_example("check_run", &example("check_run-created"));
        assert!(matches!(&created, WebhookEvent::Ignored { reason } if reason == "check run created"), "{created:?}");
        for event in ["check_suite", "workflow_run"] {
            let mut requested = example(event);
            requested["action"] = "requested".into();
            requested[event]["conclusion"] = serde_json::Value::Null;
            assert!(matches!(parse_example(event, &requested), WebhookEvent::Ignored { .. }), "{event}");
        }
        let mut pending = example("status");
        pending["state"] = "pending".into();
        assert!(matches!(parse_example("status", &pending), WebhookEvent::Ignored { .. }));
        for state in ["failure", "error"] {
            let mut failed = example("status");
            failed["state"] = state.into();
            let WebhookEvent::CommitChecked { what, .. } = parse_example("status", &failed) else { panic!("{state}") };
            assert_eq!(what, format!("status default: {state}"));
        }
    }

    #[test]
    fn hostile_check_names_are_quoted_and_bad_commits_refused() {
        let mut hostile = example("check_run");
        hostile["check_run"]["name"] = "build\u{1b}[2J\nforged: success".into();
        hostile["check_run"]["conclusion"] = "x".repeat(5_000).into();
        let WebhookEvent::CommitChecked { what, .. } = parse_example("check_run", &hostile) else { panic!() };
        assert!(!what.chars().any(previewd_domain::text::is_unsafe), "{what}");
        assert!(what.starts_with("check run build\\u{1b}[2J\\nforged: success completed: x"), "{what}");
        assert!(what.chars().count() < 500, "{what}");
        let mut unnamed = example("workflow_run");
        unnamed["workflow"] = serde_json::Value::Null;
        let WebhookEvent::CommitChecked { what, .. } = parse_example("workflow_run", &unnamed) else { panic!() };
        assert_eq!(what, "workflow run (unnamed) completed: success");
        let mut bad_sha = example("status");
        bad_sha["sha"] = "not-a-sha".into();
        let body = serde_json::to_vec(&bad_sha).expect("JSON");
        assert!(matches!(parse_event("status", &body), Err(ParseError::Invalid { .. })));
        let mut missing = example("check_suite");
        missing.as_object_mut().expect("object").remove("check_suite");
        let body = serde_json::to_vec(&missing).expect("JSON");
        assert!(matches!(parse_event("check_suite", &body), Err(ParseError::Invalid { .. })));
        assert!(matches!(parse_event("check_run", b"{}"), Err(ParseError::Json { .. })));
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
