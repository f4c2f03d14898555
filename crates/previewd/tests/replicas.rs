//! Several replicas on one PostgreSQL: due work lives in the database, so whichever replica is free takes
//! it; work a replica held when it died is taken over when its lease ends; each stack is created once;
//! and a scheduled reaper pass runs once per tick, whichever replica fires first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use previewd_domain::Status;
use previewd_testkit::{Options, Serve, TestEnv, postgres_database, sha};

const PUSHES: usize = 100;
/// The reaper's schedule for this test, and its period in milliseconds.
const SCHEDULE: &str = "*/2 * * * * *";
const TICK_MS: i64 = 2_000;
/// Every environment ready within this long of the last push (each is a real stack in moto).
const SETTLE: Duration = Duration::from_secs(300);

fn branch(i: usize) -> String {
    format!("load/b{i:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_work_and_take_over_from_one_killed() {
    let Some(db) = postgres_database("replicas").await else { return };
    let opts = Options { top: "max_environments = 500", database_url: Some(&db), ..Options::default() };
    let mut t = TestEnv::with(&opts).await;
    t.stop_app().await;
    // The test's configuration (a 2 s lease), with the reaper firing every 2 seconds.
    let text = std::fs::read_to_string(&t.config_path).expect("config");
    let text = text.replace(r#"schedule = "0 0 0 1 1 *""#, &format!("schedule = {SCHEDULE:?}"));
    let config = t.dir.path().join("replicas.toml");
    std::fs::write(&config, text).expect("replicas' config");
    let config = config.display().to_string();
    let env = [("PREVIEWD_CONFIG", config.as_str()), ("RUST_LOG", "previewd=info,previewd_reconciler=debug")];
    let bin = env!("CARGO_BIN_EXE_previewd");
    let mut replicas = Vec::new();
    for n in 0..3 {
        replicas.push(Serve::start(&t, bin, &[], &env, t.dir.path().join(format!("replica-{n}.log"))).await);
    }
    let pg = sqlx::PgPool::connect(&db).await.expect("the test's database");
    let started_ms = previewd_store::now_ms();
    let started = Instant::now();

    // The first half of the pushes, spread over all three.
    for i in 0..PUSHES / 2 {
        t.set_target(replicas[i % 3].addr);
        assert_eq!(t.push(&branch(i), &sha(i + 1)).await, 202, "push {i}");
    }
    // The third replica is killed (SIGKILL) while it holds work, but not in a reaper pass: a pass's lock
    // outlives its holder for 15 minutes, and every tick until then would be skipped (the ticks are
    // checked below).
    let victim = format!("%/{}-%", replicas[2].child.id());
    let held_sql = "SELECT id FROM environments WHERE lease_owner LIKE $1 AND lease_until > $2 \
                    AND NOT EXISTS (SELECT 1 FROM locks WHERE name = 'reaper' AND holder LIKE $1 AND until > $2)";
    let deadline = Instant::now() + Duration::from_secs(60);
    let held: Vec<i64> = loop {
        let held: Vec<i64> = sqlx::query_scalar(held_sql)
            .bind(&victim)
            .bind(previewd_store::now_ms())
            .fetch_all(&pg)
            .await
            .expect("leases");
        if !held.is_empty() {
            break held;
        }
        assert!(Instant::now() < deadline, "the third replica never held work: {}", replicas[2].logs());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    replicas[2].child.kill().expect("SIGKILL");
    replicas[2].child.wait().expect("reaped");
    let killed = Instant::now();
    // The second half, over the two left.
    for i in PUSHES / 2..PUSHES {
        t.set_target(replicas[i % 2].addr);
        assert_eq!(t.push(&branch(i), &sha(i + 1)).await, 202, "push {i}");
    }
    let last_push = Instant::now();

    // Everything ends ready, the dead replica's work included.
    let deadline = last_push + SETTLE;
    let mut taken_over = None;
    loop {
        let ready: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM environments WHERE status = 'ready' AND deployed_sha = desired_sha",
        )
        .fetch_one(&pg)
        .await
        .expect("count");
        if taken_over.is_none() {
            let done: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM environments WHERE id = ANY($1) AND (lease_owner IS NULL OR lease_owner NOT LIKE $2)",
            )
            .bind(&held)
            .bind(&victim)
            .fetch_one(&pg)
            .await
            .expect("count");
            if done == held.len() as i64 {
                taken_over = Some(killed.elapsed());
            }
        }
        if ready == PUSHES as i64 {
            break;
        }
        if Instant::now() > deadline {
            type Stuck = (i64, String, String, Option<i64>, Option<String>, Option<i64>);
            let stuck: Vec<Stuck> = sqlx::query_as(
                "SELECT id, branch, stack_name, due_at, lease_owner, lease_until FROM environments \
                 WHERE NOT (status = 'ready' AND deployed_sha = desired_sha)",
            )
            .fetch_all(&pg)
            .await
            .expect("stuck");
            // Each one's record and place in the queue, its stack in moto, the calls naming it, its events,
            // and what each replica logged of it, to tell why (whatever of it can be read).
            let mut seen = format!("now {}\n", previewd_store::now_ms());
            let moto = t.direct_aws().await;
            for (id, branch, stack, due, holder, until) in &stuck {
                let env = t.store.get(*id).await;
                let queue = (due, holder, until);
                let in_moto = moto.describe_stack(stack).await.map(|s| s.map(|s| (s.status, s.reason)));
                seen.push_str(&format!("{env:?}\n(due, holder, until): {queue:?}\nin moto: {in_moto:?}\n"));
                for c in t.proxy.calls().iter().filter(|c| c.stack.as_deref() == Some(stack.as_str())) {
                    let at = c.at.saturating_duration_since(started.into());
                    seen.push_str(&format!("{branch}: call at {at:?}: {} injected={}\n", c.action, c.injected));
                }
                for e in t.store.events(*id, 100).await.unwrap_or_default() {
                    seen.push_str(&format!("{branch}: {e:?}\n"));
                }
            }
            let branches: Vec<&String> = stuck.iter().map(|(_, branch, ..)| branch).collect();
            for (n, r) in replicas.iter().enumerate() {
                let logs = r.logs();
                for line in logs.lines().filter(|l| branches.iter().any(|b| l.contains(b.as_str()))) {
                    seen.push_str(&format!("replica {n}: {line}\n"));
                }
            }
            panic!("{ready} of {PUSHES} ready after {SETTLE:?}; not: {branches:?}\n{seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{PUSHES} ready {:.1?} after the last push; the killed replica's {} environments taken over {:.1?} after \
         the SIGKILL (lease 2 s)",
        last_push.elapsed(),
        held.len(),
        taken_over.unwrap_or_default(),
    );
    for id in &held {
        let env = t.store.get(*id).await.expect("store").expect("env");
        assert_eq!(env.status, Status::Ready, "{}", env.branch);
    }

    // Each stack was created exactly once, counted at the AWS boundary.
    for i in 0..PUSHES {
        let env = t.env(&branch(i)).await.expect("env");
        assert_eq!(env.deployed_sha.as_ref().map(|s| s.to_string()), Some(sha(i + 1)), "{}", env.branch);
        assert_eq!(t.proxy.count("CreateStack", &env.stack_name), 1, "{}", env.stack_name);
    }
    let app = previewd_domain::app_stack_name(
        &previewd_domain::RepoName::new(previewd_testkit::REPO).expect("repo"),
        previewd_domain::Stage::Staging,
    );
    assert_eq!(t.proxy.count("CreateStack", &app), 1, "the shared application stack");

    // One reaper pass per tick of the schedule, whichever replica fired first; none refused for
    // another's pass.
    let passes: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT started_at, outcome, summary FROM reaper_passes WHERE dry_run = 0 AND started_at >= $1 ORDER BY started_at",
    )
    .bind(started_ms)
    .fetch_all(&pg)
    .await
    .expect("passes");
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for (at, outcome, summary) in &passes {
        *per_tick.entry(at / TICK_MS).or_default() += 1;
        assert!(!summary.contains("another reaper pass is running"), "{outcome}: {summary}");
    }
    let ticks = (previewd_store::now_ms() - started_ms) / TICK_MS;
    assert!(per_tick.len() >= 3, "{} passes in {ticks} ticks: {passes:?}", passes.len());
    assert!(per_tick.values().all(|n| *n == 1), "more than one pass in a tick: {per_tick:?}");
}
