//! Benchmark, not a test (`#[ignore]`; run by `bench/ready.sh`): from a push to its URL answering, with a
//! simulated build (the stand-in CI puts the image into moto's ECR, and, where said, sends `workflow_run`
//! completed) and a simulated stack (the fault proxy holds the create in progress), beside the sequential
//! pipeline previewd replaces (build, then the stack), all in one run against one previewd with its
//! production polling (`poll_min` 5 s, `poll_max` 60 s). Prints each case's time and previewd's overhead
//! beyond the longer of build and infrastructure.

use std::time::{Duration, Instant};

use previewd_testkit::{Options, REPO, StandInApp, TestEnv, ZONE, sha, webhook};

const IMAGE_REPOSITORY: &str = "webapp";

struct Case {
    branch: String,
    build: Duration,
    stack: Duration,
    /// The stand-in CI sends `workflow_run` when its build ends.
    webhook: bool,
    /// The sequential pipeline: the push is delivered only once the build has ended.
    sequential: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/ready.sh"]
async fn push_to_answering_beside_the_sequential_pipeline() {
    let scale: f64 = std::env::var("PREVIEWD_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let secs = |s: f64| Duration::from_secs_f64(s * scale);
    let app = StandInApp::start(ZONE).await.expect("stand-in app");
    let ready = format!(
        "artifact.wait = true\nreadiness.probe = true\nreadiness.connect_to = {:?}\nreadiness.ca_file = {:?}",
        app.connect_to(),
        app.ca_file().display().to_string()
    );
    let reconciler = "poll_min = \"5s\"\npoll_max = \"60s\"\n";
    let mut t = TestEnv::with(&Options { ready: &ready, reconciler, ..Options::default() }).await;
    // The application stack first: the figures are those of one more environment.
    t.put_image(IMAGE_REPOSITORY, &sha(0)).await;
    assert_eq!(t.push("bench/warm", &sha(0)).await, 202);
    t.ready("bench/warm", &sha(0)).await;

    // Two rounds of the same cases: the first as a new installation sees them, the second once previewd
    // has learned how long this blueprint's stacks take.
    for (round, base) in [("first", 10), ("learned", 40)] {
        let case = |name: &str, build: f64, stack: f64, webhook: bool, sequential: bool| Case {
            branch: format!("bench/{round}-{name}"),
            build: secs(build),
            stack: secs(stack),
            webhook,
            sequential,
        };
        let cases = [
            case("b60-s45-hook", 60.0, 45.0, true, false),
            case("b60-s45-poll", 60.0, 45.0, false, false),
            case("b60-s45-seq", 60.0, 45.0, false, true),
            case("b45-s60-hook", 45.0, 60.0, true, false),
            case("b45-s60-poll", 45.0, 60.0, false, false),
            case("b45-s60-seq", 45.0, 60.0, false, true),
        ];
        run(&mut t, &cases, base, secs(400.0)).await;
    }
}

async fn run(t: &mut TestEnv, cases: &[Case], base: usize, limit: Duration) {
    let start = Instant::now();
    let mut runs = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let commit = sha(base + i);
        t.proxy.slow_create(&t.names(&case.branch).stack_name, case.stack);
        if !case.sequential {
            assert_eq!(t.push(&case.branch, &commit).await, 202);
        }
        runs.push((case, commit));
    }
    // The stand-in CI: each build ends `build` after the start; the sequential pipeline pushes then.
    let mut built = vec![false; runs.len()];
    let mut answered = vec![None; runs.len()];
    while answered.iter().any(Option::is_none) {
        for (i, (case, commit)) in runs.iter().enumerate() {
            if !built[i] && start.elapsed() >= case.build {
                built[i] = true;
                t.put_image(IMAGE_REPOSITORY, commit).await;
                if case.webhook {
                    let body = serde_json::to_vec(&webhook::workflow_run(REPO, commit, "success")).expect("json");
                    assert_eq!(t.deliver("workflow_run", &body, None, None).await, 202);
                }
                if case.sequential {
                    assert_eq!(t.push(&case.branch, commit).await, 202);
                }
            }
            if answered[i].is_none()
                && let Some(env) = t.env(&case.branch).await
                && env.status == previewd_domain::Status::Ready
                && env.deployed_sha.as_ref().is_some_and(|s| s.as_str() == commit)
            {
                answered[i] = Some(start.elapsed());
            }
        }
        if start.elapsed() > limit {
            for (case, _) in &runs {
                let env = t.env(&case.branch).await.expect("env");
                let timeline = t.store.timeline(env.id).await.expect("store");
                let events = t.store.events(env.id, 20).await.expect("events");
                eprintln!("{}: {:?} {:?} {timeline:?}\n{events:#?}", case.branch, env.status, env.last_error);
            }
            panic!("not all ready: {answered:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for ((case, _), took) in runs.iter().zip(answered) {
        let took = took.expect("answered");
        let floor = if case.sequential { case.build + case.stack } else { case.build.max(case.stack) };
        let over = took.as_secs_f64() - floor.as_secs_f64();
        println!(
            "ready {:<22} build {:>4.0} s, stack {:>4.0} s: answered after {:>6.1} s; beyond {} ({:.0} s): {:+.1} s ({:+.0} %)",
            case.branch,
            case.build.as_secs_f64(),
            case.stack.as_secs_f64(),
            took.as_secs_f64(),
            if case.sequential { "build + stack" } else { "max(build, stack)" },
            floor.as_secs_f64(),
            over,
            100.0 * over / floor.as_secs_f64()
        );
    }
}
