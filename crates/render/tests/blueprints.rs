//! The shipped blueprints, rendered: snapshots pin every template, and hostile branch names or setting
//! values are shown to change string values only, never the shape of a template.

use std::path::{Path, PathBuf};

use previewd_domain::{BranchName, DnsZone, EnvNames, OwnerId, RepoName, Stage, app_stack_name};
use previewd_render::{Blueprint, Context, Layer, LayerKind, PatternOverride, Rendered, RepoLayers, TemplateKind};
use serde_json::Value as Json;

fn stacks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stacks")
}

fn hostile_branches() -> Vec<BranchName> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hostile-branches.txt");
    std::fs::read_to_string(path)
        .expect("fixture")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("# "))
        .map(|l| BranchName::new(l).unwrap_or_else(|e| panic!("fixture holds an invalid branch: {e}")))
        .collect()
}

fn render(bp: &Blueprint, kind: TemplateKind, stage: Stage, branch: &str, repo_layers: &RepoLayers) -> Rendered {
    let repo = RepoName::new("acme/shop").expect("repo");
    let owner = OwnerId::new("acme-previews").expect("owner");
    let app = app_stack_name(&repo, stage);
    let ctx = Context::application(owner.as_str(), &repo, stage, &app);
    match kind {
        TemplateKind::Application => {
            let settings = bp.application_settings(stage, repo_layers).expect("settings");
            bp.render(kind, &settings, &ctx).expect("renders")
        }
        TemplateKind::Environment => {
            let branch = BranchName::new(branch).expect("branch");
            let names = EnvNames::new(&owner, &repo, &branch, &DnsZone::new("preview.example.com").expect("zone"));
            let ctx =
                ctx.with_environment(branch.as_str(), &"ab".repeat(20), &names, names.env_key.rule_priority_hint());
            let settings = bp.environment_settings(stage, &branch, repo_layers, None).expect("settings");
            bp.render(kind, &settings, &ctx).expect("renders")
        }
    }
}

/// The template with every string, number and boolean replaced by its type: what a value could never
/// change if insertion is structural.
fn shape(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Json::Array(items) => Json::Array(items.iter().map(shape).collect()),
        Json::String(_) => Json::from("string"),
        Json::Number(_) => Json::from("number"),
        Json::Bool(_) => Json::from("bool"),
        Json::Null => Json::Null,
    }
}

const BLUEPRINTS: [&str; 2] = ["webapp", "beanstalk"];
const KINDS: [TemplateKind; 2] = [TemplateKind::Application, TemplateKind::Environment];

#[test]
fn rendered_templates_are_pinned() {
    for name in BLUEPRINTS {
        let bp = Blueprint::load(&stacks_dir(), name).expect("loads");
        for stage in Stage::ALL {
            for kind in KINDS {
                let r = render(&bp, kind, stage, "feature/login", &RepoLayers::default());
                assert!(!r.needs_template_url(), "{name} {stage} {kind:?} fits a TemplateBody");
                let kind_name = kind.file_name().trim_end_matches(".json");
                insta::assert_json_snapshot!(format!("{name}-{stage}-{kind_name}"), r.template);
            }
        }
    }
}

