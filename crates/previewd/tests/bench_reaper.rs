//! Benchmark, not a test (`#[ignore]`; run by `bench/reaper.sh`): the reaper removing
//! `PREVIEWD_BENCH_ORPHANS` (default 20) orphaned environments whose buckets hold
//! `PREVIEWD_BENCH_VERSIONS` (default 2,000) object versions each. It prints the AWS calls made, by
//! action, divided by the lower bound: per bucket ⌈versions / 1,000⌉ ListObjectVersions pages and as many
//! DeleteObjects (the versions counted in the bucket before the pass: the blueprint's seed step put a few
//! files there too), and one DeleteStack per stack.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt as _;
use previewd_domain::Status;
use previewd_testkit::{Options, REPO, TestEnv, sha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/reaper.sh"]
async fn reaper_removes_orphans_with_full_buckets() {
    let var = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (orphans, versions) = (var("PREVIEWD_BENCH_ORPHANS", 20), var("PREVIEWD_BENCH_VERSIONS", 2_000));
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    // Every environment is an orphan here: the reaper's guard against removing too large a share at once
    // is lifted for the benchmark.
    let text = std::fs::read_to_string(&t.config_path).expect("config");
    let text = text.replace("grace = \"0s\"", "grace = \"0s\"\nmax_share = 1.0");
    // previewd's default emptying step (the tests' configuration takes one batch per step).
    let text = text.replace("empty_batches_per_step = 1", "empty_batches_per_step = 10");
    std::fs::write(&t.config_path, text).expect("config");
    t.stop_app().await;
    t.start_app().await;
    let set_up = Instant::now();
    let mut buckets = Vec::new();
    for i in 0..orphans {
        let branch = format!("bench/orphan{i:02}");
        assert_eq!(t.push(&branch, &sha(i + 1)).await, 202);
    }
    for i in 0..orphans {
        let env = t.ready(&format!("bench/orphan{i:02}"), &sha(i + 1)).await;
        let aws = t.direct_aws().await;
        let bucket = aws.stack_resources(&env.stack_name, "AWS::S3::Bucket").await.expect("resources");
        buckets.extend(bucket);
    }
    // Each bucket versioned, half its versions the older copies of the other half.
    let s3 = t.s3().await;
    for bucket in &buckets {
        t.enable_versioning(bucket).await;
    }
    let puts = buckets
        .iter()
        .flat_map(|b| (0..versions).map(move |v| (b.clone(), format!("data/{:05}", v % versions.div_ceil(2)))));
    futures::stream::iter(puts.map(|(bucket, key)| {
        let s3 = s3.clone();
        async move {
            s3.put_object().bucket(bucket).key(key).body(b"x".to_vec().into()).send().await.expect("put");
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    eprintln!(
        "reaper set-up: {orphans} environments, {} buckets × {versions} versions in {:.0?}",
        buckets.len(),
        set_up.elapsed()
    );

    // What is in each bucket (the writes above and the seed step's files), paged as S3 pages it.
    let mut pages = 0;
    for bucket in &buckets {
        let (mut n, mut markers) = (0, (None, None));
        loop {
            let page = s3
                .list_object_versions()
                .bucket(bucket)
                .set_key_marker(markers.0)
                .set_version_id_marker(markers.1)
                .send()
                .await
                .expect("list versions");
            n += page.versions().len() + page.delete_markers().len();
            if page.is_truncated() != Some(true) {
                break;
            }
            markers = (page.next_key_marker().map(str::to_owned), page.next_version_id_marker().map(str::to_owned));
        }
        pages += n.div_ceil(1_000);
    }
    for i in 0..orphans {
        t.github.delete_branch(REPO, &format!("bench/orphan{i:02}"));
    }
    t.proxy.reset_calls();
    let started = Instant::now();
    let report = t.app().reconciler().reap(false).await;
    assert!(report.outcome.is_success(), "{}", report.summary);
    for i in 0..orphans {
        t.wait_for(&format!("bench/orphan{i:02}"), "deleted", |e| e.status == Status::Deleted).await;
    }
    let took = started.elapsed();
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for c in t.proxy.calls().iter().filter(|c| !c.injected) {
        *by_action.entry(format!("{}:{}", c.service, c.action)).or_default() += 1;
    }
    let lower = 2 * pages + orphans;
    let refused = t.proxy.calls().iter().filter(|c| c.injected).count();
    let made: usize = by_action.values().sum();
    let emptying = ["s3:ListObjectVersions", "s3:DeleteObjects", "cloudformation:DeleteStack"]
        .iter()
        .map(|a| by_action.get(*a).copied().unwrap_or(0))
        .sum::<usize>();
    eprintln!("reaper calls by action: {by_action:?}; refused by the proxy as AWS would (not counted): {refused}");
    eprintln!(
        "reaper: {made} AWS calls in {took:.1?}; lower bound {lower}; ratio {:.2} (all calls), {:.2} (listing, \
         DeleteObjects and DeleteStack alone)",
        made as f64 / lower as f64,
        emptying as f64 / lower as f64
    );
}
