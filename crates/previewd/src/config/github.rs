//! The `[github]` table and its `PREVIEWD_GITHUB_*` variables: where the API is, the credentials (a token
//! or an App), and how previewd calls it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use previewd_domain::Secret;

use super::file::GithubFile;
use super::{DEFAULT_GITHUB_WRITE_GAP, Var};

/// What `[github]` and its variables configure: the `github_*` fields of `Config`, without the prefix.
#[derive(Debug)]
pub(super) struct Github {
    pub(super) api_url: String,
    pub(super) token: Option<Secret>,
    pub(super) app: Option<(u64, PathBuf)>,
    pub(super) timeout: Duration,
    pub(super) feedback: bool,
    pub(super) write_gap: Duration,
}

/// The GitHub settings: the durations, the App (its id and key, both or neither), then the rest.
pub(super) fn settings(var: Var<'_>, source: &str, github: GithubFile) -> anyhow::Result<Github> {
    let timeout = match &github.timeout {
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("{source}: [github] timeout = {t:?} is not a duration such as 15s"))?,
        None => previewd_github::CALL_TIMEOUT,
    };
    let write_gap = match &github.write_gap {
        Some(t) => humantime::parse_duration(t)
            .with_context(|| format!("{source}: [github] write_gap = {t:?} is not a duration such as 750ms"))?,
        None => DEFAULT_GITHUB_WRITE_GAP,
    };
    let app = match (
        var("PREVIEWD_GITHUB_APP_ID").or(github.app_id.map(|i| i.to_string())),
        var("PREVIEWD_GITHUB_APP_KEY").map(PathBuf::from).or(github.app_key),
    ) {
        (None, None) => None,
        (Some(id), Some(key)) => {
            let id = id.parse().with_context(|| format!("PREVIEWD_GITHUB_APP_ID {id:?} is not a number"))?;
            Some((id, key))
        }
        _ => bail!(
            "a GitHub App needs both PREVIEWD_GITHUB_APP_ID and PREVIEWD_GITHUB_APP_KEY ([github] app_id, app_key)"
        ),
    };
    Ok(Github {
        api_url: var("PREVIEWD_GITHUB_API_URL")
            .or(github.api_url)
            .unwrap_or_else(|| "https://api.github.com".to_owned()),
        token: var("PREVIEWD_GITHUB_TOKEN").or(github.token).map(Secret::new),
        app,
        timeout,
        feedback: github.feedback.unwrap_or(true),
        write_gap,
    })
}
