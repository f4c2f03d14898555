//! Checks concluding on a commit (GitHub's example `check_run`, `check_suite`, `workflow_run` and
//! `status` payloads): the environments waiting at that commit are made due at once, once per delivery;
//! checks still running, pending statuses and other repositories are acknowledged and change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hmac::{Hmac, Mac};
use previewd_domain::{BranchName, CommitSha, Desired, DnsZone, EnvNames, OwnerId, RepoName, Secret};
use previewd_reconciler::Queue;
use previewd_store::{DesiredChange, Lane, Store};
use previewd_web::{AppState, Intake, router};
use serde_json::Value;
use sha2::Sha256;
use tower::ServiceExt as _;

const SECRET: &str = "hook";

async fn app() -> (axum::Router, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
    let repos =
        BTreeMap::from([(RepoName::new("acme/shop").expect("repo"), DnsZone::new("p.example.com").expect("zone"))]);
    let state = AppState {
        store: store.clone(),
        queue: Queue::new(store.clone()),
        deliveries: previewd_store::DeliveryLog::start(store.clone(), || {}).expect("committer"),
        owner: OwnerId::new("t").expect("owner"),
        secrets: Arc::from(vec![Secret::new(SECRET)]),
        repos: Arc::new(repos),
        dashboard_token: None,
        metrics_token: None,
        public: false,
        github_web_url: "https://github.com".into(),
        reconciler: None,
        intake: Intake::default(),
    };
    (router(state), store, dir)
}

/// An environment of `acme/shop` wanting commit `sha`, recorded without a webhook: not due.
async fn env_at(store: &Store, branch: &str, sha: &str) -> i64 {
    let (owner, repo) = (OwnerId::new("t").expect("owner"), RepoName::new("acme/shop").expect("repo"));
    let branch = BranchName::new(branch).expect("branch");
    let names = EnvNames::new(&owner, &repo, &branch, &DnsZone::new("p.example.com").expect("zone"));
    let commit = CommitSha::new(sha).expect("sha");
    let desired = Desired::Present { sha: Some(commit.clone()) };
    let change =
        DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "test".into() };
    let id = store.record_desired(&change).await.expect("record");
    // The reconciler has seen it wait for its commit's image.
    let mut t = previewd_store::Timeline::new(commit, None);
    t.waiting_for = Some("the image".into());
    store.record_timeline(previewd_store::Fence::unleased(id), &t).await.expect("timeline");
    id
}

/// GitHub's example payload `name` (`tests/fixtures/github`), for `acme/shop` at commit `sha`.
fn example(name: &str, sha: &str) -> Value {
    let text = match name {
        "check_run" => include_str!("../../../tests/fixtures/github/check_run.json"),
        "check_run-created" => include_str!("../../../tests/fixtures/github/check_run-created.json"),
        "check_suite" => include_str!("../../../tests/fixtures/github/check_suite.json"),
        "workflow_run" => include_str!("../../../tests/fixtures/github/workflow_run.json"),
        "status" => include_str!("../../../tests/fixtures/github/status.json"),
        other => panic!("no example {other}"),
    };
    let mut v: Value = serde_json::from_str(text).expect("example JSON");
    v["repository"]["full_name"] = "Acme/Shop".into();
    match name {
        "status" => v["sha"] = sha.into(),
        "check_run-created" => v["check_run"]["head_sha"] = sha.into(),
        object => v[object]["head_sha"] = sha.into(),
    }
    v
}

async fn deliver(app: &axum::Router, event: &str, delivery: &str, body: &Value) -> (StatusCode, String) {
    let body = serde_json::to_vec(body).expect("JSON");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let req = Request::post("/webhooks/github")
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("response");
    let status = res.status();
    let text = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn concluded_checks_wake_the_environments_waiting_at_their_commit() {
    let (app, store, _dir) = app().await;
    let sha = "a".repeat(40);
    let id = env_at(&store, "feat/x", &sha).await;
    let elsewhere = env_at(&store, "feat/y", &"b".repeat(40)).await;
    assert_eq!(store.due_state(id).await.expect("due"), None);
    let webhook = Lane::Webhook as i64;
    let events = ["check_run", "check_suite", "workflow_run", "status"];
    for (n, event) in (1..).zip(events) {
        let (status, text) = deliver(&app, event, &format!("d-{event}"), &example(event, &sha)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{event}: {text}");
        assert_eq!(store.due_state(id).await.expect("due"), Some((webhook, n)), "{event}");
    }
    assert_eq!(store.due_state(elsewhere).await.expect("due"), None, "another commit's environment");

    // The same delivery again is acknowledged and wakes nothing.
    let (status, text) = deliver(&app, "check_run", "d-check_run", &example("check_run", &sha)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // Checks still running, a pending status, another repository: acknowledged, nothing recorded.
    let mut pending = example("status", &sha);
    pending["state"] = "pending".into();
    let mut other_repo = example("check_run", &sha);
    other_repo["repository"]["full_name"] = "acme/other".into();
    let ignored = [("check_run", example("check_run-created", &sha)), ("status", pending), ("check_run", other_repo)];
    for (n, (event, body)) in ignored.iter().enumerate() {
        let (status, text) = deliver(&app, event, &format!("ignored-{n}"), body).await;
        assert_eq!(status, StatusCode::OK, "{event}: {text}");
        assert!(text.starts_with("ignored"), "{event}: {text}");
    }
    assert_eq!(store.due_state(id).await.expect("due"), Some((webhook, 4)), "woken once per delivery");

    // A commit nobody waits at: the delivery is recorded, and nothing is due.
    let (status, text) = deliver(&app, "status", "d-nobody", &example("status", &"f".repeat(40))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(store.delivery_count().await.expect("count"), 5);
}
