//! Benchmark, not a test (`#[ignore]`; run by `bench/idle.sh`): the cost of one idle resync pass over a
//! large fleet, measured where calls leave previewd. It records `PREVIEWD_BENCH_ENVS` (default 2,000)
//! ready environments, gives each a minimal owner-tagged stack in moto and a marked DNS name, lists their
//! branches in the fake GitHub, and counts the calls of two resync passes (the second one with warm
//! ETags). It prints figures; it asserts only that nothing was enqueued or written.

use std::time::Instant;

use futures::StreamExt as _;
use previewd_domain::{BranchName, CommitSha, Desired, DnsZone, EnvNames, OwnerId, RepoName, Status};
use previewd_store::{DesiredChange, Observed};
use previewd_testkit::{REPO, TestEnv, ZONE};

const ENDPOINT: &str = "lb.bench.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/idle.sh"]
async fn idle_resync_over_a_large_fleet() {
    let n: usize = std::env::var("PREVIEWD_BENCH_ENVS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
    let mut t = TestEnv::start().await;
    let started = Instant::now();
    let owner = OwnerId::new("test-owner").expect("owner");
    let repo = RepoName::new(REPO).expect("repo");
    let zone = DnsZone::new(ZONE).expect("zone");
    let aws = t.direct_aws().await;
    let zone_id = t.seeded.zones[ZONE].hosted_zone_id.clone();
    let cfn = aws_sdk_cloudformation::Client::new(&t.sdk_config().await);
    let template = format!(
        r#"{{"Resources":{{"T":{{"Type":"AWS::SNS::Topic"}}}},"Outputs":{{"Endpoint":{{"Value":"{ENDPOINT}"}}}}}}"#
    );
    let envs: Vec<(BranchName, CommitSha, EnvNames)> = (0..n)
        .map(|i| {
            let branch = BranchName::new(&format!("bench/b{i:05}")).expect("branch");
            let sha = CommitSha::new(&format!("{:040x}", i + 1)).expect("sha");
            let names = EnvNames::new(&owner, &repo, &branch, &zone);
            (branch, sha, names)
        })
        .collect();
    let creates = envs.iter().map(|(branch, sha, names)| {
        let (cfn, template, repo) = (cfn.clone(), template.clone(), repo.clone());
        async move {
            let tag = |k: &str, v: &str| aws_sdk_cloudformation::types::Tag::builder().key(k).value(v).build();
            cfn.create_stack()
                .stack_name(&names.stack_name)
                .template_body(template)
                .tags(tag("previewd:owner", "test-owner"))
                .tags(tag("previewd:repo", repo.as_str()))
                .tags(tag("previewd:branch", branch.as_str()))
                .tags(tag("previewd:env", names.env_key.as_str()))
                .tags(tag("previewd:sha", sha.as_str()))
                .send()
                .await
                .expect("create stack");
        }
    });
    futures::stream::iter(creates).buffer_unordered(8).collect::<Vec<_>>().await;
    for (branch, sha, names) in &envs {
        let marker = previewd_cloud::OwnershipMarker::new("test-owner", repo.as_str(), names.env_key.as_str());
        aws.upsert_dns(&zone_id, &names.dns_name, ENDPOINT, &marker).await.expect("dns");
        t.github.set_branch(REPO, branch.as_str(), sha.as_str());
        let change = DesiredChange {
            repo: repo.clone(),
            repo_display: None,
            branch: branch.clone(),
            names: names.clone(),
            fallback: None,
            desired: Desired::Present { sha: Some(sha.clone()) },
            reason: "bench".into(),
        };
        let id = t.store.record_desired(&change).await.expect("record");
        let env = t.store.get(id).await.expect("get").expect("env");
        let o = Observed { status: Status::Ready, deployed_sha: Some(sha.clone()), ..env.observed() };
        t.store.update_observed(previewd_store::Fence::unleased(id), &o, None).await.expect("ready");
    }
    eprintln!("set-up of {n} environments: {:.1?}", started.elapsed());

    for pass in 1..=2 {
        t.proxy.reset_calls();
        t.github.reset_requests();
        let started = Instant::now();
        let enqueued = t.app().reconciler().resync().await;
        let calls = t.proxy.calls();
        let count = |service: &str| calls.iter().filter(|c| c.service == service).count();
        let writes = calls
            .iter()
            .filter(|c| ["List", "Describe", "Get", "Head"].iter().all(|read| !c.action.starts_with(read)))
            .count();
        println!(
            "idle resync pass {pass} over {n} environments: {} GitHub calls ({} answered 304), {} CloudFormation, \
             {} Route53 calls, {writes} AWS writes, {enqueued} enqueued, {:.1?}",
            t.github.request_count(),
            t.github.not_modified_count(),
            count("cloudformation"),
            count("route53"),
            started.elapsed()
        );
        assert_eq!((enqueued, writes), (0, 0), "an idle fleet needs no reconcile and no write");
    }

    // The same fleet under a real `previewd serve` left alone, observing every `PREVIEWD_BENCH_RESYNC`
    // (default 10 s) for `PREVIEWD_BENCH_IDLE` (default 60 s): calls made, and its resident memory.
    let secs = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (every, idle) = (secs("PREVIEWD_BENCH_RESYNC", 10), secs("PREVIEWD_BENCH_IDLE", 60));
    t.stop_app().await;
    let text = std::fs::read_to_string(&t.config_path).expect("config");
    let config = t.dir.path().join("idle.toml");
    std::fs::write(&config, text.replace(r#"resync_every = "1h""#, &format!(r#"resync_every = "{every}s""#)))
        .expect("config");
    let config = config.display().to_string();
    let serve = previewd_testkit::Serve::start(
        &t,
        env!("CARGO_BIN_EXE_previewd"),
        &[],
        &[("PREVIEWD_CONFIG", config.as_str()), ("RUST_LOG", "warn")],
        t.dir.path().join("idle.log"),
    )
    .await;
    t.proxy.reset_calls();
    t.github.reset_requests();
    tokio::time::sleep(std::time::Duration::from_secs(idle)).await;
    let calls = t.proxy.calls();
    let writes = calls.iter().filter(|c| !c.action.starts_with("List") && !c.action.starts_with("Describe")).count();
    let status = std::fs::read_to_string(format!("/proc/{}/status", serve.child.id())).expect("/proc");
    let kb = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    println!(
        "idle serve, {n} environments, {idle} s with a resync every {every} s: {} GitHub calls ({} answered 304), \
         {} AWS calls, {writes} AWS writes; resident memory {} kB now, {} kB at most",
        t.github.request_count(),
        t.github.not_modified_count(),
        calls.len(),
        kb("VmRSS:"),
        kb("VmHWM:"),
    );
}
