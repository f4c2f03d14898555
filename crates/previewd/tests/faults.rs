//! Faults at the boundaries, case by case: every one converges or is reported, and none deletes a live
//! environment. (ROLLBACK_COMPLETE, DELETE_FAILED, UPDATE_ROLLBACK_FAILED and throttled CloudFormation calls
//! are covered in tests/e2e.rs; GitHub faults during a reaper pass in tests/fleet.rs.)

use std::time::Duration;

use previewd_domain::{EventKind, Status};
use previewd_testkit::{Fault, Target, TestEnv, sha};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_5xx_answers_converge() {
    let mut t = TestEnv::start().await;
    // Beyond the SDK's own retries (5 attempts): the reconciler's backoff takes over.
    t.proxy.fail("cloudformation", "CreateStack", 7, 500, "InternalFailure", "We encountered an internal error");
    t.proxy.fail("s3", "PutObject", 2, 503, "ServiceUnavailable", "Please reduce your request rate.");
    t.proxy.fail("route53", "ChangeResourceRecordSets", 6, 500, "InternalError", "internal error");
    assert_eq!(t.push("fault/5xx", &sha(1)).await, 202);
    let env = t.ready("fault/5xx", &sha(1)).await;
    assert_eq!(t.proxy.creates_and_deletes(&env.stack_name), (1, 0), "created once, never deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_longer_than_the_lease_keep_one_holder() {
    let mut t = TestEnv::start().await;
    // Each of these takes 3 s, longer than the tests' 2 s lease: the step renews its lease meanwhile, so no
    // second step starts beside it and nothing is done twice.
    t.proxy.slow("cloudformation", "DescribeStacks", 3, Duration::from_secs(3));
    t.proxy.slow("cloudformation", "CreateStack", 1, Duration::from_secs(3));
    t.proxy.slow("route53", "ChangeResourceRecordSets", 1, Duration::from_secs(3));
    assert_eq!(t.push("fault/slow", &sha(1)).await, 202);
    let env = t.ready("fault/slow", &sha(1)).await;
    assert_eq!(t.proxy.creates_and_deletes(&env.stack_name), (1, 0));
    let events = t.store.events(env.id, 100).await.expect("events");
    assert!(!events.iter().any(|e| e.kind == EventKind::Retry), "no step failed: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route53_prior_request_converges_and_an_invalid_change_batch_is_reported() {
    let mut t = TestEnv::start().await;
    t.proxy.fail(
        "route53",
        "ChangeResourceRecordSets",
        7,
        400,
        "PriorRequestNotComplete",
        "The request was rejected because Route 53 was still processing a prior request.",
    );
    assert_eq!(t.push("fault/prior", &sha(1)).await, 202);
    t.ready("fault/prior", &sha(1)).await;

    // A change Route53 refuses as invalid will not pass by asking again: the environment is failed, with
    // Route53's reason, and its stack stays.
    t.proxy.fail(
        "route53",
        "ChangeResourceRecordSets",
        1,
        400,
        "InvalidChangeBatch",
        "[Tried to create resource record set but it already exists]",
    );
    assert_eq!(t.push("fault/invalid", &sha(2)).await, 202);
    let env = t.wait_for("fault/invalid", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.clone().expect("a reason");
    assert!(error.contains("InvalidChangeBatch") && error.contains("already exists"), "{error}");
    assert!(t.stack(&env.stack_name).await.is_some_and(|s| s.status != "DELETE_COMPLETE"), "kept for a person");
    assert_eq!(t.proxy.creates_and_deletes(&env.stack_name), (1, 0));
    // A push retries it; with Route53 answering again, it ends ready.
    assert_eq!(t.push("fault/invalid", &sha(3)).await, 202);
    t.ready("fault/invalid", &sha(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_limits_errors_html_and_timeouts_delay_but_never_delete() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("fault/gh", &sha(1)).await, 202);
    let ready = t.ready("fault/gh", &sha(1)).await;
    // Every answer about the branch goes wrong in turn while a push and a delete of another branch
    // arrive: a secondary limit (403 and 429 with Retry-After), an outage, an HTML page, a hung answer.
    for fault in [
        Fault::RetryAfter { status: 403, seconds: 1 },
        Fault::RetryAfter { status: 429, seconds: 1 },
        Fault::Status(500),
        Fault::Status(502),
        Fault::Html,
        Fault::Delay(Duration::from_secs(3)), // beyond the client's 2 s timeout
        Fault::RateLimited { status: 403 },
    ] {
        t.github.inject(Target::Branch, fault, 2);
    }
    assert_eq!(t.push("fault/gh", &sha(2)).await, 202);
    assert_eq!(t.push("fault/gh-other", &sha(3)).await, 202);
    t.ready("fault/gh", &sha(2)).await;
    t.ready("fault/gh-other", &sha(3)).await;
    // Nothing live was deleted on the way.
    assert_eq!(t.proxy.creates_and_deletes(&ready.stack_name), (1, 0));
    // A delete whose confirmation meets the same faults still ends the environment once GitHub answers.
    for fault in [Fault::Status(500), Fault::Html, Fault::RetryAfter { status: 429, seconds: 1 }] {
        t.github.inject(Target::Branch, fault, 1);
    }
    assert_eq!(t.delete("fault/gh-other").await, 202);
    t.deleted("fault/gh-other").await;
    assert_eq!(t.env("fault/gh").await.expect("env").status, Status::Ready, "the live one untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_aws_fault_again_and_again_fails_with_the_answer() {
    let mut t = TestEnv::start().await;
    // As moto answers a template it cannot create (an Elastic Beanstalk environment's attribute): a 500,
    // every time. Each step's call is retried by the SDK, then by the reconciler's backoff, five steps.
    t.proxy.fail("cloudformation", "CreateStack", 1_000, 500, "InternalFailure", "We encountered an internal error");
    assert_eq!(t.push("fault/always", &sha(1)).await, 202);
    let env = t.wait_for("fault/always", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.clone().expect("why");
    assert!(why.contains("the same answer 5 times in a row") && why.contains("InternalFailure"), "{why}");
    let events = t.store.events(env.id, 100).await.expect("events");
    let retries = events.iter().filter(|e| e.kind == EventKind::Retry).count();
    assert_eq!(retries, 4, "{events:#?}");
    // A push tries again, and goes through once AWS does.
    t.proxy.reset_faults();
    assert_eq!(t.push("fault/always", &sha(2)).await, 202);
    t.ready("fault/always", &sha(2)).await;
}
