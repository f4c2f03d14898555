//! What is checked once the whole configuration is read: the dashboard token's length, and what no
//! single field shows.

use std::collections::BTreeMap;

use anyhow::bail;

use super::{Config, MIN_DASHBOARD_TOKEN};

impl Config {
    /// What no single field shows: two repositories must not share a DNS zone (their `main` branches
    /// would claim one name) nor a repository hash (it keeps stack names apart).
    pub(super) fn check(&self) -> anyhow::Result<()> {
        for (token, name) in [
            (&self.dashboard_token, "PREVIEWD_DASHBOARD_TOKEN (dashboard_token)"),
            (&self.metrics_token, "PREVIEWD_METRICS_TOKEN (metrics_token)"),
        ] {
            if let Some(t) = token
                && t.expose().len() < MIN_DASHBOARD_TOKEN
            {
                bail!(
                    "{name} is shorter than {MIN_DASHBOARD_TOKEN} bytes: use a long random one (e.g. openssl rand \
                     -hex 24)"
                );
            }
        }
        if let (Some(d), Some(m)) = (&self.dashboard_token, &self.metrics_token)
            && d.expose() == m.expose()
        {
            bail!(
                "PREVIEWD_METRICS_TOKEN is the dashboard token: give the scraper a token of its own, which can only read /metrics"
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
