//! Directives, size checks and the errors a blueprint author or a branch can cause, on small blueprints
//! written to a temporary folder.

use std::path::Path;

use previewd_domain::{BranchName, EMPTY_ON_DELETE_OUTPUT, Stage};
use previewd_render::{Blueprint, Context, Layer, LayerKind, RenderError, RepoLayers, TEMPLATE_BODY_MAX, TemplateKind};
use serde_json::json;

const DEFAULTS: &str = r#"
flag = true
size = 3
name = "x"
list = ["a", "b"]
"#;

fn blueprint(dir: &Path, environment: &serde_json::Value) {
    let bp = dir.join("tiny");
    std::fs::create_dir_all(&bp).expect("mkdir");
    std::fs::write(bp.join("blueprint.toml"), "description = \"tiny\"\noverridable = [\"size\"]\n").expect("write");
    std::fs::write(bp.join("defaults.toml"), DEFAULTS).expect("write");
    let app = json!({ "Resources": { "R": { "Type": "AWS::SNS::Topic" } } });
    std::fs::write(bp.join("application.json"), app.to_string()).expect("write");
    std::fs::write(bp.join("environment.json"), environment.to_string()).expect("write");
}

fn render(environment: serde_json::Value) -> Result<previewd_render::Rendered, RenderError> {
    let dir = tempfile::tempdir().expect("tempdir");
    blueprint(dir.path(), &environment);
    let bp = Blueprint::load(dir.path(), "tiny")?;
    let branch = BranchName::new("main").expect("branch");
    let settings = bp.environment_settings(Stage::Staging, &branch, &RepoLayers::default(), None)?;
    let ctx = Context::application("o", &"a/b".parse().expect("repo"), Stage::Staging, "app-stack");
    bp.render(TemplateKind::Environment, &settings, &ctx)
}

fn err(environment: serde_json::Value) -> String {
    render(environment).expect_err("must fail").to_string()
}

#[test]
fn directives_expand_structurally() {
    let r = render(json!({
        "Resources": {
            "Kept": { "Previewd::When": "flag", "Type": "T", "Properties": { "N": { "Previewd::Setting": "size" } } },
            "Dropped": { "Previewd::When": "!flag", "Type": "T" },
            "Joined": { "Type": "T", "Properties": {
                "J": { "Previewd::Join": [{ "Previewd::Context": "app_stack_name" }, "-", { "Previewd::Setting": "size" }, "-", true] },
                "L": { "Previewd::Setting": "list" },
                "Items": [{ "Previewd::When": "!flag", "A": 1 }, { "B": 2 }]
            } }
        }
    }))
    .expect("renders");
    assert_eq!(
        r.template["Resources"],
        json!({
            "Kept": { "Type": "T", "Properties": { "N": 3 } },
            "Joined": { "Type": "T", "Properties": { "J": "app-stack-3-true", "L": ["a", "b"], "Items": [{ "B": 2 }] } }
        })
    );
    assert_eq!(r.body, serde_json::to_string(&r.template).expect("json"));
}

