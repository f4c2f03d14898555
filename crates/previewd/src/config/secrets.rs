//! The settings that are secrets of their own: the database URL (its password perhaps apart) and the
//! webhook secrets.

use previewd_domain::Secret;

use super::Var;

/// The database URL: `PREVIEWD_DATABASE_URL`, else the file's, else SQLite; `PREVIEWD_DATABASE_PASSWORD` put in.
pub(super) fn database_url(var: Var<'_>, from_file: Option<String>) -> anyhow::Result<Secret> {
    with_password(
        var("PREVIEWD_DATABASE_URL").or(from_file).unwrap_or_else(|| "sqlite://previewd.db".to_owned()),
        var("PREVIEWD_DATABASE_PASSWORD"),
    )
}

/// The database URL, with `password` (from its own secret, as a container gets it) put in.
fn with_password(url: String, password: Option<String>) -> anyhow::Result<Secret> {
    let Some(password) = password else { return Ok(Secret::new(url)) };
    let mut parsed = reqwest::Url::parse(&url)
        .map_err(|_| anyhow::anyhow!("PREVIEWD_DATABASE_URL is not a URL to put PREVIEWD_DATABASE_PASSWORD in"))?;
    parsed
        .set_password(Some(&password))
        .map_err(|()| anyhow::anyhow!("PREVIEWD_DATABASE_URL takes no password (a sqlite:// URL?)"))?;
    Ok(Secret::new(parsed.to_string()))
}

/// The webhook secrets: `PREVIEWD_WEBHOOK_SECRET` (comma-separated), else the file's; blank ones left out.
pub(super) fn webhook_secrets(var: Var<'_>, from_file: Option<Vec<String>>) -> Vec<Secret> {
    match var("PREVIEWD_WEBHOOK_SECRET") {
        Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect(),
        None => from_file.unwrap_or_default().into_iter().filter(|s| !s.trim().is_empty()).map(Secret::new).collect(),
    }
}
