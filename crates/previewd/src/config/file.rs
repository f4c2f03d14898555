//! The configuration file: its shape, reading it (from a path or inline), and its errors, which quote
//! nothing from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use super::Var;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    pub(super) listen: Option<SocketAddr>,
    pub(super) database_url: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) dns_zone: Option<String>,
    pub(super) stacks_dir: Option<PathBuf>,
    pub(super) webhook_secrets: Option<Vec<String>>,
    pub(super) dashboard_token: Option<String>,
    pub(super) metrics_token: Option<String>,
    pub(super) template_bucket: Option<String>,
    /// Live environments per repository at most, unless the repository says otherwise.
    pub(super) max_environments: Option<usize>,
    /// A role CloudFormation assumes for preview stacks (RoleARN): previewd's own credentials then need
    /// no rights on what the stacks hold.
    pub(super) cloudformation_role_arn: Option<String>,
    /// The dashboard's address as people reach it, for links from GitHub.
    pub(super) public_url: Option<String>,
    #[serde(default)]
    pub(super) github: GithubFile,
    #[serde(default)]
    pub(super) seed: SeedFile,
    #[serde(default)]
    pub(super) reconciler: ReconcilerFile,
    #[serde(default)]
    pub(super) reaper: ReaperFile,
    #[serde(default)]
    pub(super) repos: BTreeMap<String, RepoFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GithubFile {
    pub(super) api_url: Option<String>,
    pub(super) token: Option<String>,
    /// One GitHub call may take this long (`15s`).
    pub(super) timeout: Option<String>,
    /// A GitHub App instead of a token: its id and the path of its private key (PEM).
    pub(super) app_id: Option<u64>,
    pub(super) app_key: Option<PathBuf>,
    /// Deployments and pull-request comments (on unless `false`, whenever there are credentials).
    pub(super) feedback: Option<bool>,
    /// At least this long between two content-creating requests (`750ms`: GitHub allows 80 a minute).
    pub(super) write_gap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeedFile {
    /// Signs the bodies seed hooks receive.
    pub(super) hook_secret: Option<String>,
}

/// Waits and limits of the reconciler (durations such as `5s`); the defaults suit real AWS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReconcilerFile {
    pub(super) workers: Option<usize>,
    pub(super) poll_min: Option<String>,
    pub(super) poll_max: Option<String>,
    pub(super) retry_min: Option<String>,
    pub(super) retry_max: Option<String>,
    pub(super) resync_every: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) idle_poll: Option<String>,
    pub(super) stop_grace: Option<String>,
    pub(super) max_stack_attempts: Option<i64>,
    pub(super) empty_batches_per_step: Option<usize>,
    pub(super) api_lag: Option<String>,
    pub(super) batch_window: Option<String>,
    pub(super) step_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReaperFile {
    pub(super) schedule: Option<String>,
    pub(super) grace: Option<String>,
    /// A pass that would remove more than this share of a repository's environments removes nothing.
    pub(super) max_share: Option<f64>,
    /// ... unless it removes at most this many.
    pub(super) min_removals: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RepoFile {
    pub(super) blueprint: Option<String>,
    /// Live environments at most; a new branch over it is `skipped` until one goes.
    pub(super) max_environments: Option<usize>,
    pub(super) dns_zone: Option<String>,
    /// Stage name → settings added to that stage's layer (the VPC, subnets, certificate of this account).
    #[serde(default)]
    pub(super) stages: toml::Table,
    /// Branch glob → settings table, applied in file order.
    #[serde(default)]
    pub(super) branches: toml::Table,
}

/// Reads the file (`PREVIEWD_CONFIG_TOML`'s text, else `path`'s, else none) and the name messages give it.
pub(super) fn read(path: Option<&Path>, var: Var<'_>) -> anyhow::Result<(File, String)> {
    // The file's text itself, where no file can be mounted (a container's secret or parameter).
    let inline = var("PREVIEWD_CONFIG_TOML");
    let file: File = match (path, &inline) {
        (_, Some(text)) => {
            toml::from_str(text).map_err(|e| anyhow::anyhow!("PREVIEWD_CONFIG_TOML: {}", config_error(text, &e)))?
        }
        (Some(p), None) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("cannot read configuration {}", p.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), config_error(&text, &e)))?
        }
        (None, None) => File::default(),
    };
    let source = match (path, &inline) {
        (_, Some(_)) => "PREVIEWD_CONFIG_TOML".to_owned(),
        (Some(p), None) => p.display().to_string(),
        (None, None) => "configuration".to_owned(),
    };
    Ok((file, source))
}

/// A configuration file's error, naming the line and column but quoting nothing from it: the file holds
/// secrets (webhook secrets, tokens, a database password), and a value of the wrong type would be quoted.
fn config_error(text: &str, e: &toml::de::Error) -> String {
    let described = previewd_render::toml_error(text, e);
    // What toml quotes in its message is a value (`invalid type: string "…"`, ``integer `1234` ``): left
    // out, escapes within it included.
    // Messages about keys (unknown field `ownr`, expected one of ...) quote key names, which stay.
    let about_keys = ["unknown field", "missing field", "duplicate key"].iter().any(|m| e.message().starts_with(m));
    let mut out = String::with_capacity(described.len());
    let mut chars = described.chars();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' => '"',
            '`' if !about_keys => '`',
            c => {
                out.push(c);
                continue;
            }
        };
        out.push(c);
        out.push('…');
        while let Some(q) = chars.next() {
            match q {
                '\\' => {
                    chars.next();
                }
                q if q == close => break,
                _ => {}
            }
        }
        out.push(close);
    }
    out
}
