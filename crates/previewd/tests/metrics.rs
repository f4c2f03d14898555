//! `GET /metrics`, scraped before and after a push is provisioned and seeded, through prometheus-client:
//! every series issue 9 names is there, and the ones a push touches move.

use previewd_testkit::{Options, TestEnv, sha};

/// The value of the first sample whose line starts with `series` (labels included), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

async fn scrape(t: &TestEnv) -> String {
    let r = reqwest::Client::new()
        .get(t.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .expect("metrics");
    assert!(
        r.headers()["content-type"].to_str().expect("ascii").starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers()
    );
    r.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_a_push() {
    let mut t = TestEnv::with(&Options { github: r#"token = "t""#, ..Options::default() }).await;
    let before = scrape(&t).await;
    assert_eq!(t.push("feat/metrics", &sha(1)).await, 202);
    t.ready("feat/metrics", &sha(1)).await;
    t.wait_for("feat/metrics", "told GitHub", |e| e.feedback_due.is_none()).await;
    let after = scrape(&t).await;

    let moved = |series: &str| {
        let (b, a) = (value(&before, series), value(&after, series));
        assert!(a > b, "{series}: {b} → {a}\n{after}");
    };
    moved(r#"previewd_webhooks_total{event="push",outcome="accepted"}"#);
    moved(r#"previewd_aws_requests_total{service="cloudformation",operation="CreateStack",outcome="ok"}"#);
    moved(r#"previewd_aws_requests_total{service="route53",operation="ChangeResourceRecordSets",outcome="ok"}"#);
    moved(r#"previewd_github_requests_total{operation="get_branch",outcome="ok"}"#);
    moved(r#"previewd_github_requests_total{operation="create_deployment",outcome="ok"}"#);
    moved(r#"previewd_reconcile_steps_total{kind="pending","#);
    moved(r#"previewd_reconcile_step_seconds_count{kind="provisioning"}"#);
    moved(r#"previewd_seed_steps_total{kind="s3_copy",outcome="ok"}"#);
    moved("previewd_push_to_ready_seconds_count");
    for series in [
        r#"previewd_environments{repo="acme/shop",status="ready"}"#,
        "previewd_queue_depth",
        "previewd_queue_oldest_due_seconds",
        r#"previewd_github_rate_limit_remaining{credential="token"}"#,
        // Reaper passes by outcome appear with the first pass (tests/fleet.rs scrapes them).
        "previewd_reaper_removals_total",
    ] {
        assert!(after.contains(series), "{series} missing:\n{after}");
    }
    assert!(value(&after, r#"previewd_github_rate_limit_remaining{credential="token"}"#) > 4_000.0, "{after}");

    // Per repository, with every status.
    assert!(value(&after, r#"previewd_environments{repo="acme/shop",status="ready"}"#) >= 1.0, "{after}");
    assert!(after.contains(r#"previewd_environments{repo="acme/shop",status="failed"} 0"#), "{after}");
    assert!(after.contains(r#"previewd_push_to_ready_seconds_count{repo="acme/shop"}"#), "{after}");
    assert!(value(&after, "previewd_fleet_observer_last_success_timestamp_seconds") > 1.7e9, "{after}");

    // A teardown asks for the stack until AWS says it does not exist: not a request previewd got wrong.
    assert_eq!(t.delete("feat/metrics").await, 202);
    t.deleted("feat/metrics").await;
    let gone = scrape(&t).await;
    let describe = |outcome: &str| {
        format!(
            r#"previewd_aws_requests_total{{service="cloudformation",operation="DescribeStacks",outcome="{outcome}"}}"#
        )
    };
    assert!(value(&gone, &describe("not_found")) >= 1.0, "{gone}");
    assert_eq!(value(&gone, &describe("client_error")), 0.0, "{gone}");

    // A failure: the time from its push, by repository.
    t.github.set_file(previewd_testkit::REPO, &sha(2), ".previewd.toml", "service.cpus = 512\n");
    assert_eq!(t.push("feat/typo", &sha(2)).await, 202);
    t.wait_for("feat/typo", "failed", |e| e.status == previewd_domain::Status::Failed).await;
    let failed = scrape(&t).await;
    assert_eq!(value(&failed, r#"previewd_push_to_failure_seconds_count{repo="acme/shop"}"#), 1.0, "{failed}");

    // A scraper that asks for the older text format (promtool, curl) gets it, counters typed.
    let plain = reqwest::get(t.url("/metrics")).await.expect("metrics");
    assert!(plain.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain; version=0.0.4"));
    let plain = plain.text().await.expect("text");
    assert!(plain.contains("# TYPE previewd_webhooks_total counter") && !plain.contains("# EOF"), "{plain}");
}
