//! Every blueprint, for every stage, for a set of hostile branch names and with its optional parts on and
//! off, rendered and checked by `cfn-lint` (pinned in deploy/requirements-dev.txt). Any error fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use previewd_domain::{BranchName, DnsZone, EnvNames, OwnerId, RepoName, Stage, app_stack_name};
use previewd_render::{Blueprint, Context, PatternOverride, RepoLayers, TemplateKind};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `CFN_LINT`, else the project's `.venv`, else `cfn-lint` on the PATH.
fn cfn_lint() -> PathBuf {
    if let Some(p) = std::env::var_os("CFN_LINT") {
        return p.into();
    }
    let venv = root().join(".venv/bin/cfn-lint");
    if venv.is_file() { venv } else { "cfn-lint".into() }
}

fn hostile_branches() -> Vec<BranchName> {
    std::fs::read_to_string(root().join("tests/fixtures/hostile-branches.txt"))
        .expect("fixture")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("# "))
        .map(|l| BranchName::new(l).expect("valid branch"))
        .collect()
}

/// Variants that switch optional parts: the database off, authentication on.
fn variants() -> Vec<(&'static str, RepoLayers)> {
    let pattern = |text: &str| RepoLayers {
        stages: vec![],
        patterns: vec![PatternOverride::new("**", "test", text.parse().expect("toml")).expect("glob")],
    };
    vec![
        ("plain", RepoLayers::default()),
        ("no-database", pattern("database.enabled = false")),
        ("oidc", pattern("auth.oidc = true")),
    ]
}

#[test]
fn every_rendering_passes_cfn_lint() {
    let out = tempfile::tempdir().expect("tempdir");
    let stacks = root().join("stacks");
    let repo = RepoName::new("acme/shop").expect("repo");
    let owner = OwnerId::new("acme-previews").expect("owner");
    let zone = DnsZone::new("preview.example.com").expect("zone");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let mut files = Vec::new();
    let blueprints = Blueprint::available(&stacks);
    assert_eq!(blueprints, ["beanstalk", "webapp"]);
    for name in &blueprints {
        let bp = Blueprint::load(&stacks, name).expect("loads");
        for (variant, layers) in variants() {
            if variant == "oidc"
                && bp.environment_settings(Stage::Staging, &BranchName::new("x").expect("b"), &layers, None).is_err()
            {
                continue; // the blueprint has no authentication setting
            }
            for stage in Stage::ALL {
                let app = app_stack_name(&repo, stage);
                let ctx = Context::application(owner.as_str(), &repo, stage, &app);
                let settings = bp.application_settings(stage, &layers).expect("settings");
                let rendered = bp.render(TemplateKind::Application, &settings, &ctx).expect("renders");
                let file = out.path().join(format!("{name}-{variant}-{stage}-application.json"));
                std::fs::write(&file, rendered.body).expect("write");
                files.push(file);
                // Branch names only reach string values; the optional parts need one name each.
                let branches = if variant == "plain" {
                    hostile_branches()
                } else {
                    vec![BranchName::new("feature/login").expect("b")]
                };
                for (i, branch) in branches.iter().enumerate() {
                    let names = EnvNames::new(&owner, &repo, branch, &zone);
                    let ctx =
                        ctx.clone().with_environment(branch.as_str(), sha, &names, names.env_key.rule_priority_hint());
                    let settings = bp.environment_settings(stage, branch, &layers, None).expect("settings");
                    let rendered = bp.render(TemplateKind::Environment, &settings, &ctx).expect("renders");
                    let file = out.path().join(format!("{name}-{variant}-{stage}-environment-{i}.json"));
                    std::fs::write(&file, rendered.body).expect("write");
                    files.push(file);
                }
            }
        }
    }
    let lint = cfn_lint();
    let output = Command::new(&lint)
        .args(["--regions", "us-east-1", "--non-zero-exit-code", "error", "--format", "parseable", "--"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): ./test.sh installs it into .venv", lint.display()));
    let report = String::from_utf8_lossy(&output.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.contains(":E")).collect();
    assert!(
        output.status.success() && errors.is_empty(),
        "cfn-lint found errors in {} templates (exit {:?}):\n{}\n{}",
        files.len(),
        output.status.code(),
        report,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("cfn-lint: {} templates, no errors", files.len());
}
