//! Chaos: mixed pushes, deletions, duplicate and out-of-order deliveries over many branches, sent to a
//! real `previewd serve` that is killed with SIGKILL at random moments and started again. Once it settles,
//! stacks exist for exactly the live, provisionable branches at their newest commits, no stack was
//! created again without being deleted in between, and nothing else is left in moto.
//!
//! Seeded: a failure prints its seed; `PREVIEWD_CHAOS_SEED=<seed>` replays the same operations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use previewd_domain::Status;
use previewd_testkit::{Options, REPO, Serve, TestEnv, sha, webhook};

const BRANCHES: usize = 50;
const OPERATIONS: usize = 200;
/// Out of 100: the chance that previewd is killed before an operation.
const KILL_PERCENT: u32 = 4;
const SETTLE: Duration = Duration::from_secs(180);

fn branch(i: usize) -> String {
    // Every tenth branch is never provisioned: recorded and shown as skipped.
    if i % 10 == 9 { format!("chaos/b{i:02}-no-infra") } else { format!("chaos/b{i:02}") }
}

/// A delivery as GitHub sent it, to send again (a redelivery) or late (out of order).
#[derive(Clone)]
struct Sent {
    event: &'static str,
    body: Vec<u8>,
    delivery: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_amid_mixed_deliveries_settle_to_exactly_the_live_branches() {
    let seed =
        std::env::var("PREVIEWD_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos seed {seed} (replay: PREVIEWD_CHAOS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    // A late push of a deleted branch is believed over GitHub's 404 until the grace has passed: short here.
    let opts = Options { top: "max_environments = 500", grace: "1s", ..Options::default() };
    let mut t = TestEnv::with(&opts).await;
    t.stop_app().await;
    let bin = env!("CARGO_BIN_EXE_previewd");
    let logs = t.dir.path().to_owned();
    let log = |n: usize| logs.join(format!("serve-{n}.log"));
    let mut server = Serve::start(&t, bin, &[], &[], log(0)).await;
    t.set_target(server.addr);

    // What GitHub holds: each branch's newest commit, or none once deleted.
    let mut head: Vec<Option<usize>> = vec![None; BRANCHES];
    let mut sent: Vec<Sent> = Vec::new();
    let mut pushes: Vec<Sent> = Vec::new();
    let (mut commits, mut kills) = (0, 0);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..OPERATIONS {
        if rng.u32(..100) < KILL_PERCENT {
            drop(server); // SIGKILL, whatever it was doing
            kills += 1;
            server = Serve::start(&t, bin, &[], &[], log(kills)).await;
            t.set_target(server.addr);
        }
        let b = rng.usize(..BRANCHES);
        let name = branch(b);
        let (what, delivery) = match rng.u32(..100) {
            0..55 => {
                commits += 1;
                t.github.set_branch(REPO, &name, &sha(commits));
                let before = head[b].map_or_else(|| "0".repeat(40), sha);
                head[b] = Some(commits);
                let body = serde_json::to_vec(&webhook::push(REPO, &name, &before, &sha(commits))).expect("json");
                let d = Sent { event: "push", body, delivery: format!("chaos-{}", fastrand::u64(..)) };
                pushes.push(d.clone());
                ("push", d)
            }
            55..70 if head[b].is_some() => {
                t.github.delete_branch(REPO, &name);
                head[b] = None;
                let body = serde_json::to_vec(&webhook::branch_event("delete", REPO, &name)).expect("json");
                ("delete", Sent { event: "delete", body, delivery: format!("chaos-{}", fastrand::u64(..)) })
            }
            // GitHub redelivers: the same delivery id again.
            70..85 if !sent.is_empty() => ("duplicate", sent[rng.usize(..sent.len())].clone()),
            // An older push of some branch arrives late, under its own delivery id.
            85.. if !pushes.is_empty() => {
                let late = &pushes[rng.usize(..pushes.len())];
                ("late", Sent { delivery: format!("chaos-{}", fastrand::u64(..)), ..late.clone() })
            }
            _ => continue,
        };
        *counts.entry(what).or_default() += 1;
        let status = t.deliver(delivery.event, &delivery.body, None, Some(&delivery.delivery)).await;
        assert!(status == 202 || status == 200, "{what}: {status}");
        sent.push(delivery);
        tokio::time::sleep(Duration::from_millis(rng.u64(..30))).await;
    }
    // Killed once more with work surely under way, then left to settle.
    drop(server);
    kills += 1;
    let server = Serve::start(&t, bin, &[], &[], log(kills)).await;
    t.set_target(server.addr);
    eprintln!("{counts:?}, {commits} commits, {kills} SIGKILLs");

    let settled = |e: &previewd_store::EnvRecord, b: usize| match (head[b], branch(b).ends_with("-no-infra")) {
        (Some(_), true) => e.status == Status::Skipped,
        (Some(c), false) => e.status == Status::Ready && e.deployed_sha.as_ref().is_some_and(|s| s.as_str() == sha(c)),
        (None, true) => matches!(e.status, Status::Skipped | Status::Deleted),
        (None, false) => e.status == Status::Deleted,
    };
    let started = Instant::now();
    loop {
        let mut unsettled = Vec::new();
        for (b, commit) in head.iter().enumerate() {
            if let Some(e) = t.env(&branch(b)).await
                && !settled(&e, b)
            {
                let events = t.store.events(e.id, 8).await.expect("events");
                let events: Vec<String> =
                    events.iter().map(|v| format!("{} {}: {}", v.at, v.kind, v.message)).collect();
                let stack = t.stack(&e.stack_name).await.map(|s| (s.status, s.reason));
                unsettled.push((branch(b), e.status, *commit, e.last_error, events, stack));
            }
        }
        if unsettled.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < SETTLE,
            "seed {seed}: unsettled after {SETTLE:?}: {unsettled:#?}\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("settled {:.1?} after the last SIGKILL", started.elapsed());

    // Exactly the live, provisionable branches have stacks, at their newest commits; nothing else is left.
    let live: Vec<String> =
        (0..BRANCHES).filter(|b| head[*b].is_some() && !branch(*b).ends_with("-no-infra")).map(branch).collect();
    for (b, name) in (0..BRANCHES).map(|b| (b, branch(b))) {
        let Some(env) = t.env(&name).await else { continue };
        let stack = t.stack(&env.stack_name).await.filter(|s| s.status != "DELETE_COMPLETE");
        match head[b] {
            Some(c) if live.contains(&name) => {
                let stack = stack.unwrap_or_else(|| panic!("seed {seed}: {name} has no stack"));
                assert_eq!(stack.tag("previewd:sha"), Some(sha(c).as_str()), "seed {seed}: {name}");
            }
            _ => assert!(stack.is_none(), "seed {seed}: {name} is not live but has a stack"),
        }
    }
    let live: Vec<&str> = live.iter().map(String::as_str).collect();
    t.assert_clean(&live).await;

    // No stack was created again without a deletion in between (each create or delete counted at the AWS
    // boundary, in order; a create repeated with the same ClientRequestToken, after a SIGKILL lost its
    // answer, is one request retried: CloudFormation makes one stack of it).
    let mut stacks: BTreeMap<String, Vec<(&'static str, Option<String>)>> = BTreeMap::new();
    for c in t.proxy.calls().iter().filter(|c| c.service == "cloudformation" && !c.injected) {
        let action = match c.action.as_str() {
            "CreateStack" => "create",
            "DeleteStack" => "delete",
            _ => continue,
        };
        let calls = stacks.entry(c.stack.clone().unwrap_or_default()).or_default();
        if action == "create" && calls.last().is_some_and(|(a, token)| *a == "create" && *token == c.token) {
            continue;
        }
        calls.push((action, c.token.clone()));
    }
    for (stack, actions) in &stacks {
        if actions.windows(2).any(|w| w[0].0 == "create" && w[1].0 == "create") {
            let mut events = Vec::new();
            for b in 0..BRANCHES {
                if let Some(e) = t.env(&branch(b)).await.filter(|e| &e.stack_name == stack) {
                    events = t.store.events(e.id, 200).await.expect("events");
                }
            }
            let logs: String = (0..=kills).map(|n| std::fs::read_to_string(log(n)).unwrap_or_default()).collect();
            let logs: Vec<&str> = logs.lines().filter(|l| l.contains(stack.as_str()) || l.contains("create")).collect();
            panic!("seed {seed}: {stack} created twice without a deletion: {actions:?}\n{events:#?}\n{logs:#?}");
        }
    }
}
