//! Secrets never reach the logs: a whole scenario (a signed push provisioned and seeded, GitHub told
//! through a token, dashboard actions with the token, a teardown) runs in the real `previewd serve`
//! process at debug level, in both log formats, and its whole output is searched for every secret value.

use std::process::Command;
use std::time::Duration;

use previewd_domain::Status;
use previewd_testkit::{Options, Serve, TestEnv, sha};

const GITHUB_TOKEN: &str = "ghp_secretgithubtoken0123456789abcdef";
const DASHBOARD_TOKEN: &str = "dashboard-secret-token-0123456789";
const HOOK_SECRET: &str = "seed-hook-secret-value-42";
const DB_PASSWORD: &str = "db-password-never-logged";

async fn scenario(format: &str) {
    let mut t = TestEnv::with(&Options { github: r#"token = "unused-in-process""#, ..Options::default() }).await;
    t.stop_app().await; // the process below is the one under test
    // Its own PostgreSQL database, reached with a password in the URL (trust auth ignores it).
    let db = format!("previewd_secrets_{:08x}", fastrand::u32(..));
    let admin = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await.expect("PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&admin).await.expect("create database");
    let db_url = format!("postgres://postgres:{DB_PASSWORD}@127.0.0.1:5432/{db}");

    let env = [
        ("PREVIEWD_DATABASE_URL", db_url.as_str()),
        ("PREVIEWD_GITHUB_TOKEN", GITHUB_TOKEN),
        ("PREVIEWD_DASHBOARD_TOKEN", DASHBOARD_TOKEN),
        ("PREVIEWD_SEED_HOOK_SECRET", HOOK_SECRET),
        ("RUST_LOG", "debug"),
    ];
    let log = t.dir.path().join("serve.log");
    let mut child = Serve::start(&t, env!("CARGO_BIN_EXE_previewd"), &["--log-format", format], &env, log).await;
    let base = format!("http://{}", child.addr);
    let http = reqwest::Client::new();

    // A signed push, provisioned, seeded and reported to GitHub.
    t.github.set_branch(previewd_testkit::REPO, "feat/secret", &sha(1));
    t.github.open_pull(previewd_testkit::REPO, 5, "feat/secret");
    let body = serde_json::to_vec(&previewd_testkit::webhook::push(
        previewd_testkit::REPO,
        "feat/secret",
        &"0".repeat(40),
        &sha(1),
    ))
    .expect("json");
    let push = http
        .post(format!("{base}/webhooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "secret-1")
        .header("x-hub-signature-256", previewd_testkit::webhook::sign(previewd_testkit::SECRET, &body))
        .body(body)
        .send()
        .await
        .expect("push");
    assert_eq!(push.status(), 202);
    let envs = |http: reqwest::Client, base: String| async move {
        let r = http.get(format!("{base}/api/environments")).bearer_auth(DASHBOARD_TOKEN).send().await.expect("api");
        r.json::<serde_json::Value>().await.expect("json")
    };
    let mut ready = None;
    for _ in 0..600 {
        let list = envs(http.clone(), base.clone()).await;
        if list[0]["status"] == Status::Ready.as_str() && !t.github.comments(previewd_testkit::REPO, 5).is_empty() {
            ready = Some(list[0]["id"].as_i64().expect("id"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = ready.unwrap_or_else(|| panic!("not ready: {}", child.logs()));
    // Dashboard actions with the token, and a wrong token.
    let redeploy = http.post(format!("{base}/api/environments/{id}/redeploy")).bearer_auth(DASHBOARD_TOKEN).send();
    assert_eq!(redeploy.await.expect("redeploy").status(), 202);
    let wrong = http.get(format!("{base}/api/environments")).bearer_auth(format!("{DASHBOARD_TOKEN}x")).send();
    assert_eq!(wrong.await.expect("wrong token").status(), 401);
    // SIGTERM: intake stops, work under way finishes, the process exits cleanly and soon.
    let pid = child.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let mut exited = None;
    for _ in 0..400 {
        if let Some(status) = child.child.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("exits within 20 s of SIGTERM");
    assert!(status.success(), "{status}");

    let logs = child.logs();
    assert!(logs.lines().count() > 50, "a debug-level run logs plenty: {logs}");
    assert!(!logs.contains('\u{1b}'), "no colour codes in a file: {logs}");
    if format == "json" {
        for line in logs.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
        assert!(logs.contains(r#""branch":"feat/secret""#), "a reconcile span names its branch");
    }
    for secret in [GITHUB_TOKEN, DASHBOARD_TOKEN, HOOK_SECRET, DB_PASSWORD, previewd_testkit::SECRET] {
        assert!(!logs.contains(secret), "{secret} appears in the {format} logs");
    }
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&admin).await.expect("drop database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_debug_logs_as_text() {
    scenario("text").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_debug_logs_as_json() {
    scenario("json").await;
}
