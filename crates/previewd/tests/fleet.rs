//! The fleet observer and the reaper, end to end: moto behind the fault proxy, the fake GitHub with its
//! faults, the real router, reconciler and `previewd reap`. Calls are counted where they leave previewd
//! (at the proxy and at the fake), never inferred.

use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use previewd_domain::Status;
use previewd_reconciler::{Outcome, Verdict};
use previewd_testkit::{Fault, Options, REPO, Target, TestEnv, ZONE, sha, webhook};

async fn ready(t: &TestEnv, branch: &str, sha: &str) -> previewd_store::EnvRecord {
    t.ready(branch, sha).await
}

/// AWS calls that change something.
fn writes(t: &TestEnv) -> Vec<String> {
    t.proxy
        .calls()
        .into_iter()
        .filter(|c| ["List", "Describe", "Get", "Head"].iter().all(|read| !c.action.starts_with(read)))
        .map(|c| format!("{} {}", c.service, c.action))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_costs_pages_not_environments() {
    let mut t = TestEnv::start().await;
    for n in 0..20 {
        assert_eq!(t.push(&format!("feature/n{n}"), &sha(n + 1)).await, 202);
    }
    for n in 0..20 {
        ready(&t, &format!("feature/n{n}"), &sha(n + 1)).await;
    }
    for pass in 1..=2 {
        t.proxy.reset_calls();
        t.github.reset_requests();
        let enqueued = t.app().reconciler().resync().await;
        let aws = t.proxy.calls().len();
        let github = t.github.request_count();
        eprintln!("idle resync pass {pass}: {aws} AWS calls, {github} GitHub calls, {enqueued} enqueued");
        assert_eq!(enqueued, 0, "nothing differs");
        assert!(aws + github <= 10, "pass {pass}: {aws} AWS + {github} GitHub calls: {:?}", t.proxy.calls());
        assert_eq!(writes(&t), Vec::<String>::new(), "no AWS write");
    }
    assert!(t.github.not_modified_count() >= 1, "the second listing is answered 304 against its ETag");
    // A push missed while previewd was away is found by the listing alone.
    t.github.set_branch(REPO, "feature/n3", &sha(99));
    assert_eq!(t.app().reconciler().resync().await, 1);
    ready(&t, "feature/n3", &sha(99)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_ahead_of_githubs_api_and_a_quick_delete_and_push_end_ready() {
    let mut t = TestEnv::start().await;
    t.github.set_branch(REPO, "main", &sha(9));
    // GitHub's API shows the branch only 3 s after its webhook.
    let body = serde_json::to_vec(&webhook::push(REPO, "feat/lag", &"0".repeat(40), &sha(1))).expect("json");
    assert_eq!(t.deliver("push", &body, None, None).await, 202);
    t.wait_for("feat/lag", "waiting for proof", |e| e.last_error.as_deref().is_some_and(|m| m.contains("not proof")))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.github.set_branch(REPO, "feat/lag", &sha(1));
    let env = ready(&t, "feat/lag", &sha(1)).await;
    assert_eq!(t.proxy.count("DeleteStack", &env.stack_name), 0);

    // Deleted and pushed again within moments: ends ready at the new commit.
    assert_eq!(t.delete("feat/lag").await, 202);
    assert_eq!(t.push("feat/lag", &sha(2)).await, 202);
    ready(&t, "feat/lag", &sha(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_environment_whose_branch_went_while_previewd_was_down_is_removed() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    assert_eq!(t.push("feat/broken", &sha(1)).await, 202);
    let env = ready(&t, "feat/broken", &sha(1)).await;
    t.proxy.rollback_fails_after_update(&env.stack_name);
    assert_eq!(t.push("feat/broken", &sha(2)).await, 202);
    t.wait_for("feat/broken", "failed", |e| e.status == Status::Failed).await;

    t.stop_app().await;
    t.github.delete_branch(REPO, "feat/broken"); // no webhook: previewd is down
    t.start_app().await;
    let report = t.app().reconciler().reap(false).await;
    assert!(report.outcome.is_success(), "{report:#?}");
    t.wait_for("feat/broken", "deleted", |e| e.status == Status::Deleted).await;
    assert!(t.stack(&env.stack_name).await.is_none());
    t.assert_clean(&[]).await;
}

/// Puts `versions` object versions (several per key), some delete markers and an unfinished multipart
/// upload into the bucket, as an application would.
async fn fill(t: &TestEnv, bucket: &str, versions: usize) {
    let s3 = t.s3().await;
    t.enable_versioning(bucket).await;
    let puts = (0..versions).map(|i| {
        let s3 = s3.clone();
        async move {
            let key = format!("data/{}.json", i % (versions / 2).max(1));
            s3.put_object().bucket(bucket).key(key).body(ByteStream::from(vec![b'x'; 8])).send().await.expect("put");
        }
    });
    futures::stream::iter(puts).buffer_unordered(16).collect::<Vec<_>>().await;
    for i in 0..10 {
        s3.delete_object().bucket(bucket).key(format!("data/{i}.json")).send().await.expect("delete marker");
    }
    s3.create_multipart_upload().bucket(bucket).key("big/upload.bin").send().await.expect("upload");
}

/// A stack in moto, as someone else (or previewd) might have made it.
async fn foreign_stack(t: &TestEnv, name: &str, tags: &[(&str, &str)]) {
    let cfn = aws_sdk_cloudformation::Client::new(&t.sdk_config().await);
    let template = r#"{"Resources":{"Topic":{"Type":"AWS::SNS::Topic"}}}"#;
    let mut call = cfn.create_stack().stack_name(name).template_body(template);
    for (k, v) in tags {
        call = call.tags(aws_sdk_cloudformation::types::Tag::builder().key(*k).value(*v).build());
    }
    call.send().await.expect("create foreign stack");
}

use futures::StreamExt as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pass_removes_exactly_the_orphans_and_never_a_foreign_stack() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    let branches = ["keep/a", "keep/b", "keep/c", "gone/d", "gone/e"];
    for (n, b) in branches.iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    let mut envs = Vec::new();
    for (n, b) in branches.iter().enumerate() {
        envs.push(ready(&t, b, &sha(n + 1)).await);
    }
    let gone_d = &envs[3];
    let bucket =
        t.direct_aws().await.stack_resources(&gone_d.stack_name, "AWS::S3::Bucket").await.expect("res").remove(0);
    fill(&t, &bucket, 2_500).await;
    let foreign = [
        ("previewd-acme-shop-gone-d-lookalike", vec![]),
        ("previewd-acme-shop-other-owner", vec![("previewd:owner", "someone-else"), ("previewd:repo", REPO)]),
        ("previewd-acme-shop-no-owner", vec![("previewd:repo", REPO), ("previewd:branch", "gone/e")]),
    ];
    for (name, tags) in &foreign {
        foreign_stack(&t, name, tags).await;
    }
    t.github.delete_branch(REPO, "gone/d");
    t.github.delete_branch(REPO, "gone/e");

    // The dry run's decisions are what the real pass then does.
    let dry = t.app().reconciler().reap(true).await;
    assert_eq!(t.proxy.count("DeleteStack", &gone_d.stack_name), 0, "a dry run changes nothing");
    t.proxy.reset_calls();
    let report = t.app().reconciler().reap(false).await;
    let verdicts = |r: &previewd_reconciler::Report| {
        r.decisions.iter().map(|d| (d.verdict, d.subject.clone())).collect::<Vec<_>>()
    };
    assert_eq!(verdicts(&dry), verdicts(&report), "dry run {dry:#?}");
    assert_eq!(report.outcome, Outcome::Removed, "{report:#?}");
    let mut removed: Vec<_> =
        report.decisions.iter().filter(|d| d.verdict == Verdict::Remove).map(|d| d.subject.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, ["gone/d", "gone/e"]);

    for b in ["gone/d", "gone/e"] {
        t.wait_for(b, "deleted", |e| e.status == Status::Deleted).await;
    }
    for b in ["keep/a", "keep/b", "keep/c"] {
        assert_eq!(t.env(b).await.expect("env").status, Status::Ready);
    }
    for (name, _) in &foreign {
        assert!(t.stack(name).await.is_some(), "{name} is not ours and stays");
    }
    let deletes: Vec<_> = t.proxy.calls().into_iter().filter(|c| c.action == "DeleteObjects").collect();
    assert!(deletes.len() >= 3, "2,510 keys take at least 3 batches: {deletes:?}");
    assert!(deletes.iter().all(|c| c.keys <= 1_000), "{deletes:?}");
    assert!(t.s3().await.head_bucket().bucket(&bucket).send().await.is_err(), "bucket emptied and deleted");
    let log: Vec<String> = t
        .store
        .events(gone_d.id, 200)
        .await
        .expect("events")
        .into_iter()
        .map(|e| format!("{}: {}", e.kind, e.message))
        .collect();
    assert!(log.iter().any(|e| e.starts_with("reaper: remove")), "{log:#?}");
    assert!(log.iter().any(|e| e.starts_with("emptying:")), "bounded steps: {log:#?}");
    // A teardown starts from the pass's own listing: gone/e's (one step: its bucket holds only the seed
    // step's two files) looked at its stack only after its DeleteStack; gone/d's looks again between
    // emptying steps. The buckets' names came from the stacks' descriptions, not from their resources or
    // templates, until a deletion was refused: gone/d's bucket also holds an unfinished upload, which
    // the strict proxy (unlike AWS for a general-purpose bucket) lets block its first DeleteStack; the
    // retry asks CloudFormation for the buckets and aborts the upload.
    let calls = t.proxy.calls();
    let on = |stack: &str| -> Vec<&str> {
        calls.iter().filter(|c| c.stack.as_deref() == Some(stack)).map(|c| c.action.as_str()).collect()
    };
    let (d, e) = (on(&gone_d.stack_name), on(&envs[4].stack_name));
    assert_eq!(e.first(), Some(&"DeleteStack"), "{e:?}");
    for action in ["ListStackResources", "GetTemplate"] {
        assert!(!e.contains(&action), "{action}: gone/e's stack's outputs tell: {e:?}");
        let refused = calls.iter().filter(|c| c.action == "DeleteStack" && c.injected).count();
        let asked = d.iter().filter(|a| **a == action).count();
        assert_eq!(asked, refused, "{action}: only after a refused DeleteStack: {d:?}");
    }
    let dns_reads = calls.iter().filter(|c| c.action == "ListResourceRecordSets" && !c.injected).count();
    assert!(dns_reads <= 1, "{dns_reads} DNS reads: the names are deleted as written (the pass lists once)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_the_template_retains_keeps_what_it_holds() {
    let extra = &format!("[repos.\"{REPO}\".branches.\"archive/*\"]\nbucket.deletion_policy = \"Retain\"\n");
    let mut t = TestEnv::with(&Options { extra, ..Options::default() }).await;
    for (n, b) in ["archive/q3", "feature/x"].iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    let kept = ready(&t, "archive/q3", &sha(1)).await;
    let gone = ready(&t, "feature/x", &sha(2)).await;
    let aws = t.direct_aws().await;
    let mut buckets = Vec::new();
    for env in [&kept, &gone] {
        let bucket = aws.stack_resources(&env.stack_name, "AWS::S3::Bucket").await.expect("res").remove(0);
        fill(&t, &bucket, 20).await;
        buckets.push(bucket);
    }
    let s3 = t.s3().await;
    let left = |bucket: String| {
        let s3 = s3.clone();
        async move { s3.list_object_versions().bucket(bucket).send().await.map(|o| o.versions().len()) }
    };
    let held = left(buckets[0].clone()).await.expect("versions");
    for b in ["archive/q3", "feature/x"] {
        assert_eq!(t.delete(b).await, 202);
        t.wait_for(b, "deleted", |e| e.status == Status::Deleted).await;
    }
    assert_eq!(left(buckets[0].clone()).await.expect("the retained bucket is there"), held, "with all it held");
    assert!(left(buckets[1].clone()).await.is_err(), "the other was emptied and deleted with its stack");
    assert!(t.stack(&kept.stack_name).await.is_none(), "the stack itself went");
    // Retained on purpose: a person removes it (here, the test).
    let _ = aws.empty_bucket(&buckets[0], 10, true).await.expect("empty");
    s3.delete_bucket().bucket(&buckets[0]).send().await.expect("delete bucket");
    t.assert_clean(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buckets_a_teardown_empties_come_from_the_stack_or_else_its_template() {
    let t = TestEnv::start().await;
    let cfn = aws_sdk_cloudformation::Client::new(&t.sdk_config().await);
    // A stack previewd did not render (an older previewd's, say): no output lists its buckets.
    let template = serde_json::json!({ "Resources": {
        "Scratch": { "Type": "AWS::S3::Bucket" },
        "Logs": { "Type": "AWS::S3::Bucket", "DeletionPolicy": "Delete" },
        "Archive": { "Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain" },
        "Topic": { "Type": "AWS::SNS::Topic" }
    } });
    cfn.create_stack()
        .stack_name("previewd-old-style")
        .template_body(template.to_string())
        .send()
        .await
        .expect("create");
    let aws = previewd_testkit::aws_for(&t.proxy.endpoint()).await;
    let stack = aws.describe_stack("previewd-old-style").await.expect("describe").expect("stack");
    let resources = |logical: &str| {
        let (cfn, logical) = (cfn.clone(), logical.to_owned());
        async move {
            let out =
                cfn.describe_stack_resource().stack_name("previewd-old-style").logical_resource_id(logical).send();
            out.await
                .expect("resource")
                .stack_resource_detail()
                .and_then(|d| d.physical_resource_id())
                .map(str::to_owned)
        }
    };
    let mut expected = vec![resources("Scratch").await.expect("id"), resources("Logs").await.expect("id")];
    expected.sort();
    t.proxy.reset_calls();
    let mut found = aws.buckets_to_empty(&stack, true).await.expect("buckets");
    found.sort();
    assert_eq!(found, expected, "the retained bucket is not emptied");
    // CloudFormation's calls only: the running previewd's fleet pass may list DNS meanwhile.
    let cfn_calls = || -> Vec<String> {
        t.proxy.calls().into_iter().filter(|c| c.service == "cloudformation").map(|c| c.action).collect()
    };
    assert_eq!(cfn_calls(), ["GetTemplate", "ListStackResources"]);

    // A stack previewd rendered says which buckets go with it: no call at all.
    let mut rendered = stack.clone();
    rendered.outputs.insert(previewd_domain::EMPTY_ON_DELETE_OUTPUT.into(), "previewd,one-bucket,another".into());
    t.proxy.reset_calls();
    assert_eq!(aws.buckets_to_empty(&rendered, true).await.expect("buckets"), ["one-bucket", "another"]);
    rendered.outputs.insert(previewd_domain::EMPTY_ON_DELETE_OUTPUT.into(), "previewd".into());
    assert!(aws.buckets_to_empty(&rendered, true).await.expect("buckets").is_empty(), "nothing to empty");
    assert!(cfn_calls().is_empty());
    // After a refused deletion the output is not trusted: CloudFormation is asked.
    let mut again = aws.buckets_to_empty(&rendered, false).await.expect("buckets");
    again.sort();
    assert_eq!(again, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_deleted_as_written_and_one_changed_since_is_read_first() {
    let mut t = TestEnv::start().await;
    for (n, b) in ["as/written", "re/pointed"].iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    let written = ready(&t, "as/written", &sha(1)).await;
    let moved = ready(&t, "re/pointed", &sha(2)).await;
    let aws = t.direct_aws().await;
    let zone = t.seeded.zones[previewd_testkit::ZONE].hosted_zone_id.clone();
    // A person re-points one name (keeping previewd's marker): it is no longer as previewd wrote it.
    let marker = previewd_cloud::OwnershipMarker::new("test-owner", &REPO.to_ascii_lowercase(), moved.env_key.as_str());
    aws.upsert_dns(&zone, &moved.dns_name, "elsewhere.example.com", &marker).await.expect("re-point");
    t.proxy.reset_calls();
    for b in ["as/written", "re/pointed"] {
        assert_eq!(t.delete(b).await, 202);
        t.wait_for(b, "deleted", |e| e.status == Status::Deleted).await;
    }
    let cname = aws_sdk_route53::types::RrType::Cname;
    for env in [&written, &moved] {
        assert_eq!(aws.dns_record(&zone, &env.dns_name, cname.clone()).await.expect("dns"), None, "{}", env.branch);
    }
    let route53: Vec<(String, bool)> = t
        .proxy
        .calls()
        .into_iter()
        .filter(|c| c.service == "route53" && c.action != "ListHostedZonesByName")
        .map(|c| (c.action, c.injected))
        .collect();
    let refused = route53.iter().filter(|(a, i)| a == "ChangeResourceRecordSets" && *i).count();
    let reads = route53.iter().filter(|(a, _)| a == "ListResourceRecordSets").count();
    let changes = route53.iter().filter(|(a, i)| a == "ChangeResourceRecordSets" && !*i).count();
    // One deletion as written; the re-pointed one refused as AWS refuses it, then read (marker and name)
    // and deleted as it is.
    assert_eq!((changes, refused, reads), (2, 1, 2), "{route53:?}");
    t.assert_clean(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_faults_delete_nothing_and_the_command_says_so() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    for (n, b) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
        ready(&t, b, &sha(n + 1)).await;
    }
    t.github.delete_branch(REPO, "c"); // an orphan a healthy pass would remove
    for n in 0..100 {
        t.github.set_branch(REPO, &format!("zz/filler-{n:03}"), &sha(1000 + n)); // two pages of branches
    }
    let faults = [
        ("500", Target::BranchList, Fault::Status(500)),
        ("401", Target::BranchList, Fault::Status(401)),
        ("HTML", Target::BranchList, Fault::Html),
        ("empty list", Target::BranchList, Fault::EmptyList),
        ("failing second page", Target::BranchListPage(2), Fault::Status(502)),
        ("broken pagination", Target::BranchList, Fault::NoLink),
        ("timeout", Target::BranchList, Fault::Delay(Duration::from_secs(5))),
    ];
    for (name, target, fault) in faults {
        t.github.inject(target, fault, 1);
        let report = t.app().reconciler().reap(false).await;
        eprintln!("{name}: {}", report.summary);
        assert_eq!(report.outcome, Outcome::Refused, "{name}: {report:#?}");
        assert!(!report.outcome.is_success());
        assert!(report.decisions.iter().all(|d| d.verdict != Verdict::Remove), "{name}: {report:#?}");
        assert!(report.summary.contains("refused"), "{name}: {}", report.summary);
    }
    let env = t.env("c").await.expect("env");
    assert_eq!(env.status, Status::Ready, "nothing removed");
    // Reported where people and monitoring look: the API, the metrics and the dashboard.
    let last: serde_json::Value = reqwest::get(t.url("/api/reaper")).await.expect("api").json().await.expect("json");
    assert_eq!(last["outcome"], "refused", "{last}");
    let metrics = reqwest::get(t.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("previewd_reaper_passes_total{outcome=\"refused\"} 7"), "{metrics}");
    // Refused passes are not successes: no time of a last success yet, to alert on.
    assert!(!metrics.contains("previewd_reaper_last_success_timestamp_seconds"), "{metrics}");
    let page = reqwest::get(t.url("/")).await.expect("page").text().await.expect("text");
    assert!(page.contains("class=\"reaper refused\""), "{page}");
    assert_eq!(t.proxy.count("DeleteStack", &env.stack_name), 0);

    // `previewd reap` beside the running server: refuses, says why, exits non-zero.
    t.github.inject(Target::BranchList, Fault::Status(500), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_previewd")).arg("reap").envs(t.process_env()).output().expect("runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("refuse") && stdout.contains("HTTP 500"), "{stdout}\n{stderr}");

    // A healthy pass, by the command: the orphan goes, and a dry run first says so.
    let dry = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(["reap", "--dry-run"])
        .envs(t.process_env())
        .output()
        .expect("runs");
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success() && dry_out.contains("remove") && dry_out.contains(" c "), "{dry_out}");
    assert_eq!(t.env("c").await.expect("env").status, Status::Ready, "the dry run changed nothing");
    let out = Command::new(env!("CARGO_BIN_EXE_previewd")).arg("reap").envs(t.process_env()).output().expect("runs");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    t.wait_for("c", "deleted", |e| e.status == Status::Deleted).await;
    let metrics = reqwest::get(t.url("/metrics")).await.expect("metrics").text().await.expect("text");
    let last = metrics.lines().find_map(|l| l.strip_prefix("previewd_reaper_last_success_timestamp_seconds "));
    let last: f64 = last.unwrap_or_else(|| panic!("{metrics}")).parse().expect("a number");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    assert!((now - last).abs() < 120.0, "the healthy pass's time: {last} (now {now})");
    // A fleet observer's pass that could not list the branches is no success for its metric.
    t.github.inject(Target::BranchList, Fault::Status(500), 1);
    assert!(!t.app().reconciler().resync_pass().await.1, "a failed listing is not a complete pass");
    assert!(t.app().reconciler().resync_pass().await.1, "a healthy one is");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_recreated_before_the_removal_is_kept() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    assert_eq!(t.push("feat/back", &sha(1)).await, 202);
    let env = ready(&t, "feat/back", &sha(1)).await;
    t.github.delete_branch(REPO, "feat/back");
    // Hold the environment's lease, so the removal waits until the branch is back.
    let held = t.store.claim(env.id, "test-holder", previewd_store::now_ms() + 60_000).await.expect("claim");
    let held = held.expect("not held by previewd: it is ready and idle");
    let report = t.app().reconciler().reap(false).await;
    assert!(report.decisions.iter().any(|d| d.verdict == Verdict::Remove && d.subject == "feat/back"), "{report:#?}");
    t.github.set_branch(REPO, "feat/back", &sha(2));
    // Asked for meanwhile (the reaper enqueued it): due again once released.
    t.proxy.reset_calls();
    t.store.release(&held, None).await.expect("release");
    ready(&t, "feat/back", &sha(2)).await;
    assert_eq!(t.proxy.count("DeleteStack", &env.stack_name), 0);
    // The pass's listing could have stood in for a look before a teardown; the step was an update, so it
    // looked afresh before acting.
    let named: Vec<String> = t
        .proxy
        .calls()
        .into_iter()
        .filter(|c| c.stack.as_deref() == Some(env.stack_name.as_str()))
        .map(|c| c.action)
        .collect();
    assert_eq!(named.first().map(String::as_str), Some("DescribeStacks"), "{named:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_names_with_our_marker_go_and_hand_made_ones_stay() {
    let t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    let aws = t.direct_aws().await;
    let zone = t.seeded.zones[ZONE].hosted_zone_id.clone();
    let ghost = format!("ghost.{ZONE}");
    let marker = previewd_cloud::OwnershipMarker::new("test-owner", REPO, "ghost");
    aws.upsert_dns(&zone, &ghost, "old-lb.example.com", &marker).await.expect("dangling record");
    let other = previewd_cloud::OwnershipMarker::new("someone-else", REPO, "theirs");
    aws.upsert_dns(&zone, &format!("theirs.{ZONE}"), "lb.example.com", &other).await.expect("another owner's");
    let r53 = aws_sdk_route53::Client::new(&t.sdk_config().await);
    let handmade = aws_sdk_route53::types::ResourceRecordSet::builder()
        .name(format!("handmade.{ZONE}."))
        .r#type(aws_sdk_route53::types::RrType::Cname)
        .ttl(60)
        .resource_records(
            aws_sdk_route53::types::ResourceRecord::builder().value("lb.example.com").build().expect("rr"),
        )
        .build()
        .expect("set");
    let change = aws_sdk_route53::types::Change::builder()
        .action(aws_sdk_route53::types::ChangeAction::Create)
        .resource_record_set(handmade)
        .build()
        .expect("change");
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(aws_sdk_route53::types::ChangeBatch::builder().changes(change).build().expect("batch"))
        .send()
        .await
        .expect("hand-made record");
    t.github.set_branch(REPO, "main", &sha(1)); // a healthy repository

    let report = t.app().reconciler().reap(false).await;
    let dns: Vec<_> =
        report.decisions.iter().filter(|d| d.verdict == Verdict::RemoveDns).map(|d| d.subject.as_str()).collect();
    assert_eq!(dns, [ghost.as_str()], "{report:#?}");
    let cname = aws_sdk_route53::types::RrType::Cname;
    assert!(aws.dns_record(&zone, &ghost, cname.clone()).await.expect("dns").is_none(), "dangling name removed");
    assert!(aws.dns_record(&zone, &format!("handmade.{ZONE}"), cname.clone()).await.expect("dns").is_some());
    assert!(aws.dns_record(&zone, &format!("theirs.{ZONE}"), cname).await.expect("dns").is_some());

    // One pass at a time: while another process holds the reaper's lock, a pass does nothing.
    assert!(t.store.try_lock("reaper", "another-replica", previewd_store::now_ms() + 60_000).await.expect("lock"));
    let report = t.app().reconciler().reap(false).await;
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert!(report.summary.contains("another reaper pass is running"), "{}", report.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_to_live_ends_quiet_environments_until_their_next_push() {
    let extra = &format!("[repos.\"{REPO}\".branches.\"short/*\"]\nlifecycle.ttl = \"1s\"\n");
    let mut t = TestEnv::with(&Options { extra, ..Options::default() }).await;
    for (n, b) in ["short/x", "short/kept", "long/y"].iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    let x = ready(&t, "short/x", &sha(1)).await;
    let kept = ready(&t, "short/kept", &sha(2)).await;
    ready(&t, "long/y", &sha(3)).await;
    t.store.set_keep(kept.id, true, "kept by a test").await.expect("keep");
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let report = t.app().reconciler().reap(false).await;
    let removed: Vec<_> =
        report.decisions.iter().filter(|d| d.verdict == Verdict::Remove).map(|d| d.subject.as_str()).collect();
    assert_eq!(removed, ["short/x"], "{report:#?}");
    assert!(report.decisions[0].reason.contains("time-to-live of 1s"), "{report:#?}");
    t.deleted("short/x").await;
    assert!(t.stack(&x.stack_name).await.is_none());
    assert_eq!(t.env("short/kept").await.expect("env").status, Status::Ready);
    assert_eq!(t.env("long/y").await.expect("env").status, Status::Ready);
    // The branch still exists; the fleet observer does not bring the environment back on its own...
    assert_eq!(t.app().reconciler().resync().await, 0);
    // ...but its next push does.
    assert_eq!(t.push("short/x", &sha(4)).await, 202);
    ready(&t, "short/x", &sha(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envs_command_lists_shows_and_says_why_it_is_refused() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feature/login", &sha(1)).await, 202);
    let env = ready(&t, "feature/login", &sha(1)).await;
    assert_eq!(env.dns_name, format!("feature-login.{ZONE}"), "a readable name");
    let base = t.url("");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args(["envs", "--url", &base])
            .args(args)
            .env_remove("PREVIEWD_DASHBOARD_TOKEN")
            .output()
            .expect("runs")
    };
    let out = run(&["list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("feature/login") && stdout.contains("ready"), "{stdout}");
    let out = run(&["--json", "list", "--status", "ready"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list[0]["env"], "feature-login");
    let out = run(&["show", &env.id.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("ready at"), "{stdout}");
    let out = run(&["--json", "show", &env.id.to_string()]);
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cpu = one["settings"].as_array().and_then(|s| s.iter().find(|s| s["key"] == "service.cpu")).cloned();
    assert_eq!(cpu.as_ref().map(|c| c["layer"].clone()), Some(serde_json::json!("preview")), "{one}");
    assert_eq!(one["stack"]["status"], "CREATE_COMPLETE", "the stack as the reconciler last saw it: {one}");
    assert!(one["stack"]["outputs"]["Endpoint"].is_string() && one["stack"]["observed_at"].is_string(), "{one}");
    // The page shows the stack as the reconciler last saw it, with its age, and asks AWS nothing.
    t.proxy.reset_calls();
    let page =
        reqwest::get(t.url(&format!("/environments/{}", env.id))).await.expect("page").text().await.expect("html");
    assert!(
        page.contains("Recent stack events") && page.contains("Endpoint") && page.contains("blueprint defaults"),
        "{page}"
    );
    assert!(
        page.contains("CREATE_COMPLETE") && page.contains(" ago"),
        "the stack's status, and when it was seen: {page}"
    );
    let asked: Vec<_> =
        t.proxy.calls().into_iter().filter(|c| c.stack.as_deref() == Some(env.stack_name.as_str())).collect();
    assert!(asked.is_empty(), "the page called AWS: {asked:?}");
    // Without a token the server is read-only: the refusal says what to do.
    let out = run(&["redeploy", &env.id.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("PREVIEWD_DASHBOARD_TOKEN"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(["envs", "--url", &format!("http://127.0.0.1:{}", previewd_testkit::free_port()), "list"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("cannot reach previewd"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envs_command_finds_an_environment_by_its_branch_and_says_when_the_token_is_wrong() {
    const TOKEN: &str = "a-dashboard-token-for-the-cli";
    let mut t = TestEnv::with(&Options { top: &format!("dashboard_token = \"{TOKEN}\""), ..Options::default() }).await;
    assert_eq!(t.push("feature/login", &sha(1)).await, 202);
    let env = ready(&t, "feature/login", &sha(1)).await;
    let base = t.url("");
    let run = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args(["envs", "--url", &base])
            .args(args)
            .env("PREVIEWD_DASHBOARD_TOKEN", token)
            .output()
            .expect("runs")
    };
    let out = run(TOKEN, &["--json", "show", "feature/login"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["id"], env.id);
    let out = run(TOKEN, &["show", "feature/login", "--repo", REPO]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("feature/login"));
    // Only the exact branch: a longer name holding it is another environment.
    assert_eq!(t.push("feature/login-2", &sha(2)).await, 202);
    let out = run(TOKEN, &["keep", "feature/login"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains(&format!("keep: recorded for environment {}", env.id)), "{stdout}");
    assert!(t.env("feature/login").await.expect("env").keep);
    let out = run(TOKEN, &["show", "feature/logout"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no environment for branch feature/logout"), "{stderr}");
    let out = run(TOKEN, &["show", "feature/login", "--repo", "acme/other"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no environment for branch feature/login in acme/other"));
    // A token that is set but wrong is not "unset".
    let out = run("not-the-token-at-all", &["destroy", "feature/login"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the dashboard token it was given") && !stderr.contains("set PREVIEWD_DASHBOARD_TOKEN"),
        "{stderr}"
    );
    assert_eq!(t.env("feature/login").await.expect("env").status, Status::Ready, "nothing changed");
    // Destroyed by name: the event log says why it went, and not that the branch did.
    let out = run(TOKEN, &["destroy", "feature/login"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    t.wait_for("feature/login", "deleted", |e| e.status == Status::Deleted).await;
    let events = t.store.events(env.id, 50).await.expect("events");
    let gone = events.iter().rev().find(|e| e.kind == previewd_domain::EventKind::Deleted).expect("a deleted event");
    assert!(gone.message.contains("ended by a destroy") && !gone.message.contains("branch is gone"), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_branch_github_does_not_show_yet_is_pending_and_says_why() {
    let mut t = TestEnv::start().await;
    // The push arrives before GitHub's API shows the branch.
    let body = serde_json::to_vec(&webhook::push(REPO, "feat/early", &"0".repeat(40), &sha(1))).expect("json");
    assert_eq!(t.deliver("push", &body, None, None).await, 202);
    let env = t
        .wait_for("feat/early", "told why", |e| {
            e.last_error.as_deref().is_some_and(|m| m.contains("not proof of absence yet"))
        })
        .await;
    assert_eq!(env.status, Status::Pending, "nothing is provisioning: {env:?}");
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 0);
    // Once GitHub shows it, it comes up.
    assert_eq!(t.push("feat/early", &sha(1)).await, 202);
    ready(&t, "feat/early", &sha(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_tagged_stack_without_a_record_is_adopted_and_judged() {
    let t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    // A crash between CreateStack and its record, or a lost database: our tags, no record.
    let names = t.names("lost/one");
    let id = identity("lost/one");
    let tags = [
        ("previewd:owner", "test-owner"),
        ("previewd:repo", REPO),
        ("previewd:branch", "lost/one"),
        ("previewd:branch-sha256", id.as_str()),
        ("previewd:env", names.env_key.as_str()),
        ("previewd:sha", "1111111111111111111111111111111111111111"),
    ];
    foreign_stack(&t, &names.stack_name, &tags).await;
    // The same tags on a stack whose name previewd would never give that branch: left alone.
    foreign_stack(&t, "previewd-acme-shop-lost-one-lookalike", &tags).await;

    let report = t.app().reconciler().reap(false).await;
    let about =
        |subject: &str| report.decisions.iter().filter(|d| d.subject == subject).map(|d| d.verdict).collect::<Vec<_>>();
    assert_eq!(about("lost/one"), [Verdict::Adopt, Verdict::Remove], "{report:#?}");
    assert_eq!(about("previewd-acme-shop-lost-one-lookalike"), [Verdict::Refuse], "{report:#?}");
    t.deleted("lost/one").await;
    assert!(t.stack(&names.stack_name).await.is_none(), "removed through the teardown path");
    assert!(t.stack("previewd-acme-shop-lost-one-lookalike").await.is_some(), "never touched");
}

fn identity(branch: &str) -> String {
    previewd_domain::BranchName::new(branch).expect("branch").identity()
}

/// Stack tags cannot hold every branch name (`#`, `'` and non-ASCII become `_`): after a lost database,
/// each stack is adopted under its exact branch or not at all, and nothing live is torn down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_database_stacks_are_adopted_under_their_exact_branch_or_reported() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    let branches = ["fix#12", "feat/über", "user's-branch"];
    for (n, b) in branches.iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    let mut stacks = Vec::new();
    for (n, b) in branches.iter().enumerate() {
        stacks.push(ready(&t, b, &sha(n + 1)).await.stack_name);
    }
    // Two stacks no branch of a listing can be matched to: one made before previewd tagged a branch's
    // identity, one whose lossy tag spells a branch that is gone.
    let before = t.names("old/one");
    let old_tags = [
        ("previewd:owner", "test-owner"),
        ("previewd:repo", REPO),
        ("previewd:branch", "old/one"),
        ("previewd:env", before.env_key.as_str()),
    ];
    foreign_stack(&t, &before.stack_name, &old_tags).await;
    let gone = t.names("gone#1");
    let gone_id = identity("gone#1");
    let gone_tags = [
        ("previewd:owner", "test-owner"),
        ("previewd:repo", REPO),
        ("previewd:branch", "gone_1"),
        ("previewd:branch-sha256", gone_id.as_str()),
        ("previewd:env", gone.env_key.as_str()),
    ];
    foreign_stack(&t, &gone.stack_name, &gone_tags).await;

    t.lose_database().await;
    let report = t.app().reconciler().reap(false).await;
    let about =
        |subject: &str| report.decisions.iter().filter(|d| d.subject == subject).map(|d| d.verdict).collect::<Vec<_>>();
    for b in branches {
        assert_eq!(about(b), [Verdict::Adopt], "{b}: {report:#?}");
        assert_eq!(t.env(b).await.expect("recorded under its exact name").branch.as_str(), b);
    }
    assert_eq!(about(&before.stack_name), [Verdict::Refuse], "{report:#?}");
    assert_eq!(about(&gone.stack_name), [Verdict::Refuse], "{report:#?}");
    assert!(report.decisions.iter().all(|d| d.verdict != Verdict::Remove), "{report:#?}");
    assert_eq!(report.outcome, Outcome::Refused, "what could not be adopted is reported");
    // A second pass (the grace is 0 s) removes nothing either.
    let again = t.app().reconciler().reap(false).await;
    assert!(again.decisions.iter().all(|d| d.verdict != Verdict::Remove), "{again:#?}");
    for name in stacks.iter().chain([&before.stack_name, &gone.stack_name]) {
        assert_eq!(t.proxy.count("DeleteStack", name), 0, "{name}");
        assert!(t.stack(name).await.is_some(), "{name} is still there");
    }
}

/// A bucket of several listing pages is emptied in one step of several batches: each listing after a
/// batch finds what is left (a marker naming a version just deleted gets an empty, final page from moto).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_of_many_pages_is_emptied_in_one_step() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feat/full", &sha(1)).await, 202);
    let env = ready(&t, "feat/full", &sha(1)).await;
    let aws = t.direct_aws().await;
    let bucket = aws.stack_resources(&env.stack_name, "AWS::S3::Bucket").await.expect("resources").remove(0);
    fill(&t, &bucket, 2_500).await;
    let report = aws.empty_bucket(&bucket, 10, true).await.expect("empty");
    assert!(report.done, "{report:?}");
    assert!(report.versions_deleted >= 2_510, "{report:?}");
    assert_eq!(report.uploads_aborted, 1);
    let left = t.s3().await.list_object_versions().bucket(&bucket).send().await.expect("list");
    assert!(left.versions().is_empty() && left.delete_markers().is_empty(), "{left:?}");
}

/// GitHub answers `301` for a renamed branch (to its new name) and for a renamed or transferred
/// repository (to `/repositories/{id}/…`): the first, with a complete listing that lacks the old name, is
/// proof the old name is gone; the second is reported and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_branch_is_torn_down_and_a_moved_repository_reported() {
    let mut t = TestEnv::with(&Options { grace: "0s", ..Options::default() }).await;
    assert_eq!(t.push("feat/old-name", &sha(1)).await, 202);
    assert_eq!(t.push("feat/stays", &sha(2)).await, 202);
    let old = ready(&t, "feat/old-name", &sha(1)).await;
    let stays = ready(&t, "feat/stays", &sha(2)).await;
    t.github.rename_branch(REPO, "feat/old-name", "feat/new-name");
    assert_eq!(t.delete("feat/old-name").await, 202);
    t.deleted("feat/old-name").await;
    assert!(t.stack(&old.stack_name).await.is_none(), "torn down");
    assert!(t.github.requests().iter().any(|r| r.ends_with("/branches/feat/old-name")), "asked GitHub");

    // The repository moves: every request by its old name answers 301. Nothing is torn down; the
    // environment and the reaper say why.
    t.github.move_repo(REPO);
    assert_eq!(t.push("feat/stays", &sha(3)).await, 202);
    let env = t.wait_for("feat/stays", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.expect("error");
    assert!(error.contains("the repository moved") && error.contains("/repositories/"), "{error}");
    let report = t.app().reconciler().reap(false).await;
    assert_eq!(report.outcome, Outcome::Refused, "{report:#?}");
    assert!(report.decisions.iter().all(|d| d.verdict != Verdict::Remove), "{report:#?}");
    assert!(report.summary.contains("the repository moved"), "{}", report.summary);
    assert!(t.stack(&stays.stack_name).await.is_some(), "never touched");
}