#[test]
fn an_environment_declares_the_buckets_its_teardown_empties() {
    let empties = |resources: serde_json::Value| {
        let r = render(json!({ "Resources": resources })).expect("renders");
        assert_eq!(r.body, serde_json::to_string(&r.template).expect("json"));
        r.template["Outputs"].get(EMPTY_ON_DELETE_OUTPUT).map(|o| o["Value"].clone())
    };
    let bucket = |policy: Option<&str>| match policy {
        Some(p) => json!({ "Type": "AWS::S3::Bucket", "DeletionPolicy": p }),
        None => json!({ "Type": "AWS::S3::Bucket" }),
    };
    let joined = |refs: &[&str]| {
        let mut list = vec![json!("previewd")];
        list.extend(refs.iter().map(|r| json!({ "Ref": r })));
        json!({ "Fn::Join": [",", list] })
    };
    // Deleted with the stack (the default, or said): emptied; retained: keeps what it holds.
    let resources = json!({
        "Data": bucket(None), "Logs": bucket(Some("Delete")), "Kept": bucket(Some("Retain")),
        "Topic": { "Type": "AWS::SNS::Topic" }
    });
    assert_eq!(empties(resources), Some(joined(&["Data", "Logs"])));
    assert_eq!(empties(json!({ "Kept": bucket(Some("Retain")) })), Some(json!("previewd")), "nothing to empty");
    // What CloudFormation decides at deploy time is left to a look at the template then.
    let conditional = json!({ "Data": { "Type": "AWS::S3::Bucket", "Condition": "C" } });
    assert_eq!(empties(conditional), None);
    let computed =
        json!({ "Data": { "Type": "AWS::S3::Bucket", "DeletionPolicy": { "Fn::If": ["C", "Delete", "Retain"] } } });
    assert_eq!(empties(computed), None);
    // A macro may add buckets the rendered template does not show.
    let r = render(json!({ "Transform": "AWS::LanguageExtensions", "Resources": { "Data": bucket(None) } }));
    assert!(r.expect("renders").template.get("Outputs").is_none());
    let e = err(json!({ "Resources": { "R": bucket(None) }, "Outputs": { EMPTY_ON_DELETE_OUTPUT: { "Value": "x" } } }));
    assert!(e.contains("/Outputs/PreviewdEmptyOnDelete") && e.contains("previewd writes this output"), "{e}");
}

#[test]
fn mistakes_in_templates_are_named_with_their_place() {
    let e = err(json!({ "Resources": { "R": { "Type": { "Previewd::Setting": "nope" } } } }));
    assert!(e.ends_with("environment.json: at /Resources/R/Type/Previewd::Setting: no setting `nope`"), "{e}");
    let e = err(json!({ "Resources": { "R": { "Type": { "Previewd::Context": "dns_name" } } } }));
    assert!(e.contains("no context value `dns_name` here"), "application context only: {e}");
    let e = err(json!({ "Resources": { "R": { "Previewd::Sett": "x", "Type": "T" } } }));
    assert!(e.contains("unknown directive `Previewd::Sett`"), "{e}");
    let e = err(json!({ "Resources": { "R": { "Previewd::When": "size", "Type": "T" } } }));
    assert!(e.contains("setting `size` is not a boolean"), "{e}");
    let e = err(json!({ "Resources": { "R": { "Type": { "Previewd::Join": [{ "Previewd::Setting": "list" }] } } } }));
    assert!(e.contains("a joined part must be a string, number or boolean"), "{e}");
    let e = err(json!({ "Parameters": { "P": { "Type": "String" } }, "Resources": {} }));
    assert!(e.contains("/Parameters: values are fixed at render time"), "{e}");
}

#[test]
fn large_templates_are_reported_for_an_s3_upload() {
    let small = render(json!({ "Resources": { "R": { "Type": "T" } } })).expect("renders");
    assert!(!small.needs_template_url());
    let big =
        render(json!({ "Resources": { "R": { "Type": "T", "Metadata": { "Pad": "x".repeat(TEMPLATE_BODY_MAX) } } } }))
            .expect("renders");
    assert!(big.needs_template_url());
}

