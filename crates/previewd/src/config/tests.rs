use std::collections::HashMap;

use previewd_domain::Stage;
use previewd_render::LayerKind;

use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |k| map.get(k).cloned()
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(f.path(), text).expect("write");
    f
}

#[test]
fn a_repository_configured_twice_in_another_case_is_refused() {
    let file = write("owner = \"o\"\n[repos.\"Acme/Shop\"]\n[repos.\"acme/shop\".branches.\"x/*\"]\n");
    let e = format!("{:#}", Config::load(Some(file.path()), env(&[])).expect_err("twice"));
    assert!(e.contains("configured already"), "{e}");
}

#[test]
fn a_mistake_in_the_configuration_never_shows_a_secret() {
    for text in [
        "webhook_secrets = \"hunter2-webhook\"\n",
        "owner = \"a\"\ndashboard_token = \"hunter2-dashboard\" trailing\n",
        "database_url = [\"postgres://u:hunter2@db/x\"]\n",
        "webhook_secrets = 'hun\"ter2'\n",
        "dashboard_token = 12345678901234567890\n",
    ] {
        let file = write(text);
        let e = format!("{:#}", Config::load(Some(file.path()), env(&[])).expect_err(text));
        assert!(!e.contains("ter2") && !e.contains("345678"), "{e}");
        assert!(e.contains("line ") && e.contains(", column "), "{e}");
        let e = format!("{:#}", Config::load(None, env(&[("PREVIEWD_CONFIG_TOML", text)])).expect_err(text));
        assert!(!e.contains("ter2") && !e.contains("345678") && e.starts_with("PREVIEWD_CONFIG_TOML: line "), "{e}");
    }
}

#[test]
fn the_configuration_may_come_inline_and_the_password_apart() {
    let c = Config::load(
        None,
        env(&[
            (
                "PREVIEWD_CONFIG_TOML",
                "owner = \"inline\"\ndatabase_url = \"postgres://previewd@db.internal:5432/previewd\"\n",
            ),
            ("PREVIEWD_DATABASE_PASSWORD", "p@ss/word"),
            ("PREVIEWD_CLOUDFORMATION_ROLE_ARN", "arn:aws:iam::123456789012:role/previewd-stacks"),
        ]),
    )
    .expect("loads");
    assert_eq!(c.owner.as_ref().map(|o| o.as_str()), Some("inline"));
    assert_eq!(c.database_url.expose(), "postgres://previewd:p%40ss%2Fword@db.internal:5432/previewd");
    assert!(!format!("{c:?}").contains("p%40ss"), "redacted");
    assert_eq!(c.cloudformation_role_arn.as_deref(), Some("arn:aws:iam::123456789012:role/previewd-stacks"));
    let e = Config::load(None, env(&[("PREVIEWD_CONFIG_TOML", "owner = ")])).expect_err("bad TOML");
    assert!(format!("{e:#}").starts_with("PREVIEWD_CONFIG_TOML:"), "{e:#}");
}

#[test]
fn defaults_match_the_interface() {
    let c = Config::load(None, env(&[])).expect("loads");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.database_url.expose(), "sqlite://previewd.db");
    assert_eq!(c.github_api_url, "https://api.github.com");
    assert_eq!(c.stacks_dir, PathBuf::from("stacks"));
    assert_eq!(c.reaper.grace, Duration::from_secs(600));
    assert_eq!(c.reaper.schedule, "0 0 * * * *");
    assert!(c.repos.is_empty());
}

