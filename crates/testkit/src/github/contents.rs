//! Files and folders at a commit, as the contents API serves them.

use base64::Engine as _;
use serde_json::json;

use super::reply::Reply;
use super::routes::Asked;
use super::state::GhState;

/// The contents API inlines a file's content up to 1 MB; a larger one comes with `encoding: none`.
const CONTENTS_INLINE_MAX: usize = 1024 * 1024;

/// `/repos/{o}/{r}/contents/{path}?ref={sha}`: a file at a commit (its content inlined up to 1 MB), or a
/// folder's listing.
pub(super) fn contents(st: &GhState, asked: &Asked<'_>, repo: String, rest: &[&str]) -> Reply {
    let path = rest.join("/");
    let sha = asked.param("ref").unwrap_or_default().to_owned();
    if st.folders.contains(&(repo.clone(), sha.clone(), path.clone())) {
        let inner = format!("{path}/README.md");
        return Reply::ok(&json!([{ "type": "file", "size": 5, "name": "README.md", "path": inner, "sha": sha }]));
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