#[test]
fn a_beanstalk_environment_has_a_name_that_resolves_and_is_told_its_real_scheme() {
    let bp = Blueprint::load(&stacks_dir(), "beanstalk").expect("loads");
    for (stage, scheme) in [(Stage::Staging, "http"), (Stage::Production, "https")] {
        let branch = "feature/a-very-long-branch-name-that-goes-on-and-on-past-any-limit-beanstalk-has";
        let t = render(&bp, TemplateKind::Environment, stage, branch, &RepoLayers::default()).template;
        let text = t.to_string();
        // Never EndpointURL: a single instance's is its IP address, which a CNAME cannot point at.
        assert!(!text.contains(r#"["Environment","EndpointURL"]"#), "{stage}: {text}");
        let prefix = t.pointer("/Resources/Environment/Properties/CNAMEPrefix").and_then(Json::as_str).expect("prefix");
        assert!(
            (4..=63).contains(&prefix.len())
                && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !prefix.starts_with('-')
                && !prefix.ends_with('-'),
            "a CNAMEPrefix Beanstalk accepts: {prefix}"
        );
        let endpoint = t.pointer("/Outputs/Endpoint/Value/Fn::Join/1").expect("endpoint");
        assert_eq!(endpoint[0], Json::from(prefix), "the environment's own name");
        assert_eq!(endpoint[3], Json::from(".elasticbeanstalk.com"));
        let url = t.pointer("/Outputs/Url/Value").and_then(Json::as_str).expect("url");
        assert!(url.starts_with(&format!("{scheme}://")), "{stage}: {url}");
        let options =
            t.pointer("/Resources/Environment/Properties/OptionSettings").and_then(Json::as_array).expect("options");
        let public = options.iter().find(|o| o["OptionName"] == "PUBLIC_URL").expect("PUBLIC_URL");
        assert_eq!(public["Value"], Json::from(url), "the app is told the URL it has");
        assert_eq!(t.pointer("/Conditions/Https/Fn::Equals/0"), Some(&Json::from(scheme)), "the HTTPS listener");
        // The probe asks as the app is reached.
        let branch = BranchName::new(branch).expect("branch");
        let settings = bp.environment_settings(stage, &branch, &RepoLayers::default(), None).expect("settings");
        let rules = bp.rules(&settings, &"ab".repeat(20), "x.preview.example.com").expect("rules");
        let probe = rules.probe.expect("probed").url;
        assert!(probe.starts_with(&format!("{scheme}://x.preview.example.com/")), "{stage}: {probe}");
    }
}

#[test]
fn previews_are_cheaper_than_production() {
    let bp = Blueprint::load(&stacks_dir(), "webapp").expect("loads");
    let preview =
        render(&bp, TemplateKind::Environment, Stage::Staging, "feature/login", &RepoLayers::default()).template;
    let prod =
        render(&bp, TemplateKind::Environment, Stage::Production, "feature/login", &RepoLayers::default()).template;
    let at = |t: &Json, p: &str| t.pointer(p).cloned().unwrap_or(Json::Null);
    assert_eq!(at(&preview, "/Resources/Service/Properties/DesiredCount"), Json::from(1));
    assert_eq!(at(&prod, "/Resources/Service/Properties/DesiredCount"), Json::from(3));
    assert_eq!(at(&preview, "/Resources/TaskDefinition/Properties/Cpu"), Json::from("256"));
    assert_eq!(at(&preview, "/Resources/Database/Properties/DBInstanceClass"), Json::from("db.t4g.micro"));
    assert_eq!(at(&preview, "/Resources/Database/Properties/MultiAZ"), Json::from(false));
    assert_eq!(at(&preview, "/Resources/Database/Properties/BackupRetentionPeriod"), Json::from(0));
    assert_eq!(at(&prod, "/Resources/Database/Properties/MultiAZ"), Json::from(true));
}

#[test]
fn optional_parts_come_and_go_with_their_settings() {
    let bp = Blueprint::load(&stacks_dir(), "webapp").expect("loads");
    let layers = |text: &str| RepoLayers {
        stages: vec![],
        patterns: vec![PatternOverride::new("**", "test", text.parse().expect("toml")).expect("glob")],
    };
    let no_db =
        render(&bp, TemplateKind::Environment, Stage::Staging, "x", &layers("database.enabled = false")).template;
    let resources = no_db["Resources"].as_object().expect("resources");
    assert!(!resources.keys().any(|k| k.starts_with("Database")), "{:?}", resources.keys());
    assert!(no_db.pointer("/Outputs/DatabaseEndpoint").is_none());
    let env = no_db.pointer("/Resources/TaskDefinition/Properties/ContainerDefinitions/0/Environment").expect("env");
    assert!(!env.to_string().contains("DATABASE_HOST"));

    let plain = render(&bp, TemplateKind::Environment, Stage::Staging, "x", &RepoLayers::default()).template;
    let actions =
        |t: &Json| t.pointer("/Resources/ListenerRule/Properties/Actions").and_then(Json::as_array).map(Vec::len);
    assert_eq!(actions(&plain), Some(1), "no authentication by default");
    let oidc = render(&bp, TemplateKind::Environment, Stage::Staging, "x", &layers("auth.oidc = true")).template;
    assert_eq!(actions(&oidc), Some(2));
    assert_eq!(
        oidc.pointer("/Resources/ListenerRule/Properties/Actions/0/Type"),
        Some(&Json::from("authenticate-oidc"))
    );
}

#[test]
fn hostile_branch_names_change_values_never_shape() {
    for name in BLUEPRINTS {
        let bp = Blueprint::load(&stacks_dir(), name).expect("loads");
        for stage in Stage::ALL {
            let reference =
                shape(&render(&bp, TemplateKind::Environment, stage, "main", &RepoLayers::default()).template);
            for branch in hostile_branches() {
                let r = render(&bp, TemplateKind::Environment, stage, branch.as_str(), &RepoLayers::default());
                assert_eq!(shape(&r.template), reference, "{name} {stage} {branch:?}");
                let host = r.template.pointer("/Outputs/Url/Value").and_then(Json::as_str).expect("url");
                let (_, host) = host.split_once("://").expect("a URL");
                let label = host.split('.').next().expect("label");
                assert!(
                    label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                );
            }
        }
    }
}

#[test]
fn hostile_setting_values_change_values_never_shape() {
    let evil = r#"{"Type":"AWS::IAM::User"}, "Resources": {"Evil": {}}
Resources:
  Evil: !Ref X"#;
    let bp = Blueprint::load(&stacks_dir(), "webapp").expect("loads");
    let mut table = toml::Table::new();
    let mut app = toml::Table::new();
    app.insert("log_level".into(), toml::Value::String(evil.into()));
    table.insert("app".into(), toml::Value::Table(app));
    let own = Layer { kind: LayerKind::Branch, source: ".previewd.toml".into(), table };
    let branch = BranchName::new("main").expect("branch");
    let repo = RepoName::new("acme/shop").expect("repo");
    let owner = OwnerId::new("acme").expect("owner");
    let names = EnvNames::new(&owner, &repo, &branch, &DnsZone::new("p.example.com").expect("zone"));
    let ctx = Context::application("acme", &repo, Stage::Staging, "app").with_environment("main", "sha", &names, 1);
    let settings =
        bp.environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&own)).expect("settings");
    let r = bp.render(TemplateKind::Environment, &settings, &ctx).expect("renders");
    let reference = render(&bp, TemplateKind::Environment, Stage::Staging, "main", &RepoLayers::default());
    assert_eq!(shape(&r.template), shape(&reference.template));
    assert!(r.body.contains(&serde_json::to_string(evil).expect("json")), "the value is there, as one string");
}

