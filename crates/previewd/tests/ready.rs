//! Ready means what the user means: the commit's image exists (the stack comes up alongside the build,
//! with no task), its required checks passed, and its URL answers. moto through the fault proxy, the fake
//! GitHub, a stand-in app over TLS, and the real process.

use std::time::Duration;

use previewd_domain::{EventKind, Status};
use previewd_store::Timeline;
use previewd_testkit::{Options, REPO, StandInApp, TestEnv, ZONE, eventually, sha, webhook};

/// The webapp blueprint's image repository, as its defaults name it (moto's account and region).
const IMAGE_REPOSITORY: &str = "webapp";

fn probing(app: &StandInApp, extra: &str) -> String {
    format!(
        "readiness.probe = true\nreadiness.connect_to = {:?}\nreadiness.ca_file = {:?}\n{extra}",
        app.connect_to(),
        app.ca_file().display().to_string()
    )
}

async fn timeline(t: &TestEnv, id: i64) -> Timeline {
    t.store.timeline(id).await.expect("store").expect("a timeline")
}

/// Waits until the branch's environment says what it waits for; returns that.
async fn waiting_for(t: &TestEnv, branch: &str) -> String {
    let env = t.wait_for(branch, "known", |_| true).await;
    for _ in 0..600 {
        if let Some(what) = t.store.timeline(env.id).await.expect("store").and_then(|t| t.waiting_for) {
            return what;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{branch}: waits for nothing: {:#?}", t.env(branch).await);
}

/// The ECS service's desired task count in the stack's template, if it has a stack.
async fn desired_count(t: &TestEnv, stack: &str) -> Option<i64> {
    let body = t.stack_template(stack).await?;
    let template: serde_json::Value = serde_json::from_str(&body).expect("JSON template");
    template["Resources"]["Service"]["Properties"]["DesiredCount"].as_i64()
}

/// The proxy's count of calls previewd made to `action`, for `stack` when given.
fn calls(t: &TestEnv, action: &str, stack: Option<&str>) -> usize {
    t.proxy
        .calls()
        .iter()
        .filter(|c| !c.injected && c.action == action && (stack.is_none() || c.stack.as_deref() == stack))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_comes_up_while_ci_builds_and_the_image_runs_once_it_exists() {
    let app = StandInApp::start(ZONE).await.expect("stand-in app");
    let ready = probing(&app, "artifact.wait = true");
    let mut t =
        TestEnv::with(&Options { ready: &ready, github: r#"token = "test-token""#, ..Options::default() }).await;
    t.github.open_pull(REPO, 4, "feature/built");
    let commit = sha(1);
    t.proxy.slow_create(&t.names("feature/built").stack_name, Duration::from_secs(3));
    assert_eq!(t.push("feature/built", &commit).await, 202);

    // While its stack comes up the commit waits for its image: `pending`, not `provisioning`.
    let creating = t.wait_for("feature/built", "its stack being created", |e| e.stack_id.is_some()).await;
    assert_eq!(creating.status, Status::Pending, "{creating:?}");

    // The infrastructure is complete, with no task, before the image exists.
    let env = t
        .wait_for("feature/built", "waiting with its infrastructure up", |e| {
            e.status == Status::Pending && e.stack_id.is_some() && e.url.is_some()
        })
        .await;
    let stack = t.stack(&env.stack_name).await.expect("stack");
    assert_eq!(stack.status, "CREATE_COMPLETE");
    assert_eq!(desired_count(&t, &env.stack_name).await, Some(0), "no task while the image is missing");
    let waiting = timeline(&t, env.id).await;
    assert!(waiting.infrastructure_at.is_some() && waiting.artifact_at.is_none(), "{waiting:?}");
    let what = waiting.waiting_for.clone().expect("waiting for something");
    assert!(what.contains(&format!("{IMAGE_REPOSITORY}:{commit}")), "{what}");
    assert_eq!(app.requests(), 0, "nothing is probed before the commit runs");
    // The pull request says so: the deployment is queued, the comment says what it waits for.
    let (deployment, queued, comment) =
        eventually("a queued deployment and a comment saying what it waits for", || {
            let d = t.github.deployments(REPO).first()?["id"].as_u64()?;
            let queued = t.github.deployment_statuses(REPO, d).first().cloned()?;
            let comment = t.github.comments(REPO, 4).first()?.1.clone();
            comment.contains("Waiting for").then_some((d, queued, comment))
        })
        .await;
    assert_eq!(queued["state"], "queued", "{queued}");
    let description = queued["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("waiting for") && description.contains(IMAGE_REPOSITORY), "{queued}");
    assert!(comment.contains(&commit[..7]) && comment.contains("in ECR (since "), "{comment}");

    // CI's build ends: one update runs the image, the URL answers, and only then is it ready.
    t.put_image(IMAGE_REPOSITORY, &commit).await;
    let env = t.ready("feature/built", &commit).await;
    assert_eq!(calls(&t, "CreateStack", Some(&env.stack_name)), 1);
    assert_eq!(calls(&t, "UpdateStack", Some(&env.stack_name)), 1, "one update, with the image");
    assert_eq!(desired_count(&t, &env.stack_name).await, Some(1));
    let done = timeline(&t, env.id).await;
    let (infra, artifact) = (done.infrastructure_at.expect("infra"), done.artifact_at.expect("artifact"));
    assert!(infra < artifact, "the infrastructure was up before the image: {done:?}");
    assert!(done.answered_at.is_some() && done.ready_at.is_some() && done.waiting_for.is_none(), "{done:?}");
    assert!(app.requests() >= 2, "answered twice in a row");
    assert!(app.hosts().iter().all(|h| *h == env.dns_name), "asked by its own name: {:?}", app.hosts());

    // GitHub: queued, then in_progress, then success; the comment tells how it came up.
    let comment = eventually("a comment saying ready, with the timeline", || {
        let c = t.github.comments(REPO, 4).first()?.1.clone();
        c.contains("**ready**").then_some(c)
    })
    .await;
    assert!(
        comment.contains("Timeline") && comment.contains("after the push") && comment.contains("build"),
        "{comment}"
    );
    assert!(!comment.contains("Waiting for"), "{comment}");
    let states: Vec<_> = eventually("a success", || {
        let s = t.github.deployment_statuses(REPO, deployment);
        s.iter().any(|s| s["state"] == "success").then_some(s)
    })
    .await
    .iter()
    .map(|s| s["state"].as_str().unwrap_or_default().to_owned())
    .collect();
    assert_eq!(states, ["queued", "in_progress", "success"]);

    // The API says the same.
    let view: serde_json::Value =
        reqwest::get(t.url(&format!("/api/environments/{}", env.id))).await.expect("api").json().await.expect("json");
    assert!(view["timeline"]["artifact_at"].is_string() && view["timeline"]["ready_at"].is_string(), "{view}");
    assert!(view["waiting_for"].is_null(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_environments_of_a_repository_share_their_ecr_looks() {
    // A blueprint without a waiting layer: the environments wait with no stack, so only the looks count.
    let stacks = tempfile::tempdir().expect("tempdir");
    let webapp = stacks.path().join("webapp");
    std::fs::create_dir_all(&webapp).expect("dir");
    let source = previewd_testkit::workspace_root().join("stacks/webapp");
    for entry in std::fs::read_dir(&source).expect("webapp") {
        let path = entry.expect("entry").path();
        if path.is_file() && path.file_name().is_some_and(|n| n != "waiting.toml") {
            std::fs::copy(&path, webapp.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    let seed = source.join("seed");
    copy_dir(&seed, &webapp.join("seed"));
    let dir = stacks.path().display().to_string();
    let opts = Options {
        ready: "artifact.wait = true\nreadiness.probe = false",
        stacks_dir: Some(&dir),
        ..Options::default()
    };
    let mut t = TestEnv::with(&opts).await;
    const N: usize = 50;
    for i in 0..N {
        assert_eq!(t.push(&format!("wait/{i}"), &sha(100 + i)).await, 202);
    }
    for i in 0..N {
        waiting_for(&t, &format!("wait/{i}")).await;
    }
    // Every one of them looks again every 2 s; together they cost one call a look, not fifty.
    let before = calls(&t, "BatchGetImage", None);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let looks = calls(&t, "BatchGetImage", None) - before;
    assert!((1..=7).contains(&looks), "{looks} BatchGetImage calls in 10 s for {N} waiting environments");
    // The image of one arrives: that one runs, the others go on waiting.
    t.put_image(IMAGE_REPOSITORY, &sha(107)).await;
    t.ready("wait/7", &sha(107)).await;
    let other = t.env("wait/8").await.expect("env");
    assert_eq!(other.status, Status::Pending, "{other:#?}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_check_fails_the_commit_and_a_passing_one_runs_the_next() {
    let ready = "artifact.wait = false\nartifact.checks = [\"build\"]\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, ..Options::default() }).await;
    let (first, second) = (sha(1), sha(2));
    t.github.set_check_run(REPO, &first, "build", "in_progress", None);
    assert_eq!(t.push("feature/checked", &first).await, 202);
    let what = waiting_for(&t, "feature/checked").await;
    assert!(what.contains("build"), "{what}");

    // The build fails; GitHub says so by webhook.
    t.github.set_check_run(REPO, &first, "build", "completed", Some("failure"));
    let body = serde_json::to_vec(&webhook::check_run(REPO, &first, "build", "failure")).expect("json");
    assert_eq!(t.deliver("check_run", &body, None, None).await, 202);
    let env = t.wait_for("feature/checked", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.clone().expect("why");
    assert!(why.contains("check build concluded failure") && why.contains("https://"), "{why}");
    assert_ne!(desired_count(&t, &env.stack_name).await, Some(1), "no task was ever asked for");

    // The next push, whose build passes, ends ready.
    t.github.set_check_run(REPO, &second, "build", "completed", Some("success"));
    assert_eq!(t.push("feature/checked", &second).await, 202);
    let env = t.ready("feature/checked", &second).await;
    let events = t.store.events(env.id, 100).await.expect("events");
    assert!(events.iter().any(|e| e.kind == EventKind::Failed && e.message.contains("build")), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_answering_503_is_not_ready_until_it_answers_and_one_that_never_does_fails() {
    let app = StandInApp::start(ZONE).await.expect("stand-in app");
    app.set_status(503);
    let extra = format!("[repos.\"{REPO}\".branches.\"doomed/*\"]\nreadiness.timeout = \"4s\"\n");
    let ready = probing(&app, "artifact.wait = false");
    let mut t = TestEnv::with(&Options { ready: &ready, extra: &extra, ..Options::default() }).await;
    assert_eq!(t.push("feature/slow-app", &sha(1)).await, 202);
    let env = t.wait_for("feature/slow-app", "probed", |e| e.status == Status::Provisioning && e.url.is_some()).await;
    let answer = loop {
        if let Some(a) = timeline(&t, env.id).await.last_answer {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(answer.contains("503"), "{answer}");
    // Asked three times more, all 503: still not ready, and probing asks Route53 nothing.
    let route53 = || calls(&t, "ChangeResourceRecordSets", None) + calls(&t, "ListResourceRecordSets", None);
    let (asked, dns) = (app.requests(), route53());
    let probed = async {
        while app.requests() < asked + 3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), probed).await.expect("probed three times more");
    assert_eq!(t.env("feature/slow-app").await.expect("env").status, Status::Provisioning, "not ready on a 503");
    assert_eq!(route53(), dns, "the name was pointed once, not at every probe");
    app.set_status(200);
    let env = t.ready("feature/slow-app", &sha(1)).await;
    assert!(timeline(&t, env.id).await.answered_at.is_some());

    // An app that never answers: failed once readiness.timeout has passed, with its last answer.
    app.set_status(503);
    assert_eq!(t.push("doomed/app", &sha(2)).await, 202);
    let env = t.wait_for("doomed/app", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.expect("why");
    assert!(why.contains("readiness.timeout") && why.contains("503"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_rolled_back_for_a_lasting_cause_names_it_and_waits_for_a_push() {
    let mut t = TestEnv::start().await;
    let stack = t.names("feature/no-image").stack_name;
    let reason = "ECS Deployment Circuit Breaker was triggered: CannotPullContainerError: pull image manifest has \
                  been retried 5 time(s): failed to resolve ref webapp:0000001: not found";
    t.proxy.rollback_next_create_because(&stack, "Service", "AWS::ECS::Service", reason);
    assert_eq!(t.push("feature/no-image", &sha(1)).await, 202);
    let env = t.wait_for("feature/no-image", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.expect("why");
    assert!(why.contains("Service (AWS::ECS::Service) failed") && why.contains("CannotPullContainerError"), "{why}");
    assert_eq!(t.proxy.creates_and_deletes(&stack), (1, 0), "not tried again");
    // A new push tries once more: the stack is deleted and created again, and ends ready.
    assert_eq!(t.push("feature/no-image", &sha(2)).await, 202);
    t.ready("feature/no-image", &sha(2)).await;
    assert_eq!(t.proxy.creates_and_deletes(&stack), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_rolled_back_by_a_failed_service_names_why_its_tasks_stopped() {
    let ready = "artifact.wait = true\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, ..Options::default() }).await;
    let commit = sha(1);
    assert_eq!(t.push("feature/crash", &commit).await, 202);
    let env =
        t.wait_for("feature/crash", "waiting, its stack up", |e| e.status == Status::Pending && e.url.is_some()).await;
    // CloudFormation says only that the circuit breaker tripped; ECS says why the tasks stopped.
    let breaker = "Resource handler returned message: \"Error occurred during operation 'ECS Deployment Circuit \
                   Breaker was triggered'.\"";
    t.proxy.rollback_next_update_because(&env.stack_name, "Service", "AWS::ECS::Service", breaker);
    let pull = "CannotPullContainerError: pull image manifest has been retried 7 time(s): AccessDeniedException";
    t.proxy.stopped_task("Task failed to start", pull);
    t.put_image(IMAGE_REPOSITORY, &commit).await;

    let env = t.wait_for("feature/crash", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.clone().expect("why");
    assert!(why.contains("Service (AWS::ECS::Service) failed") && why.contains("Circuit Breaker"), "{why}");
    assert!(why.contains("Its tasks stopped: Task failed to start; CannotPullContainerError"), "{why}");
    assert!(why.contains("task execution role may pull"), "with what to do: {why}");
    assert_eq!(calls(&t, "UpdateStack", Some(&env.stack_name)), 1, "a lasting cause is not tried again");
    assert_eq!(desired_count(&t, &env.stack_name).await, Some(0), "rolled back to no task");
    assert!(calls(&t, "ListTasks", None) >= 1 && calls(&t, "DescribeServices", None) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_past_its_deadline_is_cancelled_and_rolled_back() {
    let extra = format!("[repos.\"{REPO}\".branches.\"slow/*\"]\ninfrastructure.timeout = \"3s\"\n");
    let ready = "artifact.wait = false\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, extra: &extra, ..Options::default() }).await;
    assert_eq!(t.push("slow/update", &sha(1)).await, 202);
    let env = t.ready("slow/update", &sha(1)).await;
    // A create has CloudFormation's own deadline, in whole minutes.
    let create =
        t.proxy.calls().into_iter().find(|c| c.action == "CreateStack" && c.stack.as_ref() == Some(&env.stack_name));
    assert_eq!(create.and_then(|c| c.timeout_minutes).as_deref(), Some("1"));
    // The next update never ends by itself (CloudFormation waits up to hours for a service to settle).
    t.proxy.slow_update(&env.stack_name, Duration::from_secs(600));
    assert_eq!(t.push("slow/update", &sha(2)).await, 202);
    let env = t.wait_for("slow/update", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.clone().expect("why");
    assert!(why.contains("longer than infrastructure.timeout (3s)") && why.contains("cancelled"), "{why}");
    let cancels = t.proxy.calls().iter().filter(|c| c.action == "CancelUpdateStack").count();
    assert_eq!(cancels, 1);
    // CloudFormation rolled it back: the stack runs the commit it ran before.
    let stack = t.stack(&env.stack_name).await.expect("stack");
    assert_eq!(stack.tag(previewd_domain::tags::SHA), Some(sha(1).as_str()), "{stack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_past_its_deadline_names_what_it_waited_on_and_waits_for_a_push() {
    let ready = "artifact.wait = false\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, ..Options::default() }).await;
    let stack = t.names("feature/stuck").stack_name;
    // CloudFormation's own deadline (TimeoutInMinutes) passed while the service waited for healthy tasks:
    // it cancels what was in progress and rolls back, which deletes the service. ECS still lists the
    // cluster's stopped tasks, this service's among another's.
    t.proxy.rollback_next_create_because(&stack, "Service", "AWS::ECS::Service", "Resource creation cancelled");
    t.proxy.stopped_task_of_deleted_service(
        "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/pd/1)",
        "Stopped by ECS: unhealthy",
    );
    assert_eq!(t.push("feature/stuck", &sha(1)).await, 202);
    let env = t.wait_for("feature/stuck", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.expect("why");
    assert!(why.contains("not created within infrastructure.timeout"), "{why}");
    assert!(why.contains("Service (AWS::ECS::Service) was still in progress"), "{why}");
    assert!(why.contains("Its tasks stopped: Task failed ELB health checks"), "the deleted service's tasks: {why}");
    assert!(!why.contains("exit code") && !why.contains("Essential container"), "not another service's: {why}");
    assert!(why.contains("service.health_check_path"), "with what to do: {why}");
    assert_eq!(t.proxy.creates_and_deletes(&stack), (1, 0), "another try would take as long: not made");
    // A new push tries once more.
    assert_eq!(t.push("feature/stuck", &sha(2)).await, 202);
    t.ready("feature/stuck", &sha(2)).await;
    assert_eq!(t.proxy.creates_and_deletes(&stack), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_commits_update_past_its_deadline_makes_way_for_the_newest() {
    let extra = format!("[repos.\"{REPO}\".branches.\"slow/*\"]\ninfrastructure.timeout = \"3s\"\n");
    let ready = "artifact.wait = false\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, extra: &extra, ..Options::default() }).await;
    assert_eq!(t.push("slow/pushed", &sha(1)).await, 202);
    let env = t.ready("slow/pushed", &sha(1)).await;
    // The update to the second commit hangs; a third is pushed meanwhile.
    t.proxy.slow_update(&env.stack_name, Duration::from_secs(600));
    assert_eq!(t.push("slow/pushed", &sha(2)).await, 202);
    eventually("the second commit's update under way", || (calls(&t, "UpdateStack", None) == 1).then_some(())).await;
    assert_eq!(t.push("slow/pushed", &sha(3)).await, 202);
    // The hung update is cancelled past its deadline, and the newest commit runs.
    let env = t.ready("slow/pushed", &sha(3)).await;
    let cancels = t.proxy.calls().iter().filter(|c| c.action == "CancelUpdateStack").count();
    assert_eq!((cancels, calls(&t, "UpdateStack", Some(&env.stack_name))), (1, 2));
    let events = t.store.events(env.id, 100).await.expect("events");
    assert!(
        events.iter().any(|e| e.kind == EventKind::Update
            && e.message.contains(&format!("update of stack {} to {}", env.stack_name, &sha(2)[..7]))),
        "the cancel is told, naming the commit it was for: {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_coming_up_while_ci_builds_fails_at_once_for_a_lasting_cause() {
    // The commit waits for its image (`pending`) while its stack comes up: a cause that will not change
    // fails it at once, as it does one that runs (the environment's status is no sign of a new push).
    let ready = "artifact.wait = true\nreadiness.probe = false";
    let mut t = TestEnv::with(&Options { ready, ..Options::default() }).await;
    let stack = t.names("feature/invalid").stack_name;
    let reason = "Resource handler returned message: \"Invalid request provided: Create TaskDefinition: No Fargate \
                  configuration exists for given values: 256 CPU, 16384 memory\"";
    t.proxy.rollback_next_create_because(&stack, "TaskDefinition", "AWS::ECS::TaskDefinition", reason);
    assert_eq!(t.push("feature/invalid", &sha(1)).await, 202);
    let env = t.wait_for("feature/invalid", "failed", |e| e.status == Status::Failed).await;
    let why = env.last_error.expect("why");
    assert!(why.contains("TaskDefinition (AWS::ECS::TaskDefinition) failed") && why.contains("Invalid"), "{why}");
    assert_eq!(t.proxy.creates_and_deletes(&stack), (1, 0));
    // A push asks again: the stack is deleted and created once more.
    assert_eq!(t.push("feature/invalid", &sha(2)).await, 202);
    eventually("the stack created again", || (calls(&t, "CreateStack", Some(&stack)) == 2).then_some(())).await;
    assert_eq!(calls(&t, "DeleteStack", Some(&stack)), 1);
}
