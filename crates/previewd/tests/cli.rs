//! `previewd render` and `previewd explain` as a user runs them: the real binary, a configuration file,
//! the shipped blueprints, no AWS and no GitHub.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("previewd.toml"), config).expect("write config");
        Self { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        let stacks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stacks");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_previewd"));
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PREVIEWD_")) {
            cmd.env_remove(k);
        }
        cmd.current_dir(self.dir.path())
            .env("PREVIEWD_CONFIG", self.dir.path().join("previewd.toml"))
            .env("PREVIEWD_STACKS_DIR", stacks)
            // `serve` reads AWS's settings before it fails: none from this machine's instance metadata.
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .args(args)
            .output()
            .expect("runs")
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn fails(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8(out.stderr.clone()).expect("utf-8")
}

/// The configuration `deploy/local.toml` gives, as the README's examples use it.
const CONFIG: &str = include_str!("../../../deploy/local.toml");

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines().find(|l| l.split_whitespace().next() == Some(key)).unwrap_or_else(|| panic!("no {key} in\n{text}"))
}

#[test]
fn explain_names_the_layer_of_every_value() {
    let env = Env::new(CONFIG);
    let out = ok(&env.run(&["explain", "--repo", "acme/shop", "--branch", "perf/load"]));
    assert!(
        line(&out, "service.cpu").contains("\"1024\"") && line(&out, "service.cpu").contains("branch pattern perf/*")
    );
    assert!(line(&out, "service.cpu").contains("[repos.\"acme/shop\".branches.\"perf/*\"]"));
    assert!(
        line(&out, "service.desired_count").contains("preview (")
            && line(&out, "service.desired_count").contains("preview.toml")
    );
    assert!(
        line(&out, "network.vpc_id").contains("stage staging")
            && line(&out, "network.vpc_id").contains("stages.staging")
    );
    assert!(line(&out, "database.instance_class").contains("\"db.t4g.micro\""));
    assert!(line(&out, "app.log_level").contains("blueprint defaults"));
    // Every row has a layer.
    assert!(out.lines().skip(1).all(|l| l.contains(" (") && l.trim_end().ends_with(')')), "{out}");
    // The waiting layer is its own row: no task while the commit's image is missing.
    let waiting = out.lines().find(|l| l.contains("while the artifact is missing")).expect("the waiting layer");
    assert!(waiting.starts_with("service.desired_count") && waiting.contains("waiting.toml"), "{out}");

    let json: serde_json::Value = serde_json::from_str(&ok(&env.run(&[
        "explain",
        "--repo",
        "acme/shop",
        "--branch",
        "main",
        "--format",
        "json",
    ])))
    .expect("json");
    let rows = json.as_array().expect("rows");
    assert!(rows.iter().all(|r| r["key"].is_string() && r["layer"].is_string() && r["source"].is_string()));
}

#[test]
fn explain_diff_shows_how_a_branch_differs_from_production() {
    let env = Env::new(CONFIG);
    let out = ok(&env.run(&["explain", "--repo", "acme/shop", "--branch", "feature/x", "--diff", "production"]));
    assert!(out.starts_with("How feature/x (staging) differs from production:"), "{out}");
    let at = out.find("\ndatabase.multi_az\n").expect("multi_az differs");
    let block: Vec<&str> = out[at + 1..].lines().take(3).collect();
    assert!(
        block[1].contains("production:") && block[1].contains("true") && block[1].contains("blueprint defaults"),
        "{block:?}"
    );
    assert!(block[2].contains("false") && block[2].contains("preview"), "{block:?}");
    assert!(!out.contains("\napp.log_level\n"), "equal values are not listed");
}

