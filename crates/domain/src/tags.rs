//! The tags previewd puts on every stack it makes: how it knows its own (the owner tag), which
//! environment a stack is (repository, branch, key), and whether it is current (commit, template hash).
//! The reconciler writes them, the fleet observer and the reaper read them.

use crate::{BranchName, CommitSha, EnvKey, RepoName, Stage, tag_value};

/// This installation's owner id: what previewd made, and only that, it may change or remove.
pub const OWNER: &str = "previewd:owner";
pub const REPO: &str = "previewd:repo";
/// The branch for people ([`tag_value`]: lossy where the name holds characters tags refuse, or is long).
pub const BRANCH: &str = "previewd:branch";
/// The branch for machines: [`BranchName::identity`], SHA-256 of the exact name.
pub const BRANCH_ID: &str = "previewd:branch-sha256";
pub const ENV: &str = "previewd:env";
pub const SHA: &str = "previewd:sha";
pub const STAGE: &str = "previewd:stage";
/// A hash of the rendered template: an unchanged template at an unchanged commit needs no update.
pub const TEMPLATE: &str = "previewd:template";

/// The tags of an environment's stack at `sha`, rendered to a template whose hash is `template`.
pub fn environment(
    owner: &str,
    repo: &RepoName,
    branch: &BranchName,
    env_key: &EnvKey,
    sha: &CommitSha,
    template: &str,
) -> Vec<(String, String)> {
    vec![
        (OWNER.to_owned(), owner.to_owned()),
        (REPO.to_owned(), tag_value(repo.as_str())),
        (BRANCH.to_owned(), tag_value(branch.as_str())),
        (BRANCH_ID.to_owned(), branch.identity()),
        (ENV.to_owned(), env_key.to_string()),
        (SHA.to_owned(), sha.to_string()),
        (TEMPLATE.to_owned(), template.to_owned()),
    ]
}

/// The tags of a repository's application stack for `stage`.
pub fn application(owner: &str, repo: &RepoName, stage: Stage, template: &str) -> Vec<(String, String)> {
    vec![
        (OWNER.to_owned(), owner.to_owned()),
        (REPO.to_owned(), tag_value(repo.as_str())),
        (STAGE.to_owned(), stage.as_str().to_owned()),
        (TEMPLATE.to_owned(), template.to_owned()),
    ]
}
