//! `previewd render` and `previewd explain`: what a branch's environment would be, computed from the
//! blueprint, the configuration and (optionally) a local `.previewd.toml`, with neither AWS nor GitHub.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use previewd_domain::{BranchName, CommitSha, DnsZone, EnvNames, OwnerId, RepoName, Stage, app_stack_name};
use previewd_render::{
    Blueprint, Context, Layer, LayerKind, Rendered, Setting, Settings, TEMPLATE_BODY_MAX, TemplateKind, setting_json,
};

use crate::config::Config;

/// Offline renders need names even where no installation is configured; these stand in, with a note.
const PLACEHOLDER_OWNER: &str = "local";
const PLACEHOLDER_ZONE: &str = "preview.example.com";
const PLACEHOLDER_SHA: &str = "0000000000000000000000000000000000000000";

#[derive(Debug, Args)]
pub struct Target {
    /// The repository, `owner/name`, as configured.
    #[arg(long)]
    repo: RepoName,
    /// The branch, exactly as git names it.
    #[arg(long)]
    branch: BranchName,
    /// `staging` is where branch environments live; `production` renders the production settings.
    #[arg(long, default_value = "staging", value_parser = parse_stage)]
    stage: Stage,
    /// A `.previewd.toml` to use as the branch's own overrides (previewd reads it from the branch itself).
    #[arg(long, value_name = "FILE")]
    overrides: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, value_enum, default_value_t = TemplateArg::Environment)]
    template: TemplateArg,
    /// The commit to render for (the image tag); a placeholder if not given.
    #[arg(long)]
    sha: Option<CommitSha>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    target: Target,
    /// Show, key by key, how the branch's environment differs from this stage.
    #[arg(long, value_name = "STAGE", value_parser = parse_stage)]
    diff: Option<Stage>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TemplateArg {
    Environment,
    Application,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    s.parse().map_err(|e: previewd_domain::NameError| e.to_string())
}

struct Resolved {
    blueprint: Blueprint,
    own: Option<Layer>,
}

fn resolve(config: &Config, target: &Target) -> anyhow::Result<Resolved> {
    let repo = config.repo(&target.repo)?;
    let blueprint = Blueprint::load(&config.stacks_dir, &repo.blueprint)?;
    let own = match &target.overrides {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read (branch overrides layer)", path.display()))?;
            Some(Layer::parse(LayerKind::Branch, path.display().to_string(), &text)?)
        }
        None => None,
    };
    Ok(Resolved { blueprint, own })
}

fn environment_settings(config: &Config, target: &Target, r: &Resolved, stage: Stage) -> anyhow::Result<Settings> {
    let repo = config.repo(&target.repo)?;
    Ok(r.blueprint.environment_settings(stage, &target.branch, &repo.layers, r.own.as_ref())?)
}

pub fn render(config: &Config, args: &RenderArgs, out: &mut String, notes: &mut Vec<String>) -> anyhow::Result<()> {
    let t = &args.target;
    let r = resolve(config, t)?;
    let owner = config.owner.clone().unwrap_or_else(|| {
        notes.push(format!(
            "no owner configured (PREVIEWD_OWNER): bucket names use the placeholder `{PLACEHOLDER_OWNER}`"
        ));
        OwnerId::new(PLACEHOLDER_OWNER).expect("valid placeholder")
    });
    let zone = config.zone_of(config.repo(&t.repo)?).cloned().unwrap_or_else(|| {
        notes.push(format!(
            "no DNS zone configured (PREVIEWD_DNS_ZONE): names use the placeholder `{PLACEHOLDER_ZONE}`"
        ));
        DnsZone::new(PLACEHOLDER_ZONE).expect("valid placeholder")
    });
    let app_stack = app_stack_name(&t.repo, t.stage);
    let ctx = Context::application(owner.as_str(), &t.repo, t.stage, &app_stack);
    let rendered: Rendered = match args.template {
        TemplateArg::Application => {
            let settings = r.blueprint.application_settings(t.stage, &config.repo(&t.repo)?.layers)?;
            r.blueprint.render(TemplateKind::Application, &settings, &ctx)?
        }
        TemplateArg::Environment => {
            let sha = args.sha.clone().unwrap_or_else(|| {
                notes.push("no --sha given: the image tag uses a placeholder commit".to_owned());
                CommitSha::new(PLACEHOLDER_SHA).expect("valid placeholder")
            });
            // The names a new environment of this branch takes when no other one holds its readable key.
            let names = EnvNames::readable(&owner, &t.repo, &t.branch, &zone)
                .unwrap_or_else(|| EnvNames::new(&owner, &t.repo, &t.branch, &zone));
            let ctx = ctx.with_environment(t.branch.as_str(), sha.as_str(), &names, names.env_key.rule_priority_hint());
            let settings = environment_settings(config, t, &r, t.stage)?;
            r.blueprint.render(TemplateKind::Environment, &settings, &ctx)?
        }
    };
    if rendered.needs_template_url() {
        notes.push(format!(
            "the template is {} bytes, over CloudFormation's {TEMPLATE_BODY_MAX}-byte TemplateBody limit: \
             previewd uploads it to S3 and passes a TemplateURL",
            rendered.body.len()
        ));
    }
    out.push_str(&rendered.pretty());
    out.push('\n');
    Ok(())
}