#[test]
fn render_prints_the_template_offline() {
    let env = Env::new(CONFIG);
    let out = env.run(&["render", "--repo", "acme/shop", "--branch", "feature/Login_v2", "--sha", &"a".repeat(40)]);
    let t: serde_json::Value = serde_json::from_str(&ok(&out)).expect("json");
    assert!(t["Resources"]["Service"].is_object());
    let host = t.pointer("/Resources/ListenerRule/Properties/Conditions/0/HostHeaderConfig/Values/0").expect("host");
    // A new environment's first choice of name: readable, when no other environment holds it.
    assert!(host.as_str().expect("str").starts_with("feature-login-v2."), "{host}");
    assert_eq!(t.pointer("/Resources/TargetGroup/Properties/VpcId"), Some(&serde_json::json!("vpc-0aaaaaaaaaaaaaaaa")));

    let app: serde_json::Value = serde_json::from_str(&ok(&env.run(&[
        "render",
        "--repo",
        "acme/shop",
        "--branch",
        "main",
        "--template",
        "application",
    ])))
    .expect("json");
    assert!(app["Resources"]["LoadBalancer"].is_object());

    let prod: serde_json::Value = serde_json::from_str(&ok(&env.run(&[
        "render",
        "--repo",
        "acme/legacy",
        "--branch",
        "main",
        "--stage",
        "production",
    ])))
    .expect("json");
    assert!(prod["Resources"]["Environment"].is_object(), "the beanstalk blueprint");
}

#[test]
fn render_says_which_names_are_placeholders() {
    let env = Env::new("[repos.\"acme/shop\"]\n");
    let out = env.run(&["render", "--repo", "acme/shop", "--branch", "main"]);
    ok(&out);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("no owner configured") && notes.contains("no DNS zone configured") && notes.contains("no --sha"),
        "{notes}"
    );
}

#[test]
fn branch_overrides_file_is_the_last_layer() {
    let env = Env::new(CONFIG);
    let own = env.write("own.toml", "service.cpu = \"512\"\n[database]\nenabled = false\n");
    let own = own.to_str().expect("utf-8");
    let out = ok(&env.run(&["explain", "--repo", "acme/shop", "--branch", "perf/x", "--overrides", own]));
    assert!(line(&out, "service.cpu").contains("\"512\"") && line(&out, "service.cpu").contains("branch overrides"));
    let t: serde_json::Value = serde_json::from_str(&ok(&env.run(&[
        "render",
        "--repo",
        "acme/shop",
        "--branch",
        "perf/x",
        "--overrides",
        own,
    ])))
    .expect("json");
    assert!(t["Resources"].get("Database").is_none());
}

#[test]
fn bad_settings_name_file_key_and_layer() {
    let env = Env::new(CONFIG);
    let wrong_type = env.write("wrong.toml", "service.cpu = 512\n");
    let err = fails(&env.run(&[
        "render",
        "--repo",
        "acme/shop",
        "--branch",
        "x",
        "--overrides",
        wrong_type.to_str().expect("p"),
    ]));
    assert!(
        err.contains("wrong.toml (branch overrides layer): key `service.cpu`: expected string, found integer"),
        "{err}"
    );
    let forbidden = env.write("forbidden.toml", "[load_balancer]\ncertificate_arn = \"arn:aws:acm:x\"\n");
    let err = fails(&env.run(&[
        "explain",
        "--repo",
        "acme/shop",
        "--branch",
        "x",
        "--overrides",
        forbidden.to_str().expect("p"),
    ]));
    assert!(err.contains("key `load_balancer.certificate_arn`: a branch may not override this key"), "{err}");
    let unknown = env.write("unknown.toml", "service.cpus = \"1\"\n");
    let err = fails(&env.run(&[
        "explain",
        "--repo",
        "acme/shop",
        "--branch",
        "x",
        "--overrides",
        unknown.to_str().expect("p"),
    ]));
    assert!(err.contains("unknown.toml (branch overrides layer): key `service.cpus`: unknown key"), "{err}");
    let err = fails(&env.run(&["explain", "--repo", "acme/shop", "--branch", "x", "--overrides", "missing.toml"]));
    assert!(err.contains("missing.toml: cannot read (branch overrides layer)"), "{err}");

    let env =
        Env::new("[repos.\"acme/shop\"]\n[repos.\"acme/shop\".branches.\"x\"]\nservice.desired_count = \"two\"\n");
    let err = fails(&env.run(&["explain", "--repo", "acme/shop", "--branch", "x"]));
    assert!(
        err.contains("previewd.toml [repos.\"acme/shop\".branches.\"x\"] (branch pattern x layer): key `service.desired_count`: expected integer, found string"),
        "{err}"
    );
}