#[test]
fn the_environment_overrides_the_file() {
    let f = write(
        r#"
        owner = "from-file"
        webhook_secrets = ["file-secret"]
        [repos."acme/shop"]
        blueprint = "beanstalk"
        [repos."acme/shop".stages.staging]
        network.vpc_id = "vpc-1"
        [repos."acme/shop".branches."perf/*"]
        service.cpu = "4096"
        [repos."acme/other"]
        "#,
    );
    let c = Config::load(
        Some(f.path()),
        env(&[
            ("PREVIEWD_OWNER", "from-env"),
            ("PREVIEWD_WEBHOOK_SECRET", "new, old"),
            ("PREVIEWD_REPOS", "Acme/Shop,acme/api:beanstalk"),
            ("PREVIEWD_REAPER_GRACE", "90s"),
        ]),
    )
    .expect("loads");
    assert_eq!(c.owner.expect("owner").as_str(), "from-env");
    assert_eq!(c.webhook_secrets.iter().map(Secret::expose).collect::<Vec<_>>(), ["new", "old"]);
    assert_eq!(c.reaper.grace, Duration::from_secs(90));
    let names: Vec<_> = c.repos.keys().map(RepoName::as_str).collect();
    assert_eq!(names, ["acme/api", "acme/shop"]);
    let shop = &c.repos[&RepoName::new("acme/shop").expect("repo")];
    assert_eq!(shop.blueprint, "beanstalk");
    assert_eq!(shop.layers.patterns.len(), 1, "patterns from the file survive");
    assert_eq!(shop.layers.stages[0].kind, LayerKind::Stage(Stage::Staging));
}

#[test]
fn bad_values_are_named() {
    let f = write("owner = \"Not Valid\"");
    let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("invalid owner"));
    assert!(e.contains("owner") && e.contains("Not Valid"), "{e}");
    let f = write("ownr = \"x\"");
    let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("unknown key"));
    assert!(e.contains(&f.path().display().to_string()) && e.contains("ownr"), "{e}");
    let e = format!("{:#}", Config::load(None, env(&[("PREVIEWD_REPOS", "not-a-repo")])).expect_err("bad repo"));
    assert!(e.contains("PREVIEWD_REPOS"), "{e}");
}

#[test]
fn a_step_limit_under_a_second_is_refused() {
    let f = write("[reconciler]\nstep_limit = \"500ms\"");
    let e = format!("{:#}", Config::load(Some(f.path()), env(&[])).expect_err("too short"));
    assert!(e.contains("step_limit must be at least 1s"), "{e}");
    let f = write("[reconciler]\nstep_limit = \"2s\"");
    let c = Config::load(Some(f.path()), env(&[])).expect("loads");
    assert_eq!(c.tuning.step_limit, Duration::from_secs(2));
}

#[test]
fn a_short_dashboard_token_is_refused() {
    let e = Config::load(None, env(&[("PREVIEWD_DASHBOARD_TOKEN", "short")])).expect_err("too short").to_string();
    assert!(e.contains("shorter than 16 bytes") && !e.contains("short\""), "{e}");
    assert!(Config::load(None, env(&[("PREVIEWD_DASHBOARD_TOKEN", &"x".repeat(16))])).is_ok());
}

#[test]
fn the_metrics_token_is_long_and_not_the_dashboard_token() {
    let long = "x".repeat(16);
    let e = Config::load(None, env(&[("PREVIEWD_METRICS_TOKEN", "short")])).expect_err("too short").to_string();
    assert!(e.contains("PREVIEWD_METRICS_TOKEN") && e.contains("shorter than 16 bytes"), "{e}");
    let same = [("PREVIEWD_METRICS_TOKEN", long.as_str()), ("PREVIEWD_DASHBOARD_TOKEN", long.as_str())];
    let e = Config::load(None, env(&same)).expect_err("the same token").to_string();
    assert!(e.contains("is the dashboard token") && !e.contains(&long), "{e}");
    let c = Config::load(None, env(&[("PREVIEWD_METRICS_TOKEN", &long)])).expect("loads");
    assert!(!format!("{c:?}").contains(&long), "never in Debug output");
}

#[test]
fn two_repositories_cannot_share_a_zone() {
    let e = Config::load(None, env(&[("PREVIEWD_REPOS", "a/x,a/y"), ("PREVIEWD_DNS_ZONE", "p.example.com")]))
        .expect_err("shared zone")
        .to_string();
    assert!(e.contains("share the DNS zone"), "{e}");
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let c =
        Config::load(None, env(&[("PREVIEWD_WEBHOOK_SECRET", "s3cr3t-hook"), ("PREVIEWD_GITHUB_TOKEN", "ghp_t0ken")]))
            .expect("loads");
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr3t-hook") && !debug.contains("ghp_t0ken"), "{debug}");
}