#[test]
fn bad_blueprints_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    blueprint(dir.path(), &json!({ "Resources": {} }));
    let e = Blueprint::load(dir.path(), "nope").expect_err("unknown").to_string();
    assert!(e.starts_with("unknown blueprint `nope`") && e.ends_with("(available: tiny)"), "{e}");
    let e = Blueprint::load(dir.path(), "../tiny").expect_err("path escape").to_string();
    assert!(e.starts_with("unknown blueprint `../tiny`"), "{e}");

    let bp = dir.path().join("tiny");
    std::fs::write(bp.join("preview.toml"), "size = \"big\"").expect("write");
    let e = Blueprint::load(dir.path(), "tiny").expect_err("wrong type").to_string();
    assert!(e.ends_with("preview.toml (preview layer): key `size`: expected integer, found string"), "{e}");

    std::fs::remove_file(bp.join("preview.toml")).expect("rm");
    std::fs::create_dir(bp.join("staging.toml")).expect("a folder where a file should be");
    let e = Blueprint::load(dir.path(), "tiny").expect_err("unreadable").to_string();
    assert!(e.contains("staging.toml: cannot read (stage staging layer)"), "{e}");

    std::fs::remove_dir(bp.join("staging.toml")).expect("rm");
    std::fs::write(bp.join("blueprint.toml"), "description = \"d\"\noverridable = [\"nope\"]").expect("write");
    let e = Blueprint::load(dir.path(), "tiny").expect_err("bad overridable").to_string();
    assert!(e.contains("key `nope`: listed as overridable but not declared"), "{e}");

    std::fs::write(bp.join("blueprint.toml"), "description = \"d\"").expect("write");
    std::fs::write(bp.join("environment.json"), "{ not json").expect("write");
    let e = Blueprint::load(dir.path(), "tiny").expect_err("bad json").to_string();
    assert!(e.contains("environment.json (template layer): not valid JSON"), "{e}");
}

#[test]
fn branch_overrides_are_limited_to_overridable_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    blueprint(dir.path(), &json!({ "Resources": {} }));
    let bp = Blueprint::load(dir.path(), "tiny").expect("loads");
    let branch = BranchName::new("main").expect("branch");
    let own = |text: &str| Layer::parse(LayerKind::Branch, ".previewd.toml", text).expect("toml");
    let s = bp
        .environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&own("size = 9")))
        .expect("overridable");
    assert_eq!(s.get("size").expect("size").origin.source, ".previewd.toml");
    let e = bp
        .environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&own("flag = false")))
        .expect_err("not overridable")
        .to_string();
    assert_eq!(
        e,
        ".previewd.toml (branch overrides layer): key `flag`: a branch may not override this key; overridable keys: size"
    );
    // In production nothing branch-specific applies.
    let s = bp
        .environment_settings(Stage::Production, &branch, &RepoLayers::default(), Some(&own("size = 9")))
        .expect("production");
    assert_eq!(s.get("size").expect("size").origin.kind, LayerKind::Defaults);
}

