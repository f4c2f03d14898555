//! Seed steps: test data a blueprint puts into a new environment once, after its stack's first create.
//!
//! They are declared in `blueprint.toml` as `[[seed]]` tables, run in order:
//!
//! ```toml
//! [[seed]]
//! name = "fixtures"
//! kind = "s3_copy"              # files under stacks/<blueprint>/<from>, or from = "s3://bucket/prefix"
//! from = "seed/fixtures"
//! bucket = { output = "BucketName" }
//!
//! [[seed]]
//! name = "sample rows"
//! kind = "sql"
//! when = "database.enabled"     # only when this boolean setting is true
//! files = ["seed/sample.sql"]
//! host = { output = "DatabaseEndpoint" }
//! database = "app"
//! secret = { output = "DatabaseSecretArn" }   # Secrets Manager: {"username", "password"}
//! ```
//!
//! A value is written as it is, or taken from the stack's outputs (`{ output = "Name" }`) or from the
//! environment's settings (`{ setting = "key" }`); a list setting (subnets, say) gives a list.
//! Everything is checked when the blueprint loads: kinds, keys, files, settings and outputs.

use std::path::Path;

use serde::Deserialize;
use toml::{Table, Value};

use crate::{RenderError, Settings};

/// A value of a seed step: as written, or looked up when the step runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Literal(String),
    Output { output: String },
    Setting { setting: String },
}

/// What a seed step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedKind {
    /// Objects into the environment's bucket: the files under a folder of the blueprint (keys relative to
    /// it), or every object under an S3 prefix (`s3://bucket/prefix`).
    S3Copy { from: SeedSource, bucket: Ref, prefix: String },
    /// SQL files run in order against the environment's PostgreSQL database, each in one transaction.
    Sql(SqlStep),
    /// POST a signed JSON body (repository, branch, commit, URL) to a URL; any 2xx is success.
    Http(HttpStep),
    /// A one-off ECS task (the task definition with one container's command replaced), waited for until
    /// it stops; exit code 0 is success.
    EcsTask(EcsTaskStep),
}

impl SeedKind {
    pub fn name(&self) -> &'static str {
        match self {
            SeedKind::S3Copy { .. } => "s3_copy",
            SeedKind::Sql(_) => "sql",
            SeedKind::Http(_) => "http",
            SeedKind::EcsTask(_) => "ecs_task",
        }
    }
}

/// Where an `s3_copy` step's objects come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    /// A folder of the blueprint (relative to `stacks/<blueprint>/`).
    Files(String),
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedStep {
    pub name: String,
    /// A boolean setting: the step runs only where it is true.
    pub when: Option<String>,
    pub kind: SeedKind,
}

impl SeedStep {
    /// Does the step run in an environment with these settings?
    pub fn applies(&self, settings: &Settings) -> bool {
        self.when.as_ref().is_none_or(|key| settings.get(key).is_some_and(|s| s.value == Value::Boolean(true)))
    }

