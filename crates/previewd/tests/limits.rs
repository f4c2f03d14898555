//! Running previewd with least privilege and within limits: a cap on live environments per repository
//! (a branch flood must not run up the bill), and stacks made through a CloudFormation service role.

use previewd_domain::Status;
use previewd_testkit::{Options, TestEnv, sha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_flood_stops_at_the_cap_and_waits_for_room() {
    let mut t = TestEnv::with(&Options { top: "max_environments = 2", ..Options::default() }).await;
    let branches = ["flood/a", "flood/b", "flood/c"];
    for (n, b) in branches.iter().enumerate() {
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
    }
    // Two are admitted and made ready; the third is recorded as skipped, with the reason, and no stack is
    // made for it.
    let mut skipped = None;
    for b in branches {
        let env = t.wait_for(b, "ready or skipped", |e| matches!(e.status, Status::Ready | Status::Skipped)).await;
        if env.status == Status::Skipped {
            assert!(skipped.is_none(), "only one is over the cap");
            skipped = Some(env);
        }
    }
    let skipped = skipped.expect("one over the cap");
    let why = skipped.last_error.clone().expect("a reason");
    assert!(why.contains("max_environments = 2") && why.contains("2 live environments"), "{why}");
    assert_eq!(t.proxy.count("CreateStack", &skipped.stack_name), 0);
    let api: serde_json::Value = reqwest::get(t.url(&format!("/api/environments/{}", skipped.id)))
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    assert_eq!(api["status"], "skipped");
    // A pass of the fleet observer while it is still full changes nothing and asks GitHub nothing.
    t.github.reset_requests();
    t.app().reconciler().resync().await;
    let branch_lookups = t.github.requests().iter().filter(|r| r.contains("/branches/")).count();
    assert_eq!(branch_lookups, 0, "{:?}", t.github.requests());
    assert_eq!(t.env(skipped.branch.as_str()).await.expect("env").status, Status::Skipped);

    // One goes; the next pass admits the skipped one.
    let gone = branches.iter().find(|b| **b != skipped.branch.as_str()).expect("a ready one");
    assert_eq!(t.delete(gone).await, 202);
    t.deleted(gone).await;
    t.app().reconciler().resync().await;
    let n = branches.iter().position(|b| *b == skipped.branch.as_str()).expect("index");
    t.ready(skipped.branch.as_str(), &sha(n + 1)).await;

    // Full again. A new branch's stack is looked at while its admission is decided (one DescribeStacks,
    // nothing made); once the repository is known to be full, the next new branch asks AWS nothing.
    for (b, looks) in [("flood/d", 1), ("flood/e", 0)] {
        assert_eq!(t.push(b, &sha(9)).await, 202);
        let env = t.wait_for(b, "skipped", |e| e.status == Status::Skipped).await;
        // The skip is written while the look, if one is made, is still under way: wait for the step's end
        // (its lease released, nothing due).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while t.store.pending(&[env.id]).await.expect("queue") > 0 {
            assert!(std::time::Instant::now() < deadline, "{b}: its step never ended");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(t.proxy.count("DescribeStacks", &env.stack_name), looks, "{b}");
        assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 0, "{b}");
    }
}

/// Branches whose settings are refused create nothing in AWS: however many there are, they hold no place
/// under the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_branches_that_created_nothing_do_not_hold_the_cap() {
    let mut t = TestEnv::with(&Options { top: "max_environments = 1", ..Options::default() }).await;
    for (n, b) in ["refused/a", "refused/b"].into_iter().enumerate() {
        t.github.set_file(
            previewd_testkit::REPO,
            &sha(n + 1),
            ".previewd.toml",
            "service.cpu = 99999
",
        );
        assert_eq!(t.push(b, &sha(n + 1)).await, 202);
        let env = t.wait_for(b, "failed", |e| e.status == Status::Failed).await;
        assert!(env.stack_id.is_none() && t.stack(&env.stack_name).await.is_none(), "{b} created nothing");
    }
    assert_eq!(t.push("works", &sha(3)).await, 202);
    let env = t.ready("works", &sha(3)).await;
    assert_eq!(env.status, Status::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_are_made_and_deleted_through_the_configured_service_role() {
    let role = "arn:aws:iam::123456789012:role/previewd-stacks";
    let top = format!("cloudformation_role_arn = \"{role}\"");
    let mut t = TestEnv::with(&Options { top: &top, ..Options::default() }).await;
    assert_eq!(t.push("feat/role", &sha(1)).await, 202);
    let env = t.ready("feat/role", &sha(1)).await;
    let cfn = aws_sdk_cloudformation::Client::new(&t.sdk_config().await);
    let app = previewd_domain::app_stack_name(
        &previewd_domain::RepoName::new(previewd_testkit::REPO).expect("repo"),
        previewd_domain::Stage::Staging,
    );
    for name in [env.stack_name.as_str(), app.as_str()] {
        let out = cfn.describe_stacks().stack_name(name).send().await.expect("describe");
        assert_eq!(out.stacks()[0].role_arn(), Some(role), "{name}");
    }
    assert_eq!(t.delete("feat/role").await, 202);
    t.deleted("feat/role").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_observes_the_fleet_and_another_takes_over_when_it_stops() {
    let mut t = TestEnv::start().await;
    t.stop_app().await;
    // Two replicas on one database, observing every 200 ms.
    let mut config = t.config();
    config.tuning.resync_every = std::time::Duration::from_millis(200);
    let start = || async {
        previewd::Application::build_with_aws(&config, previewd_testkit::aws_for(&t.proxy.endpoint()).await)
            .await
            .expect("starts")
    };
    let a = start().await;
    let b = start().await;
    let lock = previewd_reconciler::FLEET_LOCK;
    let holder = || async { t.store.lock_holder(lock).await.expect("store") };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let first = loop {
        if let Some(h) = holder().await {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "no replica observes the fleet");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let (ids, mut apps) = ([a.reconciler().instance().to_owned(), b.reconciler().instance().to_owned()], vec![a, b]);
    assert!(ids.contains(&first), "{first} is one of {ids:?}");
    // The holder keeps it across several passes: the other never observes meanwhile.
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(holder().await.as_deref(), Some(first.as_str()), "held by one replica");
    }
    // It stops: the other takes over.
    let i = ids.iter().position(|id| *id == first).expect("index");
    apps.remove(i).stop().await.expect("stops");
    let other = &ids[1 - i];
    loop {
        if holder().await.as_deref() == Some(other.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the other replica did not take over");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for app in apps {
        app.stop().await.expect("stops");
    }
}
