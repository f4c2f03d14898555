//! A blueprint: the folder `stacks/<name>/` holding
//!
//! - `blueprint.toml`: a description and the keys a branch may override in its own `.previewd.toml`;
//! - `defaults.toml`: every setting and its default (the schema for every later layer);
//! - `staging.toml`, `production.toml`: the stage layers (optional);
//! - `preview.toml`: what every branch environment gets on top of staging (optional);
//! - `waiting.toml`: what a branch environment runs with while its commit's artifact is missing, so its
//!   infrastructure comes up while CI builds (optional: without it, the whole stack waits);
//! - `application.json`: the application stack, one per repository and stage;
//! - `environment.json`: the environment stack, one per branch.

use std::fs;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use previewd_domain::{BranchName, Stage};
use serde::Deserialize;
use serde_json::Value as Json;
use toml::Table;

use crate::ready::{self, ArtifactSpec, Rules};
use crate::seed::SeedStep;
use crate::settings::is_overridable;
use crate::template::{self, Context, Rendered};
use crate::{Layer, LayerKind, RenderError, Settings, holds_dynamic_reference};

/// Which of a blueprint's two templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    Application,
    Environment,
}

impl TemplateKind {
    pub fn file_name(self) -> &'static str {
        match self {
            TemplateKind::Application => "application.json",
            TemplateKind::Environment => "environment.json",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    description: String,
    #[serde(default)]
    overridable: Vec<String>,
    /// `[[seed]]` tables, checked by [`crate::seed`].
    #[serde(default)]
    seed: Vec<Table>,
    /// Overridable key → the only values a branch may give it.
    #[serde(default)]
    allowed: Table,
    /// Overridable keys whose value a branch may make a CloudFormation dynamic reference.
    #[serde(default)]
    dynamic_references: Vec<String>,
    /// What a commit's artifact is (`image = "…"` or `object = "…"`), waited for before the commit runs.
    #[serde(default)]
    artifact: Option<ArtifactSpec>,
}

/// A loaded blueprint; loading reads and checks every file, rendering does no I/O.
#[derive(Debug, Clone)]
pub struct Blueprint {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    /// Keys (or tables) a branch may set in its `.previewd.toml`.
    pub overridable: Vec<String>,
    /// Test data put into a new environment once, in order.
    pub seed: Vec<SeedStep>,
    /// Overridable key → the only values a branch's `.previewd.toml` may give it.
    pub allowed: std::collections::BTreeMap<String, Vec<toml::Value>>,
    /// Overridable keys a branch may set to a CloudFormation dynamic reference (`{{resolve:…}}`); none by
    /// default. Elsewhere a branch's reference is refused: CloudFormation would resolve it with the
    /// stack's role, and the branch could read any secret that role reaches into its own container.
    pub dynamic_references: Vec<String>,
    /// What a commit's artifact is; `None`: nothing to wait for.
    pub artifact: Option<ArtifactSpec>,
    defaults: Layer,
    staging: Option<Layer>,
    production: Option<Layer>,
    preview: Option<Layer>,
    waiting: Option<Layer>,
    application: Json,
    environment: Json,
}

/// What the configuration adds to a repository's settings: its own stage tables (applied right after the
/// blueprint's stage file, as part of the stage layer) and its branch-pattern overrides.
#[derive(Debug, Clone, Default)]
pub struct RepoLayers {
    /// Layers of kind [`LayerKind::Stage`]; those of other stages are ignored.
    pub stages: Vec<Layer>,
    /// Applied in order to the branches they match.
    pub patterns: Vec<PatternOverride>,
}

/// Settings for branches whose name matches a glob, from the configuration.
#[derive(Debug, Clone)]
pub struct PatternOverride {
    matcher: GlobMatcher,
    pub layer: Layer,
}

impl PatternOverride {
    /// `pattern` is a glob over the branch name where `*` stops at `/` and `**` does not (`perf/*`,
    /// `release/**`); `source` names where it was configured.
    pub fn new(pattern: &str, source: impl Into<String>, table: Table) -> Result<Self, RenderError> {
        let kind = LayerKind::Pattern(pattern.to_owned());
        let source = source.into();
        let glob = GlobBuilder::new(pattern).literal_separator(true).build().map_err(|e| RenderError::Setting {
            file: source.clone(),
            layer: kind.to_string(),
            key: pattern.to_owned(),
            reason: format!("not a valid branch pattern: {}", e.kind()),
        })?;
        Ok(Self { matcher: glob.compile_matcher(), layer: Layer { kind, source, table } })
    }

