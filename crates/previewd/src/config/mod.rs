//! Configuration: a TOML file (`--config PATH` or `PREVIEWD_CONFIG`) with the environment on top, as
//! INTERFACE.md names it. Everything is validated here, once, into domain types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use previewd_domain::{DnsZone, OwnerId, RepoName, Secret};
use previewd_reconciler::{ReaperSetup, Tuning};
use previewd_render::RepoLayers;

mod check;
mod file;
mod general;
mod github;
mod reconciler;
mod repos;
mod secrets;

/// A dashboard token shorter than this is refused: it is all that stands between the network and the
/// actions, and a session cookie is as strong as the token it is keyed by.
pub const MIN_DASHBOARD_TOKEN: usize = 16;

/// The blueprint a repository gets when `PREVIEWD_REPOS` names none.
pub const DEFAULT_BLUEPRINT: &str = "webapp";
/// GitHub allows 80 content-creating requests a minute: one every 750 ms stays under it.
pub const DEFAULT_GITHUB_WRITE_GAP: Duration = Duration::from_millis(750);
/// Live environments per repository unless configured: enough for a busy team, and a ceiling on what a
/// flood of branches (a script gone wrong) can cost.
pub const DEFAULT_MAX_ENVIRONMENTS: usize = 100;
/// The reaper runs hourly (cron with seconds first).
pub const DEFAULT_REAPER_SCHEDULE: &str = "0 0 * * * *";
/// An environment must stay orphaned this long before the reaper removes it: a branch that is deleted and
/// pushed again a moment later (a force-push of a rebased branch, say) must not lose its environment.
pub const DEFAULT_REAPER_GRACE: Duration = Duration::from_secs(10 * 60);
/// A pass that finds more than half of a repository's environments orphaned trusts nothing it saw: a
/// GitHub fault is likelier than half the branches vanishing within one hour.
pub const DEFAULT_REAPER_MAX_SHARE: f64 = 0.5;
/// ... though a small repository may always lose this many at once.
pub const DEFAULT_REAPER_MIN_REMOVALS: usize = 3;

/// The environment's variables, an empty one counting as unset.
type Var<'a> = &'a dyn Fn(&str) -> Option<String>;

#[derive(Debug)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    pub listen: SocketAddr,
    /// May hold a password: shown redacted.
    pub database_url: Secret,
    /// Passed to CloudFormation as RoleARN for every stack operation.
    pub cloudformation_role_arn: Option<String>,
    pub github_api_url: String,
    pub github_token: Option<Secret>,
    /// A GitHub App: its id and the path of its private key (PEM); used instead of the token.
    pub github_app: Option<(u64, PathBuf)>,
    pub github_timeout: Duration,
    /// Deployments and pull-request comments on GitHub.
    pub github_feedback: bool,
    pub github_write_gap: Duration,
    /// The dashboard's address as people reach it (`https://previewd.example.com`).
    pub public_url: Option<String>,
    pub seed_hook_secret: Option<Secret>,
    pub webhook_secrets: Vec<Secret>,
    pub owner: Option<OwnerId>,
    pub dns_zone: Option<DnsZone>,
    pub stacks_dir: PathBuf,
    pub reaper: ReaperSetup,
    pub dashboard_token: Option<Secret>,
    /// Lets a scraper read `/metrics`, and nothing else.
    pub metrics_token: Option<Secret>,
    /// An S3 bucket for templates over CloudFormation's 51,200-byte TemplateBody limit.
    pub template_bucket: Option<String>,
    pub tuning: Tuning,
    pub repos: BTreeMap<RepoName, RepoConfig>,
}

#[derive(Debug)]
pub struct RepoConfig {
    pub blueprint: String,
    /// The repository's own zone, when it does not use the global one.
    pub dns_zone: Option<DnsZone>,
    /// Stage tables and branch-pattern overrides.
    pub layers: RepoLayers,
    /// Live environments at most (a branch flood must not run up the bill).
    pub max_environments: usize,
}

impl Config {
    /// Reads `path` (if any) and applies the environment variables `env` returns.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var: Var<'_> = &|name: &str| env(name).filter(|v| !v.is_empty());
        let (file, source) = file::read(path, var)?;
        // Settings are read in this order: of two mistakes, the first is the one reported.
        let listen = general::listen(var, file.listen)?;
        let owner = general::owner(var, file.owner)?;
        let dns_zone = general::dns_zone(var, file.dns_zone)?;
        let reaper_grace = reconciler::reaper_grace(var, &file.reaper)?;
        let github = github::settings(var, &source, file.github)?;
        let public_url = general::public_url(var, file.public_url)?;
        let reaper = reconciler::reaper(var, &source, file.reaper, reaper_grace)?;
        let tuning = reconciler::tuning(&source, &file.reconciler)?;
        let repos = repos::from_file(&source, file.repos, file.max_environments)?;
        let repos = repos::named_by_env(var, repos, file.max_environments)?;
        let database_url = secrets::database_url(var, file.database_url)?;
        let config = Config {
            file: path.map(Path::to_owned),
            listen,
            database_url,
            cloudformation_role_arn: var("PREVIEWD_CLOUDFORMATION_ROLE_ARN").or(file.cloudformation_role_arn),
            github_api_url: github.api_url,
            github_token: github.token,
            github_app: github.app,
            github_timeout: github.timeout,
            github_feedback: github.feedback,
            github_write_gap: github.write_gap,
            public_url,
            seed_hook_secret: var("PREVIEWD_SEED_HOOK_SECRET").or(file.seed.hook_secret).map(Secret::new),
            webhook_secrets: secrets::webhook_secrets(var, file.webhook_secrets),
            owner,
            dns_zone,
            stacks_dir: general::stacks_dir(var, file.stacks_dir),
            reaper,
            dashboard_token: var("PREVIEWD_DASHBOARD_TOKEN").or(file.dashboard_token).map(Secret::new),
            metrics_token: var("PREVIEWD_METRICS_TOKEN").or(file.metrics_token).map(Secret::new),
            template_bucket: file.template_bucket,
            tuning,
            repos,
        };
        config.check()?;
        Ok(config)
    }

    /// The GitHub credentials: the App when one is configured (its key read from its file), else the token.
    pub fn github_credentials(&self) -> anyhow::Result<previewd_github::Credentials> {
        Ok(match (&self.github_app, &self.github_token) {
            (Some((app_id, key)), _) => {
                let pem = std::fs::read_to_string(key)
                    .with_context(|| format!("cannot read the GitHub App's private key {}", key.display()))?;
                previewd_github::Credentials::App { app_id: *app_id, private_key: Secret::new(pem) }
            }
            (None, Some(token)) => previewd_github::Credentials::Token(token.clone()),
            (None, None) => previewd_github::Credentials::None,
        })
    }

    pub fn repo(&self, name: &RepoName) -> anyhow::Result<&RepoConfig> {
        self.repos.get(name).with_context(|| {
            let known: Vec<_> = self.repos.keys().map(RepoName::as_str).collect();
            format!(
                "repository {name} is not configured (configured: {}); add [repos.\"{name}\"] to the configuration or set PREVIEWD_REPOS",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        })
    }

    /// The zone a repository's environments are named under.
    pub fn zone_of<'a>(&'a self, repo: &'a RepoConfig) -> Option<&'a DnsZone> {
        repo.dns_zone.as_ref().or(self.dns_zone.as_ref())
    }
}

#[cfg(test)]
mod tests;
