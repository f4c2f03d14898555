//! Signed GitHub webhooks built from GitHub's documented payload shapes (`tests/fixtures/github/*.json`,
//! with their optional and null fields), with the ref, commits, checks and repository filled in.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::workspace_root;

/// `sha256=<hex>` of `body` under `secret`, as GitHub signs it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn fixture(name: &str) -> Value {
    let path = workspace_root().join("tests/fixtures/github").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .expect("fixture JSON")
}

fn set_repo(v: &mut Value, repo: &str) {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    v["repository"]["full_name"] = Value::from(repo);
    v["repository"]["name"] = Value::from(name);
    v["repository"]["owner"]["login"] = Value::from(owner);
}

/// A `push` of `sha` to `refs/heads/<branch>` (`sha` all zeros with `deleted: true` for a deletion).
pub fn push(repo: &str, branch: &str, before: &str, sha: &str) -> Value {
    let deleted = sha.bytes().all(|b| b == b'0');
    let mut v = fixture(if deleted { "push-delete" } else { "push" });
    set_repo(&mut v, repo);
    v["ref"] = Value::from(format!("refs/heads/{branch}"));
    v["before"] = Value::from(before);
    v["after"] = Value::from(sha);
    if !deleted {
        v["head_commit"]["id"] = Value::from(sha);
        v["commits"][0]["id"] = Value::from(sha);
    }
    v
}

/// A `push` of a tag.
pub fn push_tag(repo: &str, tag: &str, sha: &str) -> Value {
    let mut v = push(repo, "x", &"0".repeat(40), sha);
    v["ref"] = Value::from(format!("refs/tags/{tag}"));
    v
}

/// A `create` or `delete` event for a branch.
pub fn branch_event(event: &str, repo: &str, branch: &str) -> Value {
    let mut v = fixture(event);
    set_repo(&mut v, repo);
    v["ref"] = Value::from(branch);
    v
}

pub fn ping() -> Value {
    fixture("ping")
}

/// A `check_run` event: check run `name` on commit `sha` `completed` with `conclusion` (from GitHub's example
/// payload).
pub fn check_run(repo: &str, sha: &str, name: &str, conclusion: &str) -> Value {
    let mut v = fixture("check_run");
    set_repo(&mut v, repo);
    v["check_run"]["head_sha"] = Value::from(sha);
    v["check_run"]["check_suite"]["head_sha"] = Value::from(sha);
    v["check_run"]["name"] = Value::from(name);
    v["check_run"]["conclusion"] = Value::from(conclusion);
    v
}

/// A `workflow_run` event: a workflow run on commit `sha` `completed` with `conclusion` (from GitHub's
/// example payload), as CI's build ending says.
pub fn workflow_run(repo: &str, sha: &str, conclusion: &str) -> Value {
    let mut v = fixture("workflow_run");
    set_repo(&mut v, repo);
    v["workflow_run"]["head_sha"] = Value::from(sha);
    v["workflow_run"]["conclusion"] = Value::from(conclusion);
    v
}

/// A `status` event: commit status `context` of commit `sha` set to `state` (from GitHub's example payload).
pub fn status(repo: &str, sha: &str, context: &str, state: &str) -> Value {
    let mut v = fixture("status");
    set_repo(&mut v, repo);
    v["name"] = Value::from(repo);
    v["sha"] = Value::from(sha);
    v["commit"]["sha"] = Value::from(sha);
    v["context"] = Value::from(context);
    v["state"] = Value::from(state);
    v
}