pub fn explain(config: &Config, args: &ExplainArgs, out: &mut String) -> anyhow::Result<()> {
    let t = &args.target;
    let r = resolve(config, t)?;
    let settings = environment_settings(config, t, &r, t.stage)?;
    match args.diff {
        None => {
            explain_all(&settings, args.format, out);
            // The blueprint's waiting layer, as its own rows after the rest: what the environment runs with
            // while its commit's artifact is missing (text only: the JSON keeps one row per key).
            if args.format != Format::Json && t.stage == Stage::Staging {
                let repo = config.repo(&t.repo)?;
                if let Some(waiting) = r.blueprint.waiting_settings(&t.branch, &repo.layers, r.own.as_ref())? {
                    explain_waiting(&settings, &waiting, out);
                }
            }
        }
        Some(base) => {
            let base_settings = environment_settings(config, t, &r, base)?;
            explain_diff(t, base, &base_settings, &settings, args.format, out);
        }
    }
    Ok(())
}

fn value_text(s: &Setting) -> String {
    setting_json(s).to_string()
}

fn json_row(key: &str, s: &Setting) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "value": setting_json(s),
        "layer": s.origin.kind.to_string(),
        "source": s.origin.source,
    })
}

fn explain_all(settings: &Settings, format: Format, out: &mut String) {
    if format == Format::Json {
        let rows: Vec<_> = settings.iter().map(|(k, s)| json_row(k, s)).collect();
        out.push_str(&serde_json::to_string_pretty(&rows).unwrap_or_default());
        out.push('\n');
        return;
    }
    let key_w = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    let val_w = settings.iter().map(|(_, s)| value_text(s).chars().count()).max().unwrap_or(5).clamp(5, 40);
    let _ = writeln!(out, "{:key_w$}  {:val_w$}  LAYER (SOURCE)", "KEY", "VALUE");
    for (key, s) in settings.iter() {
        let _ = writeln!(out, "{key:key_w$}  {:val_w$}  {} ({})", value_text(s), s.origin.kind, s.origin.source);
    }
}

fn explain_waiting(settings: &Settings, waiting: &Settings, out: &mut String) {
    let rows: Vec<(&str, &Setting)> = waiting
        .iter()
        .filter(|(_, s)| s.origin.kind == previewd_render::LayerKind::Waiting)
        .filter(|(k, s)| settings.get(k).is_none_or(|b| b.value != s.value))
        .collect();
    let key_w = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    let val_w = settings.iter().map(|(_, s)| value_text(s).chars().count()).max().unwrap_or(5).clamp(5, 40);
    for (key, s) in rows {
        let _ = writeln!(out, "{key:key_w$}  {:val_w$}  {} ({})", value_text(s), s.origin.kind, s.origin.source);
    }
}

fn explain_diff(
    t: &Target,
    base: Stage,
    base_settings: &Settings,
    settings: &Settings,
    format: Format,
    out: &mut String,
) {
    let differing: Vec<(&str, &Setting, &Setting)> = settings
        .iter()
        .filter_map(|(k, s)| base_settings.get(k).filter(|b| b.value != s.value).map(|b| (k, b, s)))
        .collect();
    if format == Format::Json {
        let rows: Vec<_> = differing
            .iter()
            .map(|(k, b, s)| serde_json::json!({ "key": k, base.as_str(): json_row(k, b), "branch": json_row(k, s) }))
            .collect();
        out.push_str(&serde_json::to_string_pretty(&rows).unwrap_or_default());
        out.push('\n');
        return;
    }
    let who = format!("{} ({})", t.branch, t.stage);
    if differing.is_empty() {
        let _ = writeln!(out, "{who} has the same settings as {base}.");
        return;
    }
    let _ =
        writeln!(out, "How {who} differs from {base}: {} of {} settings\n", differing.len(), settings.iter().count());
    let label_w = who.chars().count().max(base.as_str().len()) + 1;
    for (key, b, s) in differing {
        let _ = writeln!(out, "{key}");
        let value_w = value_text(b).chars().count().max(value_text(s).chars().count());
        for (label, v) in [(format!("{base}:"), b), (format!("{who}:"), s)] {
            let _ = writeln!(
                out,
                "  {label:label_w$}  {:value_w$}  ← {} ({})",
                value_text(v),
                v.origin.kind,
                v.origin.source
            );
        }
    }
}
