//! Turns a blueprint and layered settings into CloudFormation templates, offline.
//!
//! Settings merge in this order, later wins, tables key by key: blueprint defaults → stage → preview →
//! branch-pattern overrides from the configuration → the branch's own `.previewd.toml`. Each value keeps
//! the layer that set it ([`Settings`]). Templates are JSON with a few structural directives
//! ([`template`]), expanded into plain CloudFormation JSON with every value fixed: no Parameters.

mod blueprint;
mod error;
pub mod ready;
pub mod seed;
mod settings;
pub mod template;

pub use blueprint::{Blueprint, PatternOverride, RepoLayers, TemplateKind};
pub use error::RenderError;
pub use ready::{Artifact, ArtifactSpec, EcrImage, ProbeRules, Rules};
pub use seed::{EcsTaskStep, HttpStep, Ref, RefError, SeedKind, SeedSource, SeedStep, SqlStep};
pub use settings::{Layer, LayerKind, Origin, Setting, Settings, holds_dynamic_reference, toml_error};
pub use template::{Context, Rendered, TEMPLATE_BODY_MAX};

/// A setting's value as JSON, the form it takes in a template.
pub fn setting_json(setting: &Setting) -> serde_json::Value {
    template::to_json(&setting.value)
}