#[test]
fn a_branch_may_give_restricted_keys_only_their_allowed_values() {
    let bp = Blueprint::load(&stacks_dir(), "webapp").expect("webapp");
    let branch = BranchName::new("feat/big").expect("branch");
    let own = |text: &str| Layer::parse(LayerKind::Branch, ".previewd.toml at abc1234", text).expect("layer");
    let ok = bp
        .environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&own("service.cpu = \"512\"")))
        .expect("an allowed value");
    assert_eq!(ok.get("service.cpu").map(|s| s.value.to_string()), Some("\"512\"".to_owned()));
    let e = bp
        .environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&own("service.cpu = \"4096\"")))
        .expect_err("a value outside the list")
        .to_string();
    assert!(
        e.contains(".previewd.toml at abc1234") && e.contains("branch overrides") && e.contains("service.cpu"),
        "{e}"
    );
    assert!(e.contains("\"4096\" is not allowed here; allowed: \"256\", \"512\", \"1024\""), "{e}");
    // The configuration's own patterns are not restricted: operators may size a branch as they like.
    let patterns = RepoLayers {
        patterns: vec![
            PatternOverride::new("feat/*", "previewd.toml", toml::from_str("service.cpu = \"4096\"").expect("table"))
                .expect("pattern"),
        ],
        ..RepoLayers::default()
    };
    assert!(bp.environment_settings(Stage::Staging, &branch, &patterns, None).is_ok());
}

/// A key a branch may set that sizes what runs (and so what it costs) has a list of allowed values in every
/// shipped blueprint: `instances.type = "p5.48xlarge"` must not render.
#[test]
fn every_shipped_blueprint_bounds_what_a_branch_may_size() {
    const SIZING: [&str; 7] = ["cpu", "memory", "type", "class", "count", "min", "max"];
    for name in BLUEPRINTS {
        let bp = Blueprint::load(&stacks_dir(), name).expect("loads");
        for key in &bp.overridable {
            let last = key.rsplit('.').next().unwrap_or(key);
            if SIZING.contains(&last) {
                assert!(bp.allowed.contains_key(key), "{name}: a branch may set {key} to anything");
            }
        }
    }
    let bp = Blueprint::load(&stacks_dir(), "beanstalk").expect("beanstalk");
    let branch = BranchName::new("feat/gpu").expect("branch");
    let own = |text: &str| Layer::parse(LayerKind::Branch, ".previewd.toml", text).expect("layer");
    let e = bp
        .environment_settings(
            Stage::Staging,
            &branch,
            &RepoLayers::default(),
            Some(&own("instances.type = \"p5.48xlarge\"")),
        )
        .expect_err("a GPU instance")
        .to_string();
    assert!(e.contains("key `instances.type`: \"p5.48xlarge\" is not allowed here"), "{e}");
    bp.environment_settings(
        Stage::Staging,
        &branch,
        &RepoLayers::default(),
        Some(&own("instances.type = \"t4g.medium\"")),
    )
    .expect("a small instance");
}

#[test]
fn an_allowed_list_must_fit_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("webapp");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for f in std::fs::read_dir(stacks_dir().join("webapp")).expect("blueprint") {
        let f = f.expect("entry");
        if f.path().is_file() {
            std::fs::copy(f.path(), copy.join(f.file_name())).expect("copy");
        } else {
            std::os::unix::fs::symlink(f.path(), copy.join(f.file_name())).expect("link");
        }
    }
    let meta = copy.join("blueprint.toml");
    let text = std::fs::read_to_string(&meta).expect("read");
    for (bad, why) in [
        (r#""service.cpu" = [256]"#, "is a integer, the default a string"),
        (r#""network.vpc_id" = ["vpc-1"]"#, "restricts a key that is not overridable"),
    ] {
        std::fs::write(&meta, text.replace(r#""service.cpu" = ["256", "512", "1024"]"#, bad)).expect("write");
        let e = Blueprint::load(dir.path(), "webapp").expect_err(bad).to_string();
        assert!(e.contains("blueprint.toml") && e.contains(why), "{bad}: {e}");
    }
}