#[test]
fn a_branch_cannot_make_a_dynamic_reference_unless_the_blueprint_allows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = json!({ "Resources": { "R": { "Type": "T", "Properties": {
        "N": { "Previewd::Setting": "name" },
        "J": { "Previewd::Join": ["{{resolve:ssm:", { "Previewd::Setting": "name" }, "}}"] }
    } } } });
    blueprint(dir.path(), &env);
    let meta = dir.path().join("tiny/blueprint.toml");
    std::fs::write(&meta, "description = \"tiny\"\noverridable = [\"name\", \"list\"]\n").expect("write");
    let bp = Blueprint::load(dir.path(), "tiny").expect("loads");
    let branch = BranchName::new("main").expect("branch");
    let ctx = Context::application("o", &"a/b".parse().expect("repo"), Stage::Staging, "app-stack");
    let own = |text: &str| Layer::parse(LayerKind::Branch, ".previewd.toml", text).expect("toml");
    let settings = |repo: &RepoLayers, text: Option<&str>| {
        bp.environment_settings(Stage::Staging, &branch, repo, text.map(own).as_ref())
    };
    let none = RepoLayers::default();
    for text in [
        r#"name = "{{resolve:secretsmanager:previewd/oidc:SecretString:client_secret}}""#,
        r#"name = "x-{{ RESOLVE:ssm:param}}""#,
        r#"list = ["a", "{{resolve:ssm:param}}"]"#,
    ] {
        let e = settings(&none, Some(text)).expect_err(text).to_string();
        assert!(e.contains("may not set a CloudFormation dynamic reference"), "{text}: {e}");
        assert!(e.starts_with(".previewd.toml (branch overrides layer): key `"), "{e}");
    }
    // Nor make one out of the template's text.
    let s = settings(&none, Some(r#"name = "previewd/oidc""#)).expect("a plain value");
    let e = bp.render(TemplateKind::Environment, &s, &ctx).expect_err("joined into a reference").to_string();
    assert!(e.contains("/Resources/R/Properties/J/Previewd::Join: joins a value a branch set"), "{e}");
    // Nor through CloudFormation's own joins, which run before it resolves references.
    for (function, arg) in [
        ("Fn::Join", json!(["", ["{{resolve:ssm:", { "Previewd::Setting": "name" }, "}}"]])),
        ("Fn::Sub", json!(["{{resolve:ssm:${P}}}", { "P": { "Previewd::Setting": "name" } }])),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = json!({ "Resources": { "R": { "Type": "T", "Properties": { "J": { function: arg } } } } });
        blueprint(dir.path(), &env);
        std::fs::write(dir.path().join("tiny/blueprint.toml"), "description = \"t\"\noverridable = [\"name\"]\n")
            .expect("write");
        let cfn = Blueprint::load(dir.path(), "tiny").expect("loads");
        let own = own("name = \"p\"");
        let result = cfn
            .environment_settings(Stage::Staging, &branch, &none, Some(&own))
            .and_then(|s| cfn.render(TemplateKind::Environment, &s, &ctx));
        let e = result.expect_err(function).to_string();
        assert!(e.contains("joins a value a branch set into a CloudFormation dynamic reference"), "{function}: {e}");
    }
    // A plain branch value in CloudFormation's joins is fine.
    let plain_dir = tempfile::tempdir().expect("tempdir");
    let env = json!({ "Resources": { "R": { "Type": "T", "Properties": {
        "J": { "Fn::Join": ["-", [{ "Ref": "AWS::StackName" }, { "Previewd::Setting": "name" }]] }
    } } } });
    blueprint(plain_dir.path(), &env);
    std::fs::write(plain_dir.path().join("tiny/blueprint.toml"), "description = \"t\"\noverridable = [\"name\"]\n")
        .expect("write");
    let plain = Blueprint::load(plain_dir.path(), "tiny").expect("loads");
    let s = plain.environment_settings(Stage::Staging, &branch, &none, Some(&own("name = \"p\""))).expect("plain");
    plain.render(TemplateKind::Environment, &s, &ctx).expect("a plain join renders");
    // The blueprint's own values and the operator's configuration may hold one.
    bp.render(TemplateKind::Environment, &settings(&none, None).expect("defaults"), &ctx).expect("the blueprint's");
    let table: toml::Table = toml::from_str(r#"name = "{{resolve:ssm:operator}}""#).expect("toml");
    let operator = RepoLayers {
        stages: Vec::new(),
        patterns: vec![previewd_render::PatternOverride::new("main", "previewd.toml", table).expect("pattern")],
    };
    let s = settings(&operator, None).expect("the operator's");
    assert_eq!(s.get("name").expect("name").value.as_str(), Some("{{resolve:ssm:operator}}"));
    // A blueprint may open a key to a branch's references, and only an overridable one.
    std::fs::write(&meta, "description = \"tiny\"\noverridable = [\"name\"]\ndynamic_references = [\"name\"]\n")
        .expect("write");
    let open = Blueprint::load(dir.path(), "tiny").expect("loads");
    let s = open
        .environment_settings(Stage::Staging, &branch, &none, Some(&own(r#"name = "{{resolve:ssm:p}}""#)))
        .expect("allowed by the blueprint");
    open.render(TemplateKind::Environment, &s, &ctx).expect("renders");
    std::fs::write(&meta, "description = \"tiny\"\ndynamic_references = [\"name\"]\n").expect("write");
    let e = Blueprint::load(dir.path(), "tiny").expect_err("not overridable").to_string();
    assert!(e.contains("key `dynamic_references.name`: names a key that is not overridable"), "{e}");
}
