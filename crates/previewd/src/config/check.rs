//! What is checked once the whole configuration is read: the dashboard token's length, and what no
//! single field shows.

use std::collections::BTreeMap;

use anyhow::bail;

use super::{Config, MIN_DASHBOARD_TOKEN};

impl Config {
    /// What no single field shows: two repositories must not share a DNS zone (their `main` branches
    /// would claim one name) nor a repository hash (it keeps stack names apart).
    pub(super) fn check(&self) -> anyhow::Result<()> {
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
}
