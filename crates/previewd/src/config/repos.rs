//! The repositories: the file's `[repos."owner/name"]` tables, and `PREVIEWD_REPOS` naming which are served.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use previewd_domain::{DnsZone, RepoName, Stage};
use previewd_render::{Layer, LayerKind, PatternOverride, RepoLayers};

use super::file::RepoFile;
use super::{DEFAULT_BLUEPRINT, DEFAULT_MAX_ENVIRONMENTS, RepoConfig, Var};

/// The repositories the file configures, with their stage tables, branch patterns, zones and limits.
pub(super) fn from_file(
    source: &str,
    tables: BTreeMap<String, RepoFile>,
    default_max: Option<usize>,
) -> anyhow::Result<BTreeMap<RepoName, RepoConfig>> {
    let mut repos = BTreeMap::new();
    for (name, repo) in tables {
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
        let max_environments = repo.max_environments.or(default_max).unwrap_or(DEFAULT_MAX_ENVIRONMENTS);
        // GitHub reads repository names without regard to case: two tables for one repository would
        // silently lose one.
        if repos.contains_key(&repo_name) {
            bail!(
                "{source}: [repos.{name:?}] names a repository configured already (names are compared without regard to case)"
            );
        }
        repos.insert(repo_name, RepoConfig { blueprint, dns_zone, layers, max_environments });
    }
    Ok(repos)
}

/// With `PREVIEWD_REPOS` set, the repositories it names (`owner/name[:blueprint]`, the file's settings kept).
pub(super) fn named_by_env(
    var: Var<'_>,
    mut repos: BTreeMap<RepoName, RepoConfig>,
    default_max: Option<usize>,
) -> anyhow::Result<BTreeMap<RepoName, RepoConfig>> {
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
                max_environments: default_max.unwrap_or(DEFAULT_MAX_ENVIRONMENTS),
            });
            if let Some(b) = blueprint {
                repo.blueprint = b;
            }
            named.insert(repo_name, repo);
        }
        repos = named;
    }
    Ok(repos)
}
