//! Benchmark, not a test (`#[ignore]`; run by `bench/push.sh`): from a push's webhook to the first
//! CloudFormation call naming the branch's stack, and to its CreateStack, over `PREVIEWD_BENCH_PUSHES`
//! (default 50) pushes against moto, one at a time (each environment ready before the next push),
//! measured where calls reach the AWS proxy (release build: `bench/push.sh`); beside the time a fresh Python
//! process with boto3 takes to call CreateStack (the per-push script previewd replaces). Prints figures.

use std::time::Duration;

use previewd_testkit::{TestEnv, sha, venv_bin};
use tokio::time::Instant;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn line(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "push {what}: n={} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        v.len(),
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99)),
        ms(v[v.len() - 1])
    );
    percentile(&v, 0.5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/push.sh"]
async fn push_to_the_first_cloudformation_call() {
    let n: usize = std::env::var("PREVIEWD_BENCH_PUSHES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let mut t = TestEnv::start().await;
    // The repository's application stack first: the figures are those of one more environment.
    assert_eq!(t.push("bench/warm", &sha(0)).await, 202);
    t.ready("bench/warm", &sha(0)).await;
    let (mut first, mut create) = (Vec::new(), Vec::new());
    for i in 0..n {
        let branch = format!("bench/p{i:03}");
        let stack = t.names(&branch).stack_name;
        // Only the calls made from here on are looked at (each poll copies what is new, not every call).
        let seen = t.proxy.calls().len();
        // Timed from the moment the delivery, made and signed as GitHub would, is sent.
        let delivery = t.push_request(&branch, &sha(i + 1));
        let pushed = Instant::now();
        assert_eq!(delivery.send().await.expect("previewd answers").status(), 202);
        let deadline = pushed + Duration::from_secs(60);
        let (mut named, mut looked) = (Vec::new(), seen);
        let created = loop {
            let calls = t.proxy.calls_from(looked);
            looked += calls.len();
            named.extend(calls.into_iter().filter(|c| c.stack.as_deref() == Some(stack.as_str())));
            if let Some(c) = named.iter().find(|c| c.action == "CreateStack") {
                // The proxy records a call when moto takes it, one at a time, with the time it arrived.
                first.push(named.iter().map(|c| c.at).min().unwrap_or(c.at) - pushed);
                break c.at - pushed;
            }
            assert!(Instant::now() < deadline, "{branch}: no CreateStack");
            tokio::time::sleep(Duration::from_micros(500)).await;
        };
        create.push(created);
        // Each push finds previewd idle: the figure is the latency of one push, not of a queue.
        t.ready(&branch, &sha(i + 1)).await;
    }
    let to_first = line("→ first CloudFormation call naming its stack", first);
    let to_create = line("→ CreateStack", create);

    // The per-push script: a fresh Python process with boto3 calling CreateStack.
    let python = venv_bin("python");
    let mut script = Vec::new();
    for i in 0..10 {
        let code = format!(
            "import boto3\nc = boto3.client('cloudformation', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='x', aws_secret_access_key='x')\nc.create_stack(StackName='script-{i}', \
             TemplateBody='{{\"Resources\":{{\"T\":{{\"Type\":\"AWS::SNS::Topic\"}}}}}}')",
            t.moto.endpoint
        );
        let started = std::time::Instant::now();
        let out = std::process::Command::new(&python).arg("-c").arg(code).output().expect("python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        script.push(started.elapsed());
    }
    let script = line("script: python + boto3 CreateStack (fresh process)", script);
    eprintln!(
        "push ratio: the script's p50 / previewd's p50 → first CloudFormation call = {:.0}×, → CreateStack = {:.0}×",
        script.as_secs_f64() / to_first.as_secs_f64(),
        script.as_secs_f64() / to_create.as_secs_f64()
    );
}
