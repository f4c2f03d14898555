//! previewd end to end: signed webhooks through the real router, the real reconciler, moto behind the
//! fault-injecting proxy (strict about non-empty buckets, as AWS is), and a stateful fake GitHub
//! Enterprise (`/api/v3`). Each test has its own moto, GitHub and database.

use aws_sdk_s3::primitives::ByteStream;
use previewd_domain::Status;
use previewd_testkit::{Options, REPO, SECRET, TestEnv, sha, webhook};

const SHA1: &str = "1111111111111111111111111111111111111111";
const SHA2: &str = "2222222222222222222222222222222222222222";

async fn ready(t: &TestEnv, branch: &str, sha: &str) -> previewd_store::EnvRecord {
    t.ready(branch, sha).await
}

async fn deleted(t: &TestEnv, branch: &str) -> previewd_store::EnvRecord {
    t.deleted(branch).await
}

async fn events(t: &TestEnv, id: i64) -> Vec<String> {
    t.app()
        .store()
        .events(id, 200)
        .await
        .expect("events")
        .into_iter()
        .map(|e| format!("{}: {}", e.kind, e.message))
        .collect()
}

/// Fills the environment's data bucket with what makes AWS refuse to delete a bucket: several versions
/// of one key, a delete marker, and an unfinished multipart upload.
async fn fill_bucket(t: &TestEnv, stack: &str) -> String {
    let bucket = t.direct_aws().await.stack_resources(stack, "AWS::S3::Bucket").await.expect("resources").remove(0);
    let s3 = t.s3().await;
    t.enable_versioning(&bucket).await;
    for i in 0..3 {
        s3.put_object()
            .bucket(&bucket)
            .key("seed/data.json")
            .body(ByteStream::from(format!("v{i}").into_bytes()))
            .send()
            .await
            .expect("put");
    }
    s3.put_object().bucket(&bucket).key("tmp/x").body(ByteStream::from_static(b"x")).send().await.expect("put");
    s3.delete_object().bucket(&bucket).key("tmp/x").send().await.expect("delete marker");
    s3.create_multipart_upload().bucket(&bucket).key("big/upload.bin").send().await.expect("upload");
    bucket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_update_and_delete() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feature/login", SHA1).await, 202);
    let env = ready(&t, "feature/login", SHA1).await;
    let stack = t.stack(&env.stack_name).await.expect("stack exists");
    assert_eq!(stack.status, "CREATE_COMPLETE");
    for (k, v) in [
        ("previewd:owner", "test-owner"),
        // As GitHub treats names: without regard to case (previewd keeps them in lower case).
        ("previewd:repo", REPO.to_ascii_lowercase().as_str()),
        ("previewd:branch", "feature/login"),
        ("previewd:env", env.env_key.as_str()),
        ("previewd:sha", SHA1),
    ] {
        assert_eq!(stack.tag(k), Some(v), "tag {k}");
    }
    assert_eq!(env.url.as_deref(), Some(format!("https://{}", env.dns_name).as_str()));
    let aws = t.direct_aws().await;
    let zone = t.seeded.zones[previewd_testkit::ZONE].hosted_zone_id.clone();
    let cname =
        aws.dns_record(&zone, &env.dns_name, aws_sdk_route53::types::RrType::Cname).await.expect("dns").expect("CNAME");
    assert_eq!(Some(&cname.value), stack.outputs.get("Endpoint"), "points at the load balancer");
    let marker = aws
        .dns_record(&zone, &format!("_previewd.{}", env.dns_name), aws_sdk_route53::types::RrType::Txt)
        .await
        .expect("dns");
    assert!(marker.expect("ownership TXT").value.contains("previewd/owner=test-owner"));

    // The application writes to its bucket; the API shows the environment.
    let bucket = fill_bucket(&t, &env.stack_name).await;
    let api: serde_json::Value =
        reqwest::get(t.url("/api/environments")).await.expect("api").json().await.expect("json");
    assert_eq!(api[0]["branch"], "feature/login");
    assert_eq!(api[0]["status"], "ready");
    for field in ["repo", "env", "sha", "url", "stack_name", "last_error", "created_at", "updated_at"] {
        assert!(api[0].get(field).is_some(), "API field {field}");
    }

    assert_eq!(t.push("feature/login", SHA2).await, 202);
    ready(&t, "feature/login", SHA2).await;
    assert_eq!(t.stack(&env.stack_name).await.expect("stack").tag("previewd:sha"), Some(SHA2));
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 1);
    assert_eq!(t.proxy.count("UpdateStack", &env.stack_name), 1);

    assert_eq!(t.delete("feature/login").await, 202);
    let gone = deleted(&t, "feature/login").await;
    assert_eq!(gone.url, None);
    assert!(t.stack(&env.stack_name).await.is_none(), "stack deleted");
    assert!(t.s3().await.head_bucket().bucket(&bucket).send().await.is_err(), "bucket deleted");
    assert!(aws.dns_record(&zone, &env.dns_name, aws_sdk_route53::types::RrType::Cname).await.expect("dns").is_none());
    let log = events(&t, env.id).await;
    assert!(log.iter().any(|e| e.starts_with("deleting: deleting stack") && e.contains("objects emptied")), "{log:#?}");
    t.assert_clean(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_stale_pushes_are_harmless() {
    // A short grace: a push that GitHub contradicts is not proof of absence until the grace has passed.
    let mut t = TestEnv::with(&Options { grace: "2s", ..Options::default() }).await;
    t.github.set_branch(REPO, "feat/dup", SHA1);
    let body = serde_json::to_vec(&webhook::push(REPO, "feat/dup", &"0".repeat(40), SHA1)).expect("json");
    let answers = [
        t.deliver("push", &body, None, Some("same-delivery")).await,
        t.deliver("push", &body, None, Some("same-delivery")).await,
        t.deliver("push", &body, None, Some("same-delivery")).await,
    ];
    assert_eq!(answers.map(|s| s.as_u16()), [202, 200, 200]);
    let env = ready(&t, "feat/dup", SHA1).await;
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 1, "one stack operation");
    assert_eq!(events(&t, env.id).await.iter().filter(|e| e.starts_with("webhook")).count(), 1);

    // Deleted on GitHub; then the old push arrives again under a new delivery id (out of order).
    assert_eq!(t.delete("feat/dup").await, 202);
    deleted(&t, "feat/dup").await;
    assert_eq!(t.deliver("push", &body, None, Some("late-redelivery")).await, 202);
    t.wait_for("feat/dup", "waiting for proof of absence", |e| {
        e.last_error.as_deref().is_some_and(|m| m.contains("not proof of absence yet"))
    })
    .await;
    let env = t
        .wait_for("feat/dup", "settled as deleted after the stale push", |e| {
            e.status == Status::Deleted && e.desired == previewd_domain::Desired::Absent && e.desired_seq >= 4
        })
        .await;
    assert!(events(&t, env.id).await.iter().any(|e| e.contains("GitHub: the branch does not exist")));
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 1, "the stale push created nothing");
    t.assert_clean(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_coalesces_to_the_newest() {
    let mut t = TestEnv::start().await;
    for n in 1..=20 {
        assert_eq!(t.push("feat/burst", &sha(n)).await, 202);
    }
    let env = ready(&t, "feat/burst", &sha(20)).await;
    let ops = t.proxy.count("CreateStack", &env.stack_name) + t.proxy.count("UpdateStack", &env.stack_name);
    assert!(ops <= 4, "20 pushes made {ops} stack operations");
    assert_eq!(t.stack(&env.stack_name).await.expect("stack").tag("previewd:sha"), Some(sha(20).as_str()));
    t.assert_clean(&["feat/burst"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_change_nothing() {
    // The metrics are the process's: other tests in this binary count too, so this one counts a delta.
    let rejected = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("previewd_webhooks_total{") && l.contains("outcome=\"rejected\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let mut t = TestEnv::start().await;
    let before = rejected(&reqwest::get(t.url("/metrics")).await.expect("metrics").text().await.expect("text"));
    let body = serde_json::to_vec(&webhook::push(REPO, "feat/x", &"0".repeat(40), SHA1)).expect("json");
    assert_eq!(t.deliver("push", &body, Some(&webhook::sign("wrong-secret", &body)), None).await, 401);
    assert_eq!(t.deliver("push", &body, Some(""), None).await, 401, "no signature");
    let malformed = b"{\"ref\": \"refs/heads/x\", ";
    assert_eq!(t.deliver("push", malformed, Some(&webhook::sign(SECRET, malformed)), None).await, 400);

    // 26 MB declared up front: 413 before a byte of the body is sent.
    assert_eq!(raw_post(&t.url(""), 26 * 1024 * 1024, false).await, 413);
    // 26 MB streamed without a declared length: 413 once 25 MB have arrived, not buffered beyond.
    assert_eq!(raw_post(&t.url(""), 26 * 1024 * 1024, true).await, 413);

    // Acknowledged but ignored: ping, tags, other repositories, other events.
    assert_eq!(t.deliver("ping", &serde_json::to_vec(&webhook::ping()).expect("json"), None, None).await, 200);
    let tag = serde_json::to_vec(&webhook::push_tag(REPO, "v1.0.0", SHA1)).expect("json");
    assert_eq!(t.deliver("push", &tag, None, None).await, 200);
    let other = serde_json::to_vec(&webhook::push("acme/other", "main", &"0".repeat(40), SHA1)).expect("json");
    assert_eq!(t.deliver("push", &other, None, None).await, 200);
    let tag_create = serde_json::to_vec(&{
        let mut v = webhook::branch_event("create", REPO, "v2");
        v["ref_type"] = "tag".into();
        v
    })
    .expect("json");
    assert_eq!(t.deliver("create", &tag_create, None, None).await, 200);
    assert_eq!(t.deliver("issues", b"{}", None, None).await, 200);

    assert!(t.app().store().list().await.expect("list").is_empty(), "nothing recorded");
    assert_eq!(t.app().store().delivery_count().await.expect("count"), 0);
    let metrics = reqwest::get(t.url("/metrics")).await.expect("metrics").text().await.expect("text");
    assert!(rejected(&metrics) >= before + 5, "{metrics}");
    assert_eq!(reqwest::get(t.url("/healthz")).await.expect("health").status(), 200);
}

/// Posts a body of `len` spaces at the socket level and returns the status previewd answers with,
/// reading the answer while the body is still being written (previewd may answer before it has all).
async fn raw_post(base: &str, len: usize, chunked: bool) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let framing = if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {len}") };
    let head = format!(
        "POST /webhooks/github HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\nX-Hub-Signature-256: sha256=00\r\n{framing}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.expect("head");
    let writer = tokio::spawn(async move {
        let chunk = vec![b' '; 1024 * 1024];
        let mut sent = 0;
        while sent < len {
            let piece = if chunked {
                let mut p = format!("{:x}\r\n", chunk.len()).into_bytes();
                p.extend_from_slice(&chunk);
                p.extend_from_slice(b"\r\n");
                p
            } else {
                chunk.clone()
            };
            if wr.write_all(&piece).await.is_err() {
                return; // previewd stopped reading: fine
            }
            sent += chunk.len();
        }
        if chunked {
            let _ = wr.write_all(b"0\r\n\r\n").await;
        }
    });
    let mut answer = vec![0u8; 64];
    let n = rd.read(&mut answer).await.expect("an answer");
    writer.abort();
    let line = String::from_utf8_lossy(&answer[..n]).into_owned();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_events_no_infra_branches_and_branch_settings() {
    let mut t = TestEnv::start().await;
    // `create` carries no commit: previewd asks GitHub for the head.
    t.github.set_branch(REPO, "feat/created", SHA1);
    let create = serde_json::to_vec(&webhook::branch_event("create", REPO, "feat/created")).expect("json");
    assert_eq!(t.deliver("create", &create, None, None).await, 202);
    ready(&t, "feat/created", SHA1).await;

    assert_eq!(t.push("docs-no-infra", SHA1).await, 202);
    let env = t.wait_for("docs-no-infra", "skipped", |e| e.status == Status::Skipped).await;
    assert!(t.stack(&env.stack_name).await.is_none());
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 0);

    // The branch's own settings: an invalid .previewd.toml fails with file and key named. (A commit of
    // its own: a file at a commit never changes, and previewd reads it once per commit.)
    let sha3 = "3333333333333333333333333333333333333333";
    t.github.set_file(REPO, sha3, ".previewd.toml", "service.cpu = 512\n");
    assert_eq!(t.push("feat/own", sha3).await, 202);
    let env = t.wait_for("feat/own", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.expect("error");
    assert!(
        error.contains(".previewd.toml at 3333333 (branch overrides layer): key `service.cpu`: expected string"),
        "{error}"
    );
    // A dynamic reference in a branch's file would be resolved with the stack's role into the branch's own
    // container: refused, and nothing created.
    let sha4 = "4444444444444444444444444444444444444444";
    let secret = "app.log_level = \"{{resolve:secretsmanager:previewd/oidc:SecretString:client_secret}}\"\n";
    t.github.set_file(REPO, sha4, ".previewd.toml", secret);
    assert_eq!(t.push("feat/steal", sha4).await, 202);
    let env = t.wait_for("feat/steal", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.expect("error");
    assert!(error.contains("key `app.log_level`: a branch may not set a CloudFormation dynamic reference"), "{error}");
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 0);
    assert!(t.stack(&env.stack_name).await.is_none());
    // A file too large to be settings (over 64 KiB, or over 1 MB, whose content GitHub leaves out) and a
    // folder of that name are refused with the reason, once: nothing is retried and nothing created.
    let huge = format!("app.log_level = \"{}\"\n", "x".repeat(2 << 20));
    for (n, (branch, file, why)) in [
        ("feat/large", Some(format!("# {}\n", "x".repeat(70_000))), "is 70003 bytes, over the 65536 bytes it may hold"),
        ("feat/huge", Some(huge), "bytes, over the 65536 bytes it may hold"),
        ("feat/folder", None, ".previewd.toml is a folder, not a file"),
    ]
    .into_iter()
    .enumerate()
    {
        let sha = format!("{}{n}", "5".repeat(39));
        match file {
            Some(text) => t.github.set_file(REPO, &sha, ".previewd.toml", &text),
            None => t.github.set_folder(REPO, &sha, ".previewd.toml"),
        }
        assert_eq!(t.push(branch, &sha).await, 202);
        let env = t.wait_for(branch, "failed", |e| e.status == Status::Failed).await;
        let error = env.last_error.clone().expect("error");
        assert!(error.contains(why) && error.len() < 400, "{branch}: {error}");
        assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 0, "{branch}");
    }
    let reads = t.github.requests().iter().filter(|r| r.contains("/contents/")).count();
    assert!(reads <= 8, "refused files are not asked for again and again: {reads}");
    t.github.set_file(REPO, SHA2, ".previewd.toml", "service.cpu = \"512\"\n[database]\nenabled = false\n");
    assert_eq!(t.push("feat/own", SHA2).await, 202);
    let env = ready(&t, "feat/own", SHA2).await;
    let resources =
        t.direct_aws().await.stack_resources(&env.stack_name, "AWS::RDS::DBInstance").await.expect("resources");
    assert!(resources.is_empty(), "the branch turned its database off");
    t.assert_clean(&[
        "feat/created",
        "feat/own",
        "docs-no-infra",
        "feat/steal",
        "feat/large",
        "feat/huge",
        "feat/folder",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_complete_is_deleted_and_created_again() {
    let mut t = TestEnv::start().await;
    let stack = &t.names("feat/rb").stack_name;
    t.proxy.rollback_next_create(stack);
    assert_eq!(t.push("feat/rb", SHA1).await, 202);
    let env = ready(&t, "feat/rb", SHA1).await;
    assert_eq!(&env.stack_name, stack);
    assert_eq!(t.proxy.count("CreateStack", stack), 2);
    assert_eq!(t.proxy.count("DeleteStack", stack), 1);
    assert!(events(&t, env.id).await.iter().any(|e| e.starts_with("rollback: create rolled back")));
}

/// A listener rule priority held by a rule previewd did not make (the cause is in the failed resource's
/// event, not the stack's reason): the environment moves to the next free priority, and the try is not
/// counted against `max_stack_attempts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_priority_taken_by_another_rule_moves_to_the_next_free_one() {
    let mut t = TestEnv::with(&Options { reconciler: "max_stack_attempts = 1", ..Options::default() }).await;
    let names = t.names("feat/rule");
    let stack = &names.stack_name;
    // The first environment of the repository gets its key's hint: that is the priority another rule holds.
    let taken = names.env_key.rule_priority_hint();
    let reason = format!(
        "Priority '{taken}' is currently in use (Service: ElasticLoadBalancingV2; Status Code: 400; Error Code: \
         PriorityInUse; Request ID: 0f6a2a3c)"
    );
    t.proxy.rollback_next_create_because(stack, "ListenerRule", "AWS::ElasticLoadBalancingV2::ListenerRule", &reason);
    assert_eq!(t.push("feat/rule", SHA1).await, 202);
    let first = t.wait_for("feat/rule", "a priority", |e| e.rule_priority.is_some()).await.rule_priority;
    assert_eq!(first, Some(i64::from(taken)));
    let moved = t.wait_for("feat/rule", "moved", |e| e.rule_priority.is_some() && e.rule_priority != first).await;
    assert_eq!(moved.attempts, 0, "the try is not counted against max_stack_attempts");
    let env = ready(&t, "feat/rule", SHA1).await;
    assert_ne!(env.rule_priority, first, "moved");
    assert_eq!(env.rule_priority, first.map(|p| p % 50_000 + 1), "to the next free one");
    let log = events(&t, env.id).await;
    assert!(log.iter().any(|e| e.contains("is held by a rule previewd did not make: moving to")), "{log:#?}");
    assert_eq!(t.proxy.count("CreateStack", stack), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_updates_and_throttling_converge() {
    let mut t = TestEnv::start().await;
    // Throttled beyond the SDK's own retries: the reconciler backs off and tries again.
    t.proxy.throttle("CreateStack", 6);
    t.proxy.throttle("DescribeStacks", 2);
    // And GitHub answers 502 twice.
    t.github.fail_next(2);
    assert_eq!(t.push("feat/slow", SHA1).await, 202);
    let env = ready(&t, "feat/slow", SHA1).await;
    let log = events(&t, env.id).await;
    assert!(
        log.iter().any(|e| e.starts_with("retry: GitHub API get branch acme/shop:feat/slow: HTTP 502")),
        "{log:#?}"
    );
    assert!(log.iter().any(|e| e.starts_with("retry: CreateStack: temporarily failing (Throttling)")), "{log:#?}");
    let throttled = t.proxy.calls().iter().filter(|c| c.injected && c.action == "CreateStack").count();
    assert_eq!(throttled, 6);
    assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 1);

    t.proxy.no_updates(1);
    assert_eq!(t.push("feat/slow", SHA2).await, 202);
    let env = ready(&t, "feat/slow", SHA2).await;
    assert_eq!(env.last_error, None);
    assert!(events(&t, env.id).await.iter().any(|e| e.contains("no updates are to be performed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_failed_is_retried_then_reported() {
    let mut t = TestEnv::start().await;
    for b in ["feat/late-write", "feat/stuck"] {
        assert_eq!(t.push(b, SHA1).await, 202);
    }
    let late = ready(&t, "feat/late-write", SHA1).await;
    let stuck = ready(&t, "feat/stuck", SHA1).await;
    fill_bucket(&t, &late.stack_name).await;

    // The application writes once more between emptying and DeleteStack: AWS says DELETE_FAILED.
    t.proxy.refill_buckets_before_delete(&late.stack_name, 1);
    t.proxy.refuse_keys(1); // and one DeleteObjects answers 200 with every key refused
    assert_eq!(t.delete("feat/late-write").await, 202);
    deleted(&t, "feat/late-write").await;
    let log = events(&t, late.id).await;
    assert!(log.iter().any(|e| e.contains("again after DELETE_FAILED")), "{log:#?}");

    // It never stops writing: reported after a bounded number of attempts, not a silent loop.
    t.proxy.refill_buckets_before_delete(&stuck.stack_name, 1000);
    assert_eq!(t.delete("feat/stuck").await, 202);
    let env = t.wait_for("feat/stuck", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.expect("error");
    assert!(error.contains("could not be deleted") && error.contains("not empty"), "{error}");
    let attempts = t
        .proxy
        .calls()
        .iter()
        .filter(|c| c.action == "DeleteStack" && c.stack.as_deref() == Some(&stuck.stack_name))
        .count();
    assert!(attempts <= 4, "{attempts} DeleteStack calls");
    t.assert_clean(&["feat/stuck"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rollback_failed_needs_a_person() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feat/urf", SHA1).await, 202);
    let env = ready(&t, "feat/urf", SHA1).await;
    t.proxy.rollback_fails_after_update(&env.stack_name);
    assert_eq!(t.push("feat/urf", SHA2).await, 202);
    let env = t.wait_for("feat/urf", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.expect("error");
    assert!(error.contains("UPDATE_ROLLBACK_FAILED") && error.contains("ContinueUpdateRollback"), "{error}");
    // No silent loop: the environment leaves the work queue, and no further update is tried.
    let updates = t.proxy.count("UpdateStack", &env.stack_name);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.store.pending(&[env.id]).await.expect("queue") > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still queued: the failure is being retried");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(t.proxy.count("UpdateStack", &env.stack_name), updates, "no update after failing");

    // Deleting the branch still cleans up.
    assert_eq!(t.delete("feat/urf").await, 202);
    deleted(&t, "feat/urf").await;
    t.assert_clean(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_previewd_did_not_create_is_never_touched() {
    let mut t = TestEnv::start().await;
    let name = &t.names("feat/theirs").stack_name;
    let aws = t.direct_aws().await;
    let template = r#"{"Resources":{"Topic":{"Type":"AWS::SNS::Topic"}}}"#;
    let req = previewd_cloud::StackRequest {
        name: name.clone(),
        template: previewd_cloud::Template::Body(template.into()),
        tags: vec![("previewd:owner".into(), "someone-else".into())],
        token: "theirs".into(),
        role_arn: None,
        timeout: None,
    };
    aws.create_stack(&req).await.expect("their stack");
    assert_eq!(t.push("feat/theirs", SHA1).await, 202);
    let env = t.wait_for("feat/theirs", "failed", |e| e.status == Status::Failed).await;
    assert_eq!(&env.stack_name, name);
    assert!(env.last_error.expect("error").contains("not created by this previewd"));
    assert_eq!(t.delete("feat/theirs").await, 202);
    t.wait_for("feat/theirs", "failed again", |e| {
        e.status == Status::Failed && e.desired == previewd_domain::Desired::Absent
    })
    .await;
    assert_eq!(t.stack(name).await.expect("still there").status, "CREATE_COMPLETE");
    assert_eq!(t.proxy.count("UpdateStack", name) + t.proxy.count("DeleteStack", name), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_wins_over_a_create_in_flight() {
    let mut t = TestEnv::start().await;
    let stack = t.names("feat/brief").stack_name;
    t.proxy.slow_create(&stack, std::time::Duration::from_secs(2));
    assert_eq!(t.push("feat/brief", SHA1).await, 202);
    t.wait_for("feat/brief", "provisioning", |e| e.status == Status::Provisioning && e.stack_id.is_some()).await;
    assert_eq!(t.delete("feat/brief").await, 202);
    t.wait_for("feat/brief", "deleting while the create finishes", |e| e.status == Status::Deleting).await;
    let env = deleted(&t, "feat/brief").await;
    assert!(t.stack(&stack).await.is_none());
    assert_eq!(t.proxy.count("CreateStack", &stack), 1);
    assert!(env.deployed_sha.is_none(), "never reported ready");
    t.assert_clean(&[]).await;
}

/// A copy of the shipped blueprints whose webapp environment template is over 51,200 bytes.
fn padded_stacks(dir: &std::path::Path) -> std::path::PathBuf {
    let stacks = dir.join("stacks");
    let src = previewd_testkit::workspace_root().join("stacks/webapp");
    std::fs::create_dir_all(stacks.join("webapp")).expect("mkdir");
    for f in std::fs::read_dir(&src).expect("blueprint") {
        let f = f.expect("entry");
        let to = stacks.join("webapp").join(f.file_name());
        if f.path().is_dir() {
            std::os::unix::fs::symlink(f.path(), to).expect("link"); // the seed fixtures
        } else {
            std::fs::copy(f.path(), to).expect("copy");
        }
    }
    let path = stacks.join("webapp/environment.json");
    let mut t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    t["Resources"]["LogGroup"]["Metadata"] = serde_json::json!({ "Padding": "x".repeat(60_000) });
    std::fs::write(&path, t.to_string()).expect("write");
    stacks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_templates_go_through_s3() {
    let mut t = TestEnv::start().await;
    t.stop_app().await;
    let stacks = padded_stacks(t.dir.path());
    t.s3().await.create_bucket().bucket("previewd-templates").send().await.expect("bucket");
    let config = std::fs::read_to_string(&t.config_path).expect("config");
    let config = config.replace("stacks_dir = ", "template_bucket = \"previewd-templates\"\nstacks_dir = ");
    let config = config.replace(
        &previewd_testkit::workspace_root().join("stacks").display().to_string(),
        &stacks.display().to_string(),
    );
    std::fs::write(&t.config_path, config).expect("config");
    t.start_app().await;

    assert_eq!(t.push("feat/big", SHA1).await, 202);
    let env = ready(&t, "feat/big", SHA1).await;
    let keys = t.s3().await.list_objects_v2().bucket("previewd-templates").send().await.expect("list");
    let uploaded: Vec<_> = keys.contents().iter().filter_map(|o| o.key()).collect();
    assert!(uploaded.iter().any(|k| k.starts_with(&format!("{}/", env.stack_name))), "{uploaded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_is_the_truth_both_ways_but_a_lost_token_deletes_nothing() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feat/again", SHA1).await, 202);
    ready(&t, "feat/again", SHA1).await;

    // Deleted and created again at once; the `delete` arrives last. GitHub still has the branch.
    t.github.set_branch(REPO, "feat/again", SHA2);
    let late_delete = serde_json::to_vec(&webhook::branch_event("delete", REPO, "feat/again")).expect("json");
    assert_eq!(t.deliver("delete", &late_delete, None, None).await, 202);
    let env = ready(&t, "feat/again", SHA2).await;
    assert!(events(&t, env.id).await.iter().any(|e| e.contains("GitHub: the branch is at 2222222")));

    // The token loses access: GitHub answers 404 for the branch and for the repository. Nothing goes:
    // the fleet observer cannot list the branches, so it takes nothing as gone, and a push's reconcile
    // finds the repository hidden.
    t.github.hide_repo(REPO, true);
    assert_eq!(t.app().reconciler().resync().await, 0);
    let push = serde_json::to_vec(&webhook::push(REPO, "feat/again", SHA1, SHA2)).expect("json");
    assert_eq!(t.deliver("push", &push, None, None).await, 202);
    let env = t
        .wait_for("feat/again", "retrying", |e| {
            e.last_error.as_deref().is_some_and(|m| m.contains("does not show repository"))
        })
        .await;
    assert_eq!(env.status, Status::Ready);
    assert!(t.stack(&env.stack_name).await.is_some(), "nothing deleted");
    assert_eq!(t.proxy.count("DeleteStack", &env.stack_name), 0);
    t.github.hide_repo(REPO, false);
    t.wait_for("feat/again", "recovered", |e| e.status == Status::Ready && e.last_error.is_none()).await;

    // Another replica is updating the application stack: "in UPDATE_IN_PROGRESS state" is retried.
    let app = "previewd-acme-shop-9c20806a-staging";
    t.proxy.fail(
        "cloudformation",
        "CreateStack",
        1,
        400,
        "ValidationError",
        &format!("Stack:arn:aws:cloudformation:us-east-1:123456789012:stack/{app}/x is in UPDATE_IN_PROGRESS state and can not be updated."),
    );
    assert_eq!(t.push("feat/other", SHA1).await, 202);
    let env = ready(&t, "feat/other", SHA1).await;
    assert!(events(&t, env.id).await.iter().any(|e| e.starts_with("retry:") && e.contains("UPDATE_IN_PROGRESS state")));
}