    /// Every reference the step makes, for checking.
    fn refs(&self) -> Vec<&Ref> {
        match &self.kind {
            SeedKind::S3Copy { bucket, .. } => vec![bucket],
            SeedKind::Sql(s) => vec![&s.host, &s.port, &s.database, &s.secret],
            SeedKind::Http(h) => vec![&h.url],
            SeedKind::EcsTask(t) => {
                [Some(&t.cluster), Some(&t.task_definition), t.subnets.as_ref(), t.security_groups.as_ref()]
                    .into_iter()
                    .flatten()
                    .collect()
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S3CopyToml {
    from: String,
    bucket: Ref,
    #[serde(default)]
    prefix: String,
}

/// A `sql` step: `files` run against `host`:`port`/`database` as the user in `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlStep {
    pub files: Vec<String>,
    pub host: Ref,
    #[serde(default = "default_port")]
    pub port: Ref,
    pub database: Ref,
    /// A Secrets Manager secret: JSON with `username` and `password`.
    pub secret: Ref,
}

fn default_port() -> Ref {
    Ref::Literal("5432".to_owned())
}

/// An `http` step: a signed POST to `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub url: Ref,
}

/// An `ecs_task` step: `task_definition` on `cluster`, `container` running `command` (Fargate in `subnets`
/// when given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcsTaskStep {
    pub cluster: Ref,
    pub task_definition: Ref,
    pub container: String,
    pub command: Vec<String>,
    pub subnets: Option<Ref>,
    pub security_groups: Option<Ref>,
    #[serde(default)]
    pub assign_public_ip: bool,
}

/// Reads the `[[seed]]` tables of `blueprint.toml` (`file`), checking each against the blueprint's folder
/// (`dir`), its default settings and its environment template's outputs.
pub(crate) fn parse(
    file: &str,
    dir: &Path,
    tables: Vec<Table>,
    defaults: &Settings,
    outputs: &[String],
) -> Result<Vec<SeedStep>, RenderError> {
    tables.into_iter().enumerate().map(|(i, table)| parse_one(file, dir, i, table, defaults, outputs)).collect()
}

fn parse_one(
    file: &str,
    dir: &Path,
    i: usize,
    mut table: Table,
    defaults: &Settings,
    outputs: &[String],
) -> Result<SeedStep, RenderError> {
    let at = format!("seed[{i}]");
    let err = |key: &str, reason: String| RenderError::Setting {
        file: file.to_owned(),
        layer: "blueprint".to_owned(),
        key: format!("{at}.{key}"),
        reason,
    };
    let mut take_str = |key: &str, required: bool| -> Result<Option<String>, RenderError> {
        match table.remove(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
            Some(_) => Err(err(key, "must be a non-empty string".to_owned())),
            None if required => Err(err(key, "is required".to_owned())),
            None => Ok(None),
        }
    };
    let name = take_str("name", true)?.unwrap_or_default();
    let kind = take_str("kind", true)?.unwrap_or_default();
    let when = take_str("when", false)?;
    let rest = Value::Table(table);
    let shape = |e: toml::de::Error| err("", format!("{kind} step: {}", e.message().trim()));
    let kind = match kind.as_str() {
        "s3_copy" => {
            let t: S3CopyToml = rest.try_into().map_err(shape)?;
            let from = match t.from.strip_prefix("s3://") {
                Some(rest) => {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(err("from", "names no bucket: write s3://bucket/prefix".to_owned()));
                    }
                    SeedSource::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() }
                }
                None => {
                    check_relative(&t.from).map_err(|r| err("from", r))?;
                    if !dir.join(&t.from).is_dir() {
                        return Err(err("from", format!("{} is not a folder of the blueprint", t.from)));
                    }
                    SeedSource::Files(t.from)
                }
            };
            SeedKind::S3Copy { from, bucket: t.bucket, prefix: t.prefix }
        }
        "sql" => {
            let t: SqlStep = rest.try_into().map_err(shape)?;
            if t.files.is_empty() {
                return Err(err("files", "lists no SQL file".to_owned()));
            }
            for f in &t.files {
                check_relative(f).map_err(|r| err("files", r))?;
                if !dir.join(f).is_file() {
                    return Err(err("files", format!("{f} is not a file of the blueprint")));
                }
            }
            SeedKind::Sql(t)
        }
        "http" => SeedKind::Http(rest.try_into().map_err(shape)?),
        "ecs_task" => {
            let t: EcsTaskStep = rest.try_into().map_err(shape)?;
            if t.command.is_empty() {
                return Err(err("command", "is empty".to_owned()));
            }
            SeedKind::EcsTask(t)
        }
        other => return Err(err("kind", format!("unknown kind {other:?}: expected s3_copy, sql, http or ecs_task"))),
    };
    let step = SeedStep { name, when, kind };
    if let Some(key) = &step.when
        && !matches!(defaults.get(key).map(|s| &s.value), Some(Value::Boolean(_)))
    {
        return Err(err("when", format!("{key} is not a boolean setting of defaults.toml")));
    }
    for r in step.refs() {
        match r {
            Ref::Setting { setting } if defaults.get(setting).is_none() => {
                return Err(err("", format!("setting {setting} is not declared in defaults.toml")));
            }
            Ref::Output { output } if !outputs.iter().any(|o| o == output) => {
                return Err(err("", format!("output {output} is not declared in environment.json")));
            }
            _ => {}
        }
    }
    Ok(step)
}

/// A path inside the blueprint's folder: relative, and never climbing out of it.
fn check_relative(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("{path} must be a path inside the blueprint's folder"));
    }
    Ok(())
}

/// A reference resolved against the stack's outputs and the environment's settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefError {
    #[error("the stack has no output {0}")]
    NoOutput(String),
    #[error("setting {0} is not set")]
    NoSetting(String),
    #[error("setting {0} is not a string or a list of strings")]
    NotText(String),
}

impl Ref {
    /// The value as one string (a list setting joined with commas).
    pub fn resolve(
        &self,
        outputs: &std::collections::BTreeMap<String, String>,
        settings: &Settings,
    ) -> Result<String, RefError> {
        Ok(self.resolve_list(outputs, settings)?.join(","))
    }

    /// The value as a list: a list setting item by item, anything else split at commas (an output holds
    /// one string; CloudFormation joins lists with commas).
    pub fn resolve_list(
        &self,
        outputs: &std::collections::BTreeMap<String, String>,
        settings: &Settings,
    ) -> Result<Vec<String>, RefError> {
        let split = |s: &str| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        match self {
            Ref::Literal(s) => Ok(vec![s.clone()]),
            Ref::Output { output } => {
                outputs.get(output).map(|s| split(s)).ok_or_else(|| RefError::NoOutput(output.clone()))
            }
            Ref::Setting { setting } => match settings.get(setting).map(|s| &s.value) {
                None => Err(RefError::NoSetting(setting.clone())),
                Some(Value::String(s)) => Ok(vec![s.clone()]),
                Some(Value::Integer(n)) => Ok(vec![n.to_string()]),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| RefError::NotText(setting.clone())))
                    .collect(),
                Some(_) => Err(RefError::NotText(setting.clone())),
            },
        }
    }
}
