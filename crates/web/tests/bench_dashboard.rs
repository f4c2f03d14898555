//! Benchmark, not a test (`#[ignore]`; run by `bench/dashboard.sh`): server time of the environment list
//! with `PREVIEWD_BENCH_ENVS` (default 10,000) environments in SQLite, through the real router (no
//! network): the JSON API's first page and the dashboard's first page, p50 and p99 over 200 requests each.
//! It prints figures; it asserts only that every answer was 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use previewd_domain::{BranchName, CommitSha, Desired, DnsZone, EnvNames, OwnerId, RepoName, Secret};
use previewd_reconciler::Queue;
use previewd_store::{DesiredChange, Store};
use previewd_web::{AppState, router};
use tower::ServiceExt as _;

const REQUESTS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/dashboard.sh"]
async fn the_list_with_many_environments() {
    let n: usize = std::env::var("PREVIEWD_BENCH_ENVS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("bench.db").display())).await.expect("store");
    let (owner, zone) = (OwnerId::new("bench").expect("owner"), DnsZone::new("p.example.com").expect("zone"));
    let started = Instant::now();
    for i in 0..n {
        let repo = RepoName::new(&format!("acme/repo{}", i % 10)).expect("repo");
        let branch = BranchName::new(&format!("feature/b{i:05}")).expect("branch");
        let names = EnvNames::new(&owner, &repo, &branch, &zone);
        let desired = Desired::Present { sha: Some(CommitSha::new(&format!("{:040x}", i + 1)).expect("sha")) };
        let change =
            DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "bench".into() };
        store.record_desired(&change).await.expect("record");
    }
    eprintln!("set-up of {n} environments: {:.1?}", started.elapsed());
    let app = router(AppState {
        queue: Queue::new(store.clone()),
        deliveries: previewd_store::DeliveryLog::start(store.clone(), || {}).expect("committer"),
        store,
        owner,
        secrets: Arc::from(vec![Secret::new("hook")]),
        repos: Arc::new(BTreeMap::new()),
        dashboard_token: None,
        metrics_token: None,
        public: false,
        github_web_url: "https://github.com".into(),
        reconciler: None,
        intake: Default::default(),
    });
    for path in ["/api/environments", "/", "/?q=b0999&status=pending", "/?page=100&sort=branch"] {
        let mut times = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let res = app
                .clone()
                .oneshot(Request::get(path).header("host", "localhost").body(Body::empty()).expect("request"))
                .await
                .expect("answer");
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            axum::body::to_bytes(res.into_body(), 64 << 20).await.expect("body");
            times.push(t.elapsed());
        }
        times.sort_unstable();
        println!(
            "GET {path:<32} over {n} environments: p50 {:.1?}, p99 {:.1?} (server time, {REQUESTS} requests)",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        );
    }
}
