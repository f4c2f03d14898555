//! Configuration: a TOML file (`--config PATH` or `PREVIEWD_CONFIG`) with the environment on top, as
//! INTERFACE.md names it. Everything is validated here, once, into domain types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use previewd_domain::Stage;
use previewd_domain::{DnsZone, OwnerId, RepoName, Secret};
use previewd_reconciler::{ReaperSetup, Tuning};
use previewd_render::{Layer, LayerKind, PatternOverride, RepoLayers};
use serde::Deserialize;

/// A dashboard token shorter than this is refused: it is all that stands between the network and the
/// actions, and a session cookie is as strong as the token it is keyed by.
pub const MIN_DASHBOARD_TOKEN: usize = 16;

/// The blueprint a repository gets when `PREVIEWD_REPOS` names none.
pub const DEFAULT_BLUEPRINT: &str = "webapp";
/// The database URL, with `password` (from its own secret, as a container gets it) put in.
fn database_url(url: String, password: Option<String>) -> anyhow::Result<Secret> {
    let Some(password) = password else { return Ok(Secret::new(url)) };
    let mut parsed = reqwest::Url::parse(&url)
        .map_err(|_| anyhow::anyhow!("PREVIEWD_DATABASE_URL is not a URL to put PREVIEWD_DATABASE_PASSWORD in"))?;
    parsed
        .set_password(Some(&password))
        .map_err(|()| anyhow::anyhow!("PREVIEWD_DATABASE_URL takes no password (a sqlite:// URL?)"))?;
    Ok(Secret::new(parsed.to_string()))
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    owner: Option<String>,
    dns_zone: Option<String>,
    stacks_dir: Option<PathBuf>,
    webhook_secrets: Option<Vec<String>>,
    dashboard_token: Option<String>,
    template_bucket: Option<String>,
    /// Live environments per repository at most, unless the repository says otherwise.
    max_environments: Option<usize>,
    /// A role CloudFormation assumes for preview stacks (RoleARN): previewd's own credentials then need
    /// no rights on what the stacks hold.
    cloudformation_role_arn: Option<String>,
    /// The dashboard's address as people reach it, for links from GitHub.
    public_url: Option<String>,
    #[serde(default)]
    github: GithubFile,
    #[serde(default)]
    seed: SeedFile,
    #[serde(default)]
    reconciler: ReconcilerFile,
    #[serde(default)]
    reaper: ReaperFile,
    #[serde(default)]
    repos: BTreeMap<String, RepoFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GithubFile {
    api_url: Option<String>,
    token: Option<String>,
    /// One GitHub call may take this long (`15s`).
    timeout: Option<String>,
    /// A GitHub App instead of a token: its id and the path of its private key (PEM).
    app_id: Option<u64>,
    app_key: Option<PathBuf>,
    /// Deployments and pull-request comments (on unless `false`, whenever there are credentials).
    feedback: Option<bool>,
    /// At least this long between two content-creating requests (`750ms`: GitHub allows 80 a minute).
    write_gap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    /// Signs the bodies seed hooks receive.
    hook_secret: Option<String>,
}

/// Waits and limits of the reconciler (durations such as `5s`); the defaults suit real AWS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcilerFile {
    workers: Option<usize>,
    poll_min: Option<String>,
    poll_max: Option<String>,
    retry_min: Option<String>,
    retry_max: Option<String>,
    resync_every: Option<String>,
    lease: Option<String>,
    idle_poll: Option<String>,
    stop_grace: Option<String>,
    max_stack_attempts: Option<i64>,
    empty_batches_per_step: Option<usize>,
    api_lag: Option<String>,
    batch_window: Option<String>,
    step_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReaperFile {
    schedule: Option<String>,
    grace: Option<String>,
    /// A pass that would remove more than this share of a repository's environments removes nothing.
    max_share: Option<f64>,
    /// ... unless it removes at most this many.
    min_removals: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoFile {
    blueprint: Option<String>,
    /// Live environments at most; a new branch over it is `skipped` until one goes.
    max_environments: Option<usize>,
    dns_zone: Option<String>,
    /// Stage name → settings added to that stage's layer (the VPC, subnets, certificate of this account).
    #[serde(default)]
    stages: toml::Table,
    /// Branch glob → settings table, applied in file order.
    #[serde(default)]
    branches: toml::Table,
}

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
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
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

        let listen = match var("PREVIEWD_LISTEN") {
            Some(v) => {
                v.parse().with_context(|| format!("PREVIEWD_LISTEN={v:?} is not an address such as 127.0.0.1:8080"))?
            }
            None => file.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        };
        let owner = var("PREVIEWD_OWNER")
            .or(file.owner)
            .map(|o| OwnerId::new(&o))
            .transpose()
            .context("PREVIEWD_OWNER / owner")?;
        let dns_zone = var("PREVIEWD_DNS_ZONE")
            .or(file.dns_zone)
            .map(|z| DnsZone::new(&z))
            .transpose()
            .context("PREVIEWD_DNS_ZONE / dns_zone")?;
        let webhook_secrets = match var("PREVIEWD_WEBHOOK_SECRET") {
            Some(v) => v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Secret::new).collect(),
            None => file
                .webhook_secrets
                .unwrap_or_default()
                .into_iter()
                .filter(|s| !s.trim().is_empty())
                .map(Secret::new)
                .collect(),
        };
        let reaper_grace = match var("PREVIEWD_REAPER_GRACE").or(file.reaper.grace) {
            Some(g) => humantime::parse_duration(&g)
                .with_context(|| format!("reaper grace {g:?} is not a duration such as 10m"))?,
            None => DEFAULT_REAPER_GRACE,
        };

        let github_timeout = match &file.github.timeout {
            Some(t) => humantime::parse_duration(t)
                .with_context(|| format!("{source}: [github] timeout = {t:?} is not a duration such as 15s"))?,
            None => previewd_github::CALL_TIMEOUT,
        };
        let github_write_gap = match &file.github.write_gap {
            Some(t) => humantime::parse_duration(t)
                .with_context(|| format!("{source}: [github] write_gap = {t:?} is not a duration such as 750ms"))?,
            None => DEFAULT_GITHUB_WRITE_GAP,
        };
        let github_app = match (
            var("PREVIEWD_GITHUB_APP_ID").or(file.github.app_id.map(|i| i.to_string())),
            var("PREVIEWD_GITHUB_APP_KEY").map(PathBuf::from).or(file.github.app_key),
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
        let public_url = var("PREVIEWD_PUBLIC_URL").or(file.public_url);
        if let Some(u) = &public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            bail!("PREVIEWD_PUBLIC_URL (public_url) {u:?} must start with https:// or http://");
        }
        let max_share = file.reaper.max_share.unwrap_or(DEFAULT_REAPER_MAX_SHARE);
        if !(0.0..=1.0).contains(&max_share) {
            bail!("{source}: [reaper] max_share = {max_share} must be a share between 0 and 1, such as 0.5");
        }

        let mut tuning = Tuning::default();
        let r = &file.reconciler;
        let dur = |key: &str, v: &Option<String>, d: &mut Duration| -> anyhow::Result<()> {
            if let Some(v) = v {
                *d = humantime::parse_duration(v)
                    .with_context(|| format!("{source}: [reconciler] {key} = {v:?} is not a duration such as 5s"))?;
            }
            Ok(())
        };
        dur("poll_min", &r.poll_min, &mut tuning.poll_min)?;
        dur("poll_max", &r.poll_max, &mut tuning.poll_max)?;
        dur("retry_min", &r.retry_min, &mut tuning.retry_min)?;
        dur("retry_max", &r.retry_max, &mut tuning.retry_max)?;
        dur("resync_every", &r.resync_every, &mut tuning.resync_every)?;
        dur("lease", &r.lease, &mut tuning.lease)?;
        dur("idle_poll", &r.idle_poll, &mut tuning.idle_poll)?;
        dur("stop_grace", &r.stop_grace, &mut tuning.stop_grace)?;
        dur("api_lag", &r.api_lag, &mut tuning.api_lag)?;
        dur("batch_window", &r.batch_window, &mut tuning.batch_window)?;
        dur("step_limit", &r.step_limit, &mut tuning.step_limit)?;
        if tuning.poll_min > tuning.poll_max || tuning.retry_min > tuning.retry_max {
            bail!("{source}: [reconciler] poll_min and retry_min must not exceed poll_max and retry_max");
        }
        if tuning.step_limit < Duration::from_secs(1) {
            bail!("{source}: [reconciler] step_limit must be at least 1s: every step would be cut off");
        }
        if let Some(w) = r.workers {
            tuning.workers = w.max(1);
        }
        if let Some(b) = r.empty_batches_per_step {
            tuning.empty_batches_per_step = b.max(1);
        }
        if let Some(m) = r.max_stack_attempts {
            tuning.max_stack_attempts = m.max(1);
        }

        let mut repos = BTreeMap::new();
        for (name, repo) in file.repos {
            let repo_name = RepoName::new(&name).with_context(|| format!("{source}: [repos.{name:?}]"))?;
            let mut layers = RepoLayers::default();
            for (stage_name, table) in repo.stages {
                let table_name = format!("{source} [repos.\"{name}\".stages.{stage_name}]");
                let stage: Stage = stage_name.parse().with_context(|| table_name.clone())?;
                let toml::Value::Table(table) = table else {
                    bail!("{table_name}: expected a table of settings");
                };
                layers.stages.push(Layer { kind: LayerKind::Stage(stage), source: table_name, table });
            }
            for (glob, table) in repo.branches {
                let table_name = format!("{source} [repos.\"{name}\".branches.\"{glob}\"]");
                let toml::Value::Table(table) = table else {
                    bail!("{table_name}: expected a table of settings");
                };
                layers.patterns.push(PatternOverride::new(&glob, table_name, table)?);
            }
            let dns_zone = repo
                .dns_zone
                .map(|z| DnsZone::new(&z))
                .transpose()
                .with_context(|| format!("{source}: [repos.{name:?}] dns_zone"))?;
            let blueprint = repo.blueprint.unwrap_or_else(|| DEFAULT_BLUEPRINT.to_owned());
            let max_environments = repo.max_environments.or(file.max_environments).unwrap_or(DEFAULT_MAX_ENVIRONMENTS);
            // GitHub reads repository names without regard to case: two tables for one repository would
            // silently lose one.
            if repos.contains_key(&repo_name) {
                bail!(
                    "{source}: [repos.{name:?}] names a repository configured already (names are compared without regard to case)"
                );
            }
            repos.insert(repo_name, RepoConfig { blueprint, dns_zone, layers, max_environments });
        }
        if let Some(list) = var("PREVIEWD_REPOS") {
            // The environment names the repositories; the file may still hold their patterns and zones.
            let mut named = BTreeMap::new();
            for entry in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (name, blueprint) = match entry.split_once(':') {
                    Some((n, b)) => (n, Some(b.to_owned())),
                    None => (entry, None),
                };
                let repo_name = RepoName::new(name).with_context(|| format!("PREVIEWD_REPOS entry {entry:?}"))?;
                let mut repo = repos.remove(&repo_name).unwrap_or(RepoConfig {
                    blueprint: DEFAULT_BLUEPRINT.to_owned(),
                    dns_zone: None,
                    layers: RepoLayers::default(),
                    max_environments: file.max_environments.unwrap_or(DEFAULT_MAX_ENVIRONMENTS),
                });
                if let Some(b) = blueprint {
                    repo.blueprint = b;
                }
                named.insert(repo_name, repo);
            }
            repos = named;
        }

        let config = Config {
            file: path.map(Path::to_owned),
            listen,
            database_url: database_url(
                var("PREVIEWD_DATABASE_URL").or(file.database_url).unwrap_or_else(|| "sqlite://previewd.db".to_owned()),
                var("PREVIEWD_DATABASE_PASSWORD"),
            )?,
            cloudformation_role_arn: var("PREVIEWD_CLOUDFORMATION_ROLE_ARN").or(file.cloudformation_role_arn),
            github_api_url: var("PREVIEWD_GITHUB_API_URL")
                .or(file.github.api_url)
                .unwrap_or_else(|| "https://api.github.com".to_owned()),
            github_token: var("PREVIEWD_GITHUB_TOKEN").or(file.github.token).map(Secret::new),
            github_app,
            github_timeout,
            github_feedback: file.github.feedback.unwrap_or(true),
            github_write_gap,
            public_url,
            seed_hook_secret: var("PREVIEWD_SEED_HOOK_SECRET").or(file.seed.hook_secret).map(Secret::new),
            webhook_secrets,
            owner,
            dns_zone,
            stacks_dir: var("PREVIEWD_STACKS_DIR")
                .map(PathBuf::from)
                .or(file.stacks_dir)
                .unwrap_or_else(|| PathBuf::from("stacks")),
            reaper: ReaperSetup {
                schedule: var("PREVIEWD_REAPER_SCHEDULE")
                    .or(file.reaper.schedule)
                    .unwrap_or_else(|| DEFAULT_REAPER_SCHEDULE.to_owned()),
                grace: reaper_grace,
                max_share,
                min_removals: file.reaper.min_removals.unwrap_or(DEFAULT_REAPER_MIN_REMOVALS),
            },
            dashboard_token: var("PREVIEWD_DASHBOARD_TOKEN").or(file.dashboard_token).map(Secret::new),
            template_bucket: file.template_bucket,
            tuning,
            repos,
        };
        config.check()?;
        Ok(config)
    }

    /// What no single field shows: two repositories must not share a DNS zone (their `main` branches
    /// would claim one name) nor a repository hash (it keeps stack names apart).
    fn check(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.dashboard_token
            && t.expose().len() < MIN_DASHBOARD_TOKEN
        {
            bail!(
                "PREVIEWD_DASHBOARD_TOKEN (dashboard_token) is shorter than {MIN_DASHBOARD_TOKEN} bytes: use a long \
                 random one (e.g. openssl rand -hex 24)"
            );
        }
        let mut zones = BTreeMap::new();
        let mut hashes = BTreeMap::new();
        for (name, repo) in &self.repos {
            if let Some(zone) = repo.dns_zone.as_ref().or(self.dns_zone.as_ref())
                && let Some(other) = zones.insert(zone.clone(), name)
            {
                bail!("repositories {other} and {name} share the DNS zone {zone}: give one of them its own dns_zone");
            }
            if let Some(other) = hashes.insert(name.hash(), name) {
                bail!("repositories {other} and {name} have the same name hash; rename one in the configuration");
            }
        }
        Ok(())
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
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn a_repository_configured_twice_in_another_case_is_refused() {
        let file = write("owner = \"o\"\n[repos.\"Acme/Shop\"]\n[repos.\"acme/shop\".branches.\"x/*\"]\n");
        let e = format!("{:#}", Config::load(Some(file.path()), env(&[])).expect_err("twice"));
        assert!(e.contains("configured already"), "{e}");
    }

    #[test]
    fn a_mistake_in_the_configuration_never_shows_a_secret() {
        for text in [
            "webhook_secrets = \"hunter2-webhook\"\n",
            "owner = \"a\"\ndashboard_token = \"hunter2-dashboard\" trailing\n",
            "database_url = [\"postgres://u:hunter2@db/x\"]\n",
            "webhook_secrets = 'hun\"ter2'\n",
            "dashboard_token = 12345678901234567890\n",
        ] {
            let file = write(text);
            let e = format!("{:#}", Config::load(Some(file.path()), env(&[])).expect_err(text));
            assert!(!e.contains("ter2") && !e.contains("345678"), "{e}");
            assert!(e.contains("line ") && e.contains(", column "), "{e}");
            let e = format!("{:#}", Config::load(None, env(&[("PREVIEWD_CONFIG_TOML", text)])).expect_err(text));
            assert!(
                !e.contains("ter2") && !e.contains("345678") && e.starts_with("PREVIEWD_CONFIG_TOML: line "),
                "{e}"
            );
        }
    }

    #[test]
    fn the_configuration_may_come_inline_and_the_password_apart() {
        let c = Config::load(
            None,
            env(&[
                (
                    "PREVIEWD_CONFIG_TOML",
                    "owner = \"inline\"\ndatabase_url = \"postgres://previewd@db.internal:5432/previewd\"\n",
                ),
                ("PREVIEWD_DATABASE_PASSWORD", "p@ss/word"),
                ("PREVIEWD_CLOUDFORMATION_ROLE_ARN", "arn:aws:iam::123456789012:role/previewd-stacks"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.owner.as_ref().map(|o| o.as_str()), Some("inline"));
        assert_eq!(c.database_url.expose(), "postgres://previewd:p%40ss%2Fword@db.internal:5432/previewd");
        assert!(!format!("{c:?}").contains("p%40ss"), "redacted");
        assert_eq!(c.cloudformation_role_arn.as_deref(), Some("arn:aws:iam::123456789012:role/previewd-stacks"));
        let e = Config::load(None, env(&[("PREVIEWD_CONFIG_TOML", "owner = ")])).expect_err("bad TOML");
        assert!(format!("{e:#}").starts_with("PREVIEWD_CONFIG_TOML:"), "{e:#}");
    }

    #[test]
    fn defaults_match_the_interface() {
        let c = Config::load(None, env(&[])).expect("loads");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url.expose(), "sqlite://previewd.db");
        assert_eq!(c.github_api_url, "https://api.github.com");
        assert_eq!(c.stacks_dir, PathBuf::from("stacks"));
        assert_eq!(c.reaper.grace, Duration::from_secs(600));
        assert_eq!(c.reaper.schedule, "0 0 * * * *");
        assert!(c.repos.is_empty());
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let f = write(
            r#"
            owner = "from-file"
            webhook_secrets = ["file-secret"]
            [repos."acme/shop"]
            blueprint = "beanstalk"
            [repos."acme/shop".stages.staging]
            network.vpc_id = "vpc-1"
            [repos."acme/shop".branches."perf/*"]
            service.cpu = "4096"
            [repos."acme/other"]
            "#,
        );
        let c = Config::load(
            Some(f.path()),
            env(&[
                ("PREVIEWD_OWNER", "from-env"),
                ("PREVIEWD_WEBHOOK_SECRET", "new, old"),
                ("PREVIEWD_REPOS", "Acme/Shop,acme/api:beanstalk"),
                ("PREVIEWD_REAPER_GRACE", "90s"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.owner.expect("owner").as_str(), "from-env");
        assert_eq!(c.webhook_secrets.iter().map(Secret::expose).collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(c.reaper.grace, Duration::from_secs(90));
        let names: Vec<_> = c.repos.keys().map(RepoName::as_str).collect();
        assert_eq!(names, ["acme/api", "acme/shop"]);
        let shop = &c.repos[&RepoName::new("acme/shop").expect("repo")];
        assert_eq!(shop.blueprint, "beanstalk");
        assert_eq!(shop.layers.patterns.len(), 1, "patterns from the file survive");
        assert_eq!(shop.layers.stages[0].kind, LayerKind::Stage(Stage::Staging));
    }

    #[test]
    fn bad_values_are_named() {
        let f = write("owner = \"Not Valid\"");
        let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("invalid owner"));
        assert!(e.contains("owner") && e.contains("Not Valid"), "{e}");
        let f = write("ownr = \"x\"");
        let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("unknown key"));
        assert!(e.contains(&f.path().display().to_string()) && e.contains("ownr"), "{e}");
        let e = format!("{:#}", Config::load(None, env(&[("PREVIEWD_REPOS", "not-a-repo")])).expect_err("bad repo"));
        assert!(e.contains("PREVIEWD_REPOS"), "{e}");
    }

    #[test]
    fn a_step_limit_under_a_second_is_refused() {
        let f = write("[reconciler]\nstep_limit = \"500ms\"");
        let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("too short"));
        assert!(e.contains("step_limit must be at least 1s"), "{e}");
        let f = write("[reconciler]\nstep_limit = \"2s\"");
        let c = Config::load(Some(f.path()), env(&[])).expect("loads");
        assert_eq!(c.tuning.step_limit, Duration::from_secs(2));
    }

    #[test]
    fn a_short_dashboard_token_is_refused() {
        let e = Config::load(None, env(&[("PREVIEWD_DASHBOARD_TOKEN", "short")])).expect_err("too short").to_string();
        assert!(e.contains("shorter than 16 bytes") && !e.contains("short\""), "{e}");
        assert!(Config::load(None, env(&[("PREVIEWD_DASHBOARD_TOKEN", &"x".repeat(16))])).is_ok());
    }

    #[test]
    fn two_repositories_cannot_share_a_zone() {
        let e = Config::load(None, env(&[("PREVIEWD_REPOS", "a/x,a/y"), ("PREVIEWD_DNS_ZONE", "p.example.com")]))
            .expect_err("shared zone")
            .to_string();
        assert!(e.contains("share the DNS zone"), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Config::load(
            None,
            env(&[("PREVIEWD_WEBHOOK_SECRET", "s3cr3t-hook"), ("PREVIEWD_GITHUB_TOKEN", "ghp_t0ken")]),
        )
        .expect("loads");
        let debug = format!("{c:?}");
        assert!(!debug.contains("s3cr3t-hook") && !debug.contains("ghp_t0ken"), "{debug}");
    }
}
