//! The dashboard in a real browser: Debian's `chromium` driven by `playwright-core` from npm
//! (`tests/browser/dashboard.mjs`), against the real previewd with moto and the fake GitHub, checked by
//! axe-core at desktop and phone widths. Environments in several states, hostile branch names, a pull
//! request, the login form, the summary, a filter, focus through the live refresh, a failed page, a
//! redeploy whose status change shows without a reload, keep, and a confirmed destroy. `./test.sh`
//! installs chromium, playwright-core and axe-core first; screenshots are kept under
//! `target/browser-screenshots/`.

use std::process::Command;
use std::time::Duration;

use previewd_domain::Status;
use previewd_testkit::{Fault, Options, REPO, Target, TestEnv, sha, workspace_root};

const TOKEN: &str = "browser-test-dashboard-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium() {
    let dir = workspace_root().join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/@axe-core/playwright").exists(),
        "playwright-core or axe-core is not installed: ./test.sh installs them (cd tests/browser && npm ci)"
    );
    let chromium = std::env::var("PREVIEWD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing: ./test.sh installs Debian's chromium");

    let top = format!("dashboard_token = \"{TOKEN}\"");
    // GitHub feedback on: previewd lists the branch's pull requests, and who opened them.
    let mut t = TestEnv::with(&Options { top: &top, github: r#"token = "t""#, ..Options::default() }).await;
    t.github.open_pull(REPO, 7, "feature/login");
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
    t.wait_for("feature/login", "told GitHub", |e| e.feedback_due.is_none()).await;
    let shots = workspace_root().join("target/browser-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let node = |phase: &'static str| {
        let (dir, base, shots, chromium) = (dir.clone(), t.url(""), shots.clone(), chromium.clone());
        let failed = broken.id.to_string();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                Command::new("node")
                    .current_dir(&dir)
                    .args(["dashboard.mjs", &base, TOKEN, &shots.display().to_string(), &failed, phase])
                    .env("PREVIEWD_CHROMIUM", &chromium)
                    .output()
                    .expect("node runs")
            })
            .await
            .expect("joined");
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            eprintln!("{phase}: {stdout}{stderr}screenshots: target/browser-screenshots/");
            assert!(out.status.success(), "the browser test ({phase}) failed:\n{stdout}\n{stderr}");
        }
    };
    node("look").await;
    assert!(t.env("<img/src=x/onerror=alert(1)>").await.expect("env").keep, "the click kept it");
    // Destroyed once confirmed; a deleted environment offers only to bring it back.
    let gone = t.wait_for("feature/login", "deleted", |e| e.status == Status::Deleted).await;
    let page = reqwest::Client::new()
        .get(t.url(&format!("/environments/{}", gone.id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    let buttons: Vec<&str> =
        page.match_indices("<button").map(|(at, _)| &page[at..at + page[at..].find('>').unwrap_or(0)]).collect();
    assert!(buttons.len() == 1 && buttons[0].contains("data-action=\"redeploy\""), "{buttons:?}");
    assert!(page.contains("Bring it back") && !page.contains("the branch is gone"), "{page}");

    // GitHub answers slowly from now on: the redeployed environment stays `pending` long enough to see.
    t.github.inject(Target::Branch, Fault::Delay(Duration::from_secs(5)), 1_000);
    node("redeploy").await;
    let redeployed = t.env("feat/broken").await.expect("env");
    assert_ne!(redeployed.status, Status::Failed, "the click recorded a redeploy");
}