    pub fn matches(&self, branch: &BranchName) -> bool {
        self.matcher.is_match(branch.as_str())
    }
}

impl Blueprint {
    /// The blueprints found in `stacks_dir`: its folders holding a `blueprint.toml`.
    pub fn available(stacks_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(stacks_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("blueprint.toml").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    pub fn load(stacks_dir: &Path, name: &str) -> Result<Self, RenderError> {
        let dir = stacks_dir.join(name);
        let valid_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name || !dir.join("blueprint.toml").is_file() {
            let available = Self::available(stacks_dir);
            return Err(RenderError::UnknownBlueprint {
                name: name.to_owned(),
                dir: stacks_dir.to_owned(),
                available: if available.is_empty() { "none".to_owned() } else { available.join(", ") },
            });
        }

        let meta_file = dir.join("blueprint.toml");
        let meta_text = read(&meta_file, "blueprint")?.unwrap_or_default();
        let meta: Meta = toml::from_str(&meta_text).map_err(|e| RenderError::Syntax {
            file: meta_file.display().to_string(),
            layer: "blueprint".to_owned(),
            format: "blueprint description",
            message: e.to_string().trim().replace('\n', " "),
        })?;

        let layer = |file: &str, kind: LayerKind| -> Result<Option<Layer>, RenderError> {
            let path = dir.join(file);
            let kind_name = kind.to_string();
            match read(&path, &kind_name)? {
                Some(text) => Layer::parse(kind, path.display().to_string(), &text).map(Some),
                None => Ok(None),
            }
        };
        let defaults = layer("defaults.toml", LayerKind::Defaults)?.ok_or_else(|| RenderError::Unreadable {
            file: dir.join("defaults.toml").display().to_string(),
            layer: LayerKind::Defaults.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let environment = read_template(&dir, TemplateKind::Environment)?;
        let outputs: Vec<String> = environment
            .get("Outputs")
            .and_then(Json::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        let seed = crate::seed::parse(
            &meta_file.display().to_string(),
            &dir,
            meta.seed,
            &Settings::merge(std::slice::from_ref(&defaults), &[])?,
            &outputs,
        )?;
        let meta_source = meta_file.display().to_string();
        let mut allowed = std::collections::BTreeMap::new();
        for (key, values) in meta.allowed {
            let toml::Value::Array(values) = values else {
                return Err(RenderError::Setting {
                    file: meta_source,
                    layer: "blueprint".to_owned(),
                    key: format!("allowed.{key}"),
                    reason: "must be a list of the values a branch may set".to_owned(),
                });
            };
            allowed.insert(key, values);
        }
        let blueprint = Self {
            name: name.to_owned(),
            description: meta.description,
            overridable: meta.overridable,
            seed,
            allowed,
            dynamic_references: meta.dynamic_references,
            artifact: meta.artifact,
            staging: layer("staging.toml", LayerKind::Stage(Stage::Staging))?,
            production: layer("production.toml", LayerKind::Stage(Stage::Production))?,
            preview: layer("preview.toml", LayerKind::Preview)?,
            waiting: layer("waiting.toml", LayerKind::Waiting)?,
            application: read_template(&dir, TemplateKind::Application)?,
            environment,
            defaults,
            dir,
        };
        blueprint.check()?;
        Ok(blueprint)
    }

    /// Every fixed layer merges, and every overridable key exists.
    fn check(&self) -> Result<(), RenderError> {
        let none = RepoLayers::default();
        let settings = Settings::merge(&self.fixed_layers(Stage::Production, &none, false), &[])?;
        let mut staging = self.fixed_layers(Stage::Staging, &none, true);
        staging.extend(self.waiting.clone());
        Settings::merge(&staging, &[])?;
        for key in &self.overridable {
            let prefix = format!("{key}.");
            if settings.get(key).is_none() && !settings.iter().any(|(k, _)| k.starts_with(&prefix)) {
                return Err(RenderError::Setting {
                    file: self.dir.join("blueprint.toml").display().to_string(),
                    layer: "blueprint".to_owned(),
                    key: key.clone(),
                    reason: "listed as overridable but not declared in defaults.toml".to_owned(),
                });
            }
        }
        for key in &self.dynamic_references {
            if !is_overridable(key, &self.overridable) {
                return Err(RenderError::Setting {
                    file: self.dir.join("blueprint.toml").display().to_string(),
                    layer: "blueprint".to_owned(),
                    key: format!("dynamic_references.{key}"),
                    reason: "names a key that is not overridable".to_owned(),
                });
            }
        }
        let defaults = Settings::merge(std::slice::from_ref(&self.defaults), &[])?;
        for (key, values) in &self.allowed {
            let err = |reason: String| RenderError::Setting {
                file: self.dir.join("blueprint.toml").display().to_string(),
                layer: "blueprint".to_owned(),
                key: format!("allowed.{key}"),
                reason,
            };
            if !self.overridable.iter().any(|o| o == key || key.starts_with(&format!("{o}."))) {
                return Err(err("restricts a key that is not overridable".to_owned()));
            }
            let default = defaults.get(key).ok_or_else(|| err("not declared in defaults.toml".to_owned()))?;
            if let Some(v) = values.iter().find(|v| v.type_str() != default.value.type_str()) {
                return Err(err(format!("{v} is a {}, the default a {}", v.type_str(), default.value.type_str())));
            }
        }
        Ok(())
    }

    /// A branch's own value outside its key's allowed values, or holding a dynamic reference where the
    /// blueprint allows none, is refused, naming file, key and layer.
    fn check_branch_values(&self, settings: &Settings) -> Result<(), RenderError> {
        for (key, s) in settings.iter().filter(|(_, s)| s.origin.kind == LayerKind::Branch) {
            if holds_dynamic_reference(&s.value) && !is_overridable(key, &self.dynamic_references) {
                return Err(RenderError::Setting {
                    file: s.origin.source.clone(),
                    layer: s.origin.kind.to_string(),
                    key: key.to_owned(),
                    reason: "a branch may not set a CloudFormation dynamic reference ({{resolve:…}}): it would \
                             be resolved with the stack's role"
                        .to_owned(),
                });
            }
        }
        for (key, values) in &self.allowed {
            let Some(s) = settings.get(key).filter(|s| s.origin.kind == LayerKind::Branch) else { continue };
            if !values.contains(&s.value) {
                let list: Vec<String> = values.iter().map(ToString::to_string).collect();
                return Err(RenderError::Setting {
                    file: s.origin.source.clone(),
                    layer: s.origin.kind.to_string(),
                    key: key.clone(),
                    reason: format!(
                        "{} is not allowed here; allowed: {}",
                        previewd_domain::text::quote(&s.value.to_string()),
                        list.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    fn fixed_layers(&self, stage: Stage, repo: &RepoLayers, preview: bool) -> Vec<Layer> {
        let stage_layer = match stage {
            Stage::Staging => &self.staging,
            Stage::Production => &self.production,
        };
        let repo_stage = repo.stages.iter().filter(|l| l.kind == LayerKind::Stage(stage));
        let preview = if preview { self.preview.as_ref() } else { None };
        std::iter::once(&self.defaults).chain(stage_layer).chain(repo_stage).chain(preview).cloned().collect()
    }

    /// The settings of the application stack of a stage: defaults → stage.
    pub fn application_settings(&self, stage: Stage, repo: &RepoLayers) -> Result<Settings, RenderError> {
        Settings::merge(&self.fixed_layers(stage, repo, false), &self.overridable)
    }

    /// The settings of a branch's environment stack. In `staging` (where branch environments live):
    /// defaults → staging → preview → matching patterns in order → the branch's own overrides. In
    /// `production`: defaults → production, and nothing branch-specific.
    pub fn environment_settings(
        &self,
        stage: Stage,
        branch: &BranchName,
        repo: &RepoLayers,
        own: Option<&Layer>,
    ) -> Result<Settings, RenderError> {
        let mut layers = self.fixed_layers(stage, repo, stage == Stage::Staging);
        if stage == Stage::Staging {
            layers.extend(repo.patterns.iter().filter(|p| p.matches(branch)).map(|p| p.layer.clone()));
            layers.extend(own.cloned());
        }
        let settings = Settings::merge(&layers, &self.overridable)?;
        self.check_branch_values(&settings)?;
        Ok(settings)
    }

    /// The settings a branch environment runs with while its commit's artifact is missing: its own
    /// settings with the blueprint's waiting layer on top; `None` when the blueprint has none (then the
    /// whole stack waits for the artifact).
    pub fn waiting_settings(
        &self,
        branch: &BranchName,
        repo: &RepoLayers,
        own: Option<&Layer>,
    ) -> Result<Option<Settings>, RenderError> {
        let Some(waiting) = &self.waiting else { return Ok(None) };
        let mut layers = self.fixed_layers(Stage::Staging, repo, true);
        layers.extend(repo.patterns.iter().filter(|p| p.matches(branch)).map(|p| p.layer.clone()));
        layers.extend(own.cloned());
        layers.push(waiting.clone());
        let settings = Settings::merge(&layers, &self.overridable)?;
        self.check_branch_values(&settings)?;
        Ok(Some(settings))
    }

    /// What "ready" asks of the environment named `dns_name` at commit `sha`, from its settings.
    pub fn rules(&self, settings: &Settings, sha: &str, dns_name: &str) -> Result<Rules, RenderError> {
        ready::rules(settings, self.artifact.as_ref(), sha, dns_name)
    }

    pub fn render(&self, kind: TemplateKind, settings: &Settings, ctx: &Context) -> Result<Rendered, RenderError> {
        let template = match kind {
            TemplateKind::Application => &self.application,
            TemplateKind::Environment => &self.environment,
        };
        let file = self.dir.join(kind.file_name()).display().to_string();
        let rendered = template::render(&file, template, settings, ctx, &self.dynamic_references)?;
        match kind {
            TemplateKind::Application => Ok(rendered),
            TemplateKind::Environment => template::declare_emptied_buckets(rendered, &file),
        }
    }
}

/// The file's text, `None` if it does not exist, an error naming file and layer otherwise.
fn read(path: &Path, layer: &str) -> Result<Option<String>, RenderError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => {
            Err(RenderError::Unreadable { file: path.display().to_string(), layer: layer.to_owned(), source })
        }
    }
}

fn read_template(dir: &Path, kind: TemplateKind) -> Result<Json, RenderError> {
    let path = dir.join(kind.file_name());
    let file = path.display().to_string();
    let text = read(&path, "template")?.ok_or_else(|| RenderError::Unreadable {
        file: file.clone(),
        layer: "template".to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    serde_json::from_str(&text).map_err(|e| RenderError::Syntax {
        file,
        layer: "template".to_owned(),
        format: "JSON",
        message: e.to_string(),
    })
}
