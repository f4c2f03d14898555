//! Webhook bodies, after the signature check: `parse_event` answers every body with an event or an error
//! naming the event, and every branch and repository in an event it returns is one the domain accepts.

use previewd_domain::text::is_unsafe;
use previewd_domain::{CommitSha, RepoName};
use previewd_github::{WebhookEvent, parse_event};

use crate::names::branch_holds;

/// The `X-GitHub-Event` names the first input byte picks from (modulo their number; the rest is the body).
/// In a corpus file, a leading `0` to `5` picks them in this order.
pub const EVENTS: [&str; 6] = ["push", "create", "delete", "ping", "pull_request", "issues"];

/// An `Ignored` reason quotes at most 100 characters of the payload: a hostile one cannot flood a log.
const REASON_CHARS_MAX: usize = 200;

/// A concluded check's phrase quotes two names of at most 200 characters each (and says how much it cut).
const WHAT_CHARS_MAX: usize = 600;

/// `parse_event` on the rest of the input, for the event its first byte picks.
pub fn webhook(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    let event = EVENTS[usize::from(pick) % EVENTS.len()];
    match parse_event(event, body) {
        Ok(parsed) => event_holds(event, &parsed),
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(event), "{event}: the error does not name the event: {message}");
            assert_ne!(event, "issues", "an unhandled event was refused instead of ignored: {message}");
        }
    }
}

/// Each event comes only from the webhook that can produce it, and carries valid names.
fn event_holds(event: &str, parsed: &WebhookEvent) {
    match parsed {
        WebhookEvent::Ping => assert_eq!(event, "ping"),
        WebhookEvent::BranchPresent { repo, display, branch, sha } => {
            assert!(matches!(event, "push" | "create"), "{event} gave {parsed:?}");
            // A push says where the branch is; a create does not.
            assert_eq!(sha.is_some(), event == "push", "{event} gave {parsed:?}");
            assert!(!sha.as_ref().is_some_and(|s| s.is_zero()), "a present branch at the zero SHA: {parsed:?}");
            repo_holds(repo, display);
            branch_holds(branch);
        }
        WebhookEvent::BranchDeleted { repo, display, branch } => {
            assert!(matches!(event, "push" | "delete"), "{event} gave {parsed:?}");
            repo_holds(repo, display);
            branch_holds(branch);
        }
        WebhookEvent::PullRequestOpened { repo, branch } => {
            assert_eq!(event, "pull_request");
            assert_eq!(RepoName::new(repo.as_str()).as_ref(), Ok(repo), "repository {repo} is not read back");
            branch_holds(branch);
        }
        WebhookEvent::CommitChecked { repo, display, sha, what } => {
            assert!(
                matches!(event, "check_run" | "check_suite" | "workflow_run" | "status"),
                "{event} gave {parsed:?}"
            );
            repo_holds(repo, display);
            assert_eq!(CommitSha::new(sha.as_str()).as_ref(), Ok(sha), "commit {sha} is not read back");
            assert!(!what.chars().any(is_unsafe), "{event}: an unsafe character in {what:?}");
            let chars = what.chars().count();
            assert!(chars <= WHAT_CHARS_MAX, "{event}: a phrase of {chars} characters: {what}");
        }
        WebhookEvent::Ignored { reason } => {
            let chars = reason.chars().count();
            assert!(chars <= REASON_CHARS_MAX, "{event}: a reason of {chars} characters: {reason}");
        }
    }
    if event == "issues" {
        assert!(matches!(parsed, WebhookEvent::Ignored { .. }), "an unhandled event gave {parsed:?}");
    }
}

/// `display` is the repository as GitHub spells it; `repo` is the same name, lower-cased.
fn repo_holds(repo: &RepoName, display: &str) {
    assert_eq!(RepoName::new(display).as_ref(), Ok(repo), "{display:?} is not the repository {repo}");
    assert_eq!(display.to_ascii_lowercase(), repo.as_str(), "{display:?} is not the repository {repo}");
}
