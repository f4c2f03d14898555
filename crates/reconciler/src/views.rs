//! What people see of an environment beyond its record: its settings with the layer that set each,
//! as its blueprint and layers give them (the stack as the reconciler last saw it is the store's to
//! show). Nothing here calls AWS or GitHub.

use previewd_render::RenderError;
use previewd_store::EnvRecord;

use crate::Reconciler;
use crate::reconcile::BRANCH_SETTINGS_FILE;

/// One setting of an environment, with the layer that set it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SettingView {
    pub key: String,
    pub value: serde_json::Value,
    /// `blueprint defaults`, `stage staging`, `preview`, `branch pattern <glob>`, `branch overrides`.
    pub layer: String,
    pub source: String,
}

impl Reconciler {
    /// The environment's settings and the layer that set each, as its last reconcile rendered them: the
    /// branch's `.previewd.toml` is included when this process has read it at the deployed commit (no
    /// GitHub call is made here). Empty for a repository no longer configured.
    pub fn settings(&self, env: &EnvRecord) -> Result<Vec<SettingView>, RenderError> {
        let Some(repo) = self.inner.setup.repos.get(&env.repo) else { return Ok(Vec::new()) };
        let Some(blueprint) = self.inner.blueprints.get(&repo.blueprint) else { return Ok(Vec::new()) };
        let own = env.deployed_sha.as_ref().and_then(|sha| {
            let files = self.inner.settings_files.lock().unwrap_or_else(|p| p.into_inner());
            let text = files.get(&env.repo, sha)?.clone()?;
            let source = format!("{} at {}", BRANCH_SETTINGS_FILE, sha.short());
            previewd_render::Layer::parse(previewd_render::LayerKind::Branch, source, &text).ok()
        });
        let settings =
            blueprint.environment_settings(previewd_domain::Stage::Staging, &env.branch, &repo.layers, own.as_ref())?;
        Ok(settings
            .iter()
            .map(|(key, s)| SettingView {
                key: key.to_owned(),
                value: serde_json::to_value(&s.value).unwrap_or_default(),
                layer: s.origin.kind.to_string(),
                source: s.origin.source.clone(),
            })
            .collect())
    }

    /// How many seed steps the environment's blueprint declares (0 for a repository no longer configured).
    pub fn seed_steps(&self, env: &EnvRecord) -> usize {
        let Some(repo) = self.inner.setup.repos.get(&env.repo) else { return 0 };
        self.inner.blueprints.get(&repo.blueprint).map_or(0, |b| b.seed.len())
    }
}
