//! The dashboard in a real browser: Debian's `chromium` driven by `playwright-core` from npm
//! (`tests/browser/dashboard.mjs`), against the real previewd with moto and the fake GitHub. Environments
//! in several states, hostile branch names, the login form, a filter, and a redeploy whose status change
//! shows without a reload. `./test.sh` installs chromium and playwright-core first; screenshots are kept
//! under `target/browser-screenshots/`.

use std::process::Command;
use std::time::Duration;

use previewd_domain::Status;
use previewd_testkit::{Fault, Options, REPO, Target, TestEnv, sha, workspace_root};

const TOKEN: &str = "browser-test-dashboard-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium() {
    let dir = workspace_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: ./test.sh installs it (cd tests/browser && npm ci)"
    );
    let chromium = std::env::var("PREVIEWD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing: ./test.sh installs Debian's chromium");

    let mut t = TestEnv::with(&Options { top: &format!("dashboard_token = \"{TOKEN}\""), ..Options::default() }).await;
    for (n, b) in
        ["feature/login", "<img/src=x/onerror=alert(1)>", "rtl/\u{202E}evil", "docs-no-infra"].iter().enumerate()
    {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    // A branch whose own settings are invalid: `failed`, with the file and key named.
    t.github.set_file(REPO, &sha(9), ".previewd.toml", "service.cpu = 512\n");
    assert_eq!(t.push("feat/broken", &sha(9)).await, 202);
    t.ready("feature/login", &sha(1)).await;
    t.ready("<img/src=x/onerror=alert(1)>", &sha(2)).await;
    t.wait_for("docs-no-infra", "skipped", |e| e.status == Status::Skipped).await;
    let broken = t.wait_for("feat/broken", "failed", |e| e.status == Status::Failed).await;
    // GitHub answers slowly from now on: the redeployed environment stays `pending` long enough to see.
    t.github.inject(Target::Branch, Fault::Delay(Duration::from_secs(5)), 1_000);

    let shots = workspace_root().join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let base = t.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&dir)
            .args(["dashboard.mjs", &base, TOKEN, &shots.display().to_string(), &broken.id.to_string()])
            .env("PREVIEWD_CHROMIUM", &chromium)
            .output()
            .expect("node runs")
    })
    .await
    .expect("joined");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}{stderr}screenshots: target/browser-screenshots/");
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
    let redeployed = t.env("feat/broken").await.expect("env");
    assert_ne!(redeployed.status, Status::Failed, "the click recorded a redeploy");
}