#[test]
fn unknown_blueprints_repositories_and_branches_are_refused() {
    let env = Env::new("[repos.\"acme/shop\"]\nblueprint = \"lambda\"\n");
    let err = fails(&env.run(&["render", "--repo", "acme/shop", "--branch", "x"]));
    assert!(err.contains("unknown blueprint `lambda`") && err.contains("available: beanstalk, webapp"), "{err}");
    let err = fails(&env.run(&["render", "--repo", "acme/other", "--branch", "x"]));
    assert!(err.contains("repository acme/other is not configured"), "{err}");
    let err = fails(&env.run(&["render", "--repo", "acme/shop", "--branch", "bad..name"]));
    assert!(err.contains("invalid branch name"), "{err}");
}

#[test]
fn a_crontab_line_for_the_reaper_says_what_previewd_expects() {
    let env = Env::new(
        "owner = \"cli-test\"\nwebhook_secrets = [\"s3cret-s3cret-s3cret\"]\ndatabase_url = \"sqlite://db.sqlite\"\nlisten = \"127.0.0.1:0\"\n[reaper]\nschedule = \"0 * * * *\"\n",
    );
    let out = env.run(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = fails(&out);
    assert!(
        err.contains("\"0 * * * *\" has five fields") && err.contains("\"0 0 * * * *\" runs at the same minutes"),
        "{err}"
    );
    assert!(!err.contains("ParseSchedule"), "no debug names: {err}");
    let env = Env::new(
        "owner = \"cli-test\"\nwebhook_secrets = [\"s3cret-s3cret-s3cret\"]\ndatabase_url = \"sqlite://db.sqlite\"\nlisten = \"127.0.0.1:0\"\n[reaper]\nschedule = \"hourly\"\n",
    );
    let err = fails(&env.run(&["serve"]));
    assert!(err.contains("\"hourly\" is not a cron schedule: six fields, seconds first"), "{err}");
    assert!(!env.dir.path().join("db.sqlite").exists(), "nothing was opened: {err}");
}

#[test]
fn an_unreachable_postgres_says_why() {
    let port = previewd_testkit::free_port();
    let env = Env::new(&format!(
        "owner = \"cli-test\"\nwebhook_secrets = [\"s3cret-s3cret-s3cret\"]\ndatabase_url = \"postgres://previewd:hunter2@127.0.0.1:{port}/previewd\"\nlisten = \"127.0.0.1:0\"\n"
    ));
    let out = env.run(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = fails(&out);
    assert!(err.contains("Connection refused") && !err.contains("timed out"), "{err}");
    assert!(!err.contains("hunter2"), "no password in the message: {err}");
}

#[test]
fn the_envs_commands_say_what_each_argument_is() {
    let env = Env::new("");
    let list = ok(&env.run(&["envs", "list", "--help"]));
    for (arg, says) in [
        ("--repo", "Only this repository's environments"),
        ("--status", "Only environments in this status"),
        ("--all", "Deleted environments too"),
        ("--search", "Part of the branch name"),
    ] {
        let l = list.lines().position(|l| l.trim_start().starts_with(arg)).unwrap_or_else(|| panic!("{arg}: {list}"));
        assert!(list.lines().skip(l).take(2).any(|l| l.contains(says)), "{arg}: {list}");
    }
    assert!(
        list.contains("[possible values: pending, provisioning, ready, failed, deleting, deleted, skipped]"),
        "{list}"
    );
    let keep = ok(&env.run(&["envs", "keep", "--help"]));
    assert!(keep.contains("<ID|BRANCH>") && keep.contains("or its branch's name"), "{keep}");
    assert!(keep.contains("Lift the exemption") && keep.contains("--repo <OWNER/NAME>"), "{keep}");
    let out = env.run(&["envs", "list", "--status", "green"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = fails(&out);
    assert!(err.contains("invalid value 'green'") && err.contains("possible values: pending"), "{err}");
}
