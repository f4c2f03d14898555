//! One suite, run against SQLite (a fresh file per test) and PostgreSQL (a fresh database per test, on
//! `PREVIEWD_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`; set it to `skip`
//! to leave PostgreSQL out on a machine without one).

use std::sync::atomic::{AtomicU32, Ordering};

use previewd_domain::{
    BranchName, CommitSha, DeploymentState, Desired, DnsZone, EnvNames, EventKind, OwnerId, PassOutcome, RepoName,
    Status, StepOutcome,
};
use previewd_store::{DesiredChange, Fence, Lane, Observed, Recorded, Store, StoreError, now_ms};
use sqlx::Executor as _;

struct TestDb {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the admin URL and the database to drop afterwards.
    drop: Option<(String, String)>,
}

impl TestDb {
    async fn cleanup(self) {
        self.store.close().await;
        if let Some((admin, name)) = self.drop {
            let pool = sqlx::AnyPool::connect(&admin).await.expect("admin");
            pool.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.expect("drop");
            pool.close().await;
        }
    }
}

async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    TestDb { store: Store::connect(&url).await.expect("connect sqlite"), _dir: Some(dir), drop: None }
}

async fn postgres() -> Option<TestDb> {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = std::env::var("PREVIEWD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if admin == "skip" {
        eprintln!("PostgreSQL skipped: PREVIEWD_TEST_POSTGRES_URL=skip");
        return None;
    }
    sqlx::any::install_default_drivers();
    let name = format!("previewd_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let pool =
        sqlx::AnyPool::connect(&admin).await.expect("PostgreSQL reachable (or set PREVIEWD_TEST_POSTGRES_URL=skip)");
    pool.execute(format!("DROP DATABASE IF EXISTS {name}").as_str()).await.expect("drop");
    pool.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create database");
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("url with a database");
    let store = Store::connect(&format!("{base}/{name}")).await.expect("connect postgres");
    Some(TestDb { store, _dir: None, drop: Some((admin, name)) })
}

fn change(branch: &str, desired: Desired) -> DesiredChange {
    let repo = RepoName::new("acme/shop").expect("repo");
    let branch = BranchName::new(branch).expect("branch");
    let names =
        EnvNames::new(&OwnerId::new("t").expect("o"), &repo, &branch, &DnsZone::new("p.example.com").expect("z"));
    DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "test".into() }
}

fn sha(c: char) -> CommitSha {
    CommitSha::new(&c.to_string().repeat(40)).expect("sha")
}

fn present(c: char) -> Desired {
    Desired::Present { sha: Some(sha(c)) }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite_suite { $( #[tokio::test] async fn $name() { let db = super::sqlite().await; super::$name(db.store.clone()).await; db.cleanup().await } )* }
        mod postgres_suite { $( #[tokio::test] async fn $name() { if let Some(db) = super::postgres().await { super::$name(db.store.clone()).await; db.cleanup().await } } )* }
    };
}

both!(
    webhooks_record_desired_state_once_per_delivery,
    create_events_keep_the_known_commit,
    observed_state_and_events_round_trip,
    due_work_is_handed_out_once_and_kept_due_when_asked_again,
    a_lease_taken_over_fences_the_old_holder,
    the_webhook_lane_goes_first_and_requeues_wait,
    concurrent_claims_take_each_environment_once,
    priorities_are_unique_per_repository,
    deliveries_are_pruned_by_age,
    hostile_branch_names_round_trip,
    absence_evidence_keeps_the_first_sighting,
    named_locks_exclude_other_holders_until_they_expire,
    reaper_passes_round_trip,
    readable_keys_are_allocated_once_and_hashed_on_a_collision,
    pages_are_filtered_and_counted_in_sql,
    repositories_keep_githubs_spelling,
    a_batch_records_what_one_delivery_at_a_time_would,
    a_commits_checks_wake_the_environments_waiting_at_it,
);

async fn webhooks_record_desired_state_once_per_delivery(store: Store) {
    let c = change("feature/x", present('a'));
    let first = store.record_webhook("d-1", "push", Some(&c)).await.expect("record");
    let Recorded::New { env_id: Some(id) } = first else { panic!("{first:?}") };
    assert_eq!(store.record_webhook("d-1", "push", Some(&c)).await.expect("again"), Recorded::Duplicate);
    let env = store.get(id).await.expect("get").expect("exists");
    assert_eq!(env.desired, present('a'));
    assert_eq!(env.status, Status::Pending);
    assert_eq!(env.desired_seq, 1);
    assert_eq!(store.events(id, 10).await.expect("events").len(), 1, "the duplicate logged nothing");

    store.record_webhook("d-2", "push", Some(&change("feature/x", present('b')))).await.expect("second push");
    store.record_webhook("d-3", "delete", Some(&change("feature/x", Desired::Absent))).await.expect("delete");
    let env = store.find(&c.repo, &c.branch).await.expect("find").expect("exists");
    assert_eq!(env.desired, Desired::Absent);
    assert_eq!(env.desired_seq, 3);
    assert_eq!(store.list().await.expect("list").len(), 1);

    assert_eq!(store.record_webhook("d-4", "ping", None).await.expect("ping"), Recorded::New { env_id: None });
    assert_eq!(store.delivery_count().await.expect("count"), 4);
}

async fn create_events_keep_the_known_commit(store: Store) {
    let Recorded::New { env_id: Some(id) } =
        store.record_webhook("d-1", "push", Some(&change("x", present('a')))).await.expect("push")
    else {
        panic!()
    };
    store.record_webhook("d-2", "create", Some(&change("x", Desired::Present { sha: None }))).await.expect("create");
    assert_eq!(store.get(id).await.expect("get").expect("env").desired, present('a'));
}

async fn observed_state_and_events_round_trip(store: Store) {
    let Recorded::New { env_id: Some(id) } =
        store.record_webhook("d-1", "push", Some(&change("x", present('a')))).await.expect("push")
    else {
        panic!()
    };
    let o = Observed {
        status: Status::Ready,
        deployed_sha: Some(sha('a')),
        stack_id: Some("arn:aws:cloudformation:us-east-1:1:stack/x/1".into()),
        url: Some("https://x.p.example.com".into()),
        last_error: None,
        attempts: 2,
        retries: 3,
    };
    store
        .update_observed(Fence::unleased(id), &o, Some((EventKind::Ready, "stack CREATE_COMPLETE")))
        .await
        .expect("update");
    let env = store.get(id).await.expect("get").expect("env");
    assert_eq!(env.observed(), o);
    store.reset_retries(Fence::unleased(id)).await.expect("reset");
    assert_eq!(store.get(id).await.expect("get").expect("env").retries, 0);
    let events = store.events(id, 10).await.expect("events");
    assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["webhook", "ready"]);
    let seq = store.get(id).await.expect("get").expect("env").desired_seq;
    assert!(!store.set_desired(id, seq - 1, &Desired::Absent, "stale").await.expect("stale"), "a newer desire wins");
    assert!(store.set_desired(id, seq, &Desired::Absent, "GitHub: branch not found").await.expect("set"));
    let env = store.get(id).await.expect("get").expect("env");
    assert_eq!((env.desired, env.desired_seq), (Desired::Absent, 2));

    // Seeding: asked for, stepped through with each outcome logged, then done.
    assert!(store.request_seed(id, "new stack").await.expect("request seed"));
    let env = store.get(id).await.expect("get").expect("env");
    assert!(env.seed_pending && env.seed_step == 0 && env.seed_log.is_empty() && env.seeded_at.is_none());
    let outcome = |step: i64, result: StepOutcome| previewd_store::SeedOutcome {
        step,
        name: format!("step {step}"),
        kind: "http".into(),
        outcome: result,
        detail: "HTTP 500".into(),
        at: 1,
    };
    let progress = |next_step, task: Option<&str>, o, finished| previewd_store::SeedProgress {
        next_step,
        task: task.map(str::to_owned),
        outcome: o,
        finished,
    };
    store
        .seed_progress(Fence::unleased(id), progress(0, Some("arn:task"), Some(outcome(0, StepOutcome::Failed)), false))
        .await
        .expect("fail");
    store
        .seed_progress(Fence::unleased(id), progress(1, None, Some(outcome(0, StepOutcome::Ok)), false))
        .await
        .expect("ok");
    store.seed_progress(Fence::unleased(id), progress(1, None, None, true)).await.expect("done");
    let env = store.get(id).await.expect("get").expect("env");
    assert!(!env.seed_pending && env.seeded_at.is_some() && env.seed_task.is_none(), "{env:#?}");
    assert_eq!(env.seed_log.iter().map(|o| o.outcome.as_str()).collect::<Vec<_>>(), ["failed", "ok"]);
    let kinds: Vec<_> = store.events(id, 20).await.expect("events").into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Seed).count(), 3, "{kinds:?}");

    // Feedback: every write of observed state makes it due; done only for the revision told.
    let env = store.get(id).await.expect("get").expect("env");
    assert!(env.feedback_due.is_some());
    let due = store.feedback_due(previewd_store::now_ms(), 10).await.expect("due");
    assert_eq!(due.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [id]);
    // One replica at a time: the claim holds only against the due time it read.
    let until = previewd_store::now_ms() + 60_000;
    assert!(store.claim_feedback(id, due[0].1, until).await.expect("claim"));
    assert!(!store.claim_feedback(id, due[0].1, until).await.expect("claim again"), "taken");
    assert!(store.feedback_due(previewd_store::now_ms(), 10).await.expect("due").is_empty(), "claimed");
    let rev = env.observed_rev;
    store.update_observed(Fence::unleased(id), &env.observed(), None).await.expect("update");
    store.feedback_done(id, rev).await.expect("done");
    assert!(store.get(id).await.expect("get").expect("env").feedback_due.is_some(), "a newer revision is still due");
    store.feedback_failed(id, 42, true, "GitHub API: HTTP 500").await.expect("failed");
    store.feedback_failed(id, 43, true, "GitHub API: HTTP 500").await.expect("failed again");
    let env = store.get(id).await.expect("get").expect("env");
    assert_eq!((env.feedback_due, env.feedback_retries), (Some(43), 2));
    let github_events =
        store.events(id, 50).await.expect("events").iter().filter(|e| e.kind == EventKind::Github).count();
    assert_eq!(github_events, 1, "the same error is logged once");
    store.feedback_done(id, env.observed_rev).await.expect("done");
    let env = store.get(id).await.expect("get").expect("env");
    assert_eq!((env.feedback_due, env.feedback_retries, env.feedback_error), (None, 0, None));
    assert!(store.feedback_due(i64::MAX, 10).await.expect("due").is_empty());
    let d = previewd_store::DeploymentRecord { sha: sha('b'), id: 9, state: Some(DeploymentState::Success) };
    store.set_deployment(id, &d).await.expect("deployment");
    assert_eq!(store.get(id).await.expect("get").expect("env").deployment, Some(d));

    // Pull-request comments: one per pull request, replaced, forgotten.
    let c = |pr, comment| previewd_store::PrComment {
        pr_number: pr,
        comment_id: comment,
        body_hash: format!("h{comment}"),
        author: Some(format!("dev{pr}")),
    };
    store.set_pr_comment(id, &c(7, 100)).await.expect("comment");
    store.set_pr_comment(id, &c(7, 101)).await.expect("comment replaced");
    store.set_pr_comment(id, &c(8, 200)).await.expect("comment");
    assert_eq!(store.pr_comments(id).await.expect("comments"), [c(7, 101), c(8, 200)]);
    let pulls = store.pull_requests(&[id, id + 1000]).await.expect("pull requests");
    let shown: Vec<_> = pulls.iter().map(|p| (p.env_id, p.number, p.author.as_deref())).collect();
    assert_eq!(shown, [(id, 7, Some("dev7")), (id, 8, Some("dev8"))]);
    store.forget_pr_comment(id, 7).await.expect("forget");
    assert_eq!(store.pr_comments(id).await.expect("comments"), [c(8, 200)]);
}

async fn pushed(store: &Store, delivery: &str, branch: &str) -> i64 {
    let r = store.record_webhook(delivery, "push", Some(&change(branch, present('a')))).await.expect("push");
    let Recorded::New { env_id: Some(id) } = r else { panic!("{r:?}") };
    id
}

async fn due_work_is_handed_out_once_and_kept_due_when_asked_again(store: Store) {
    let later = now_ms() + 60_000;
    assert_eq!(store.claim_due("a", later).await.expect("claim"), None, "nothing is due");
    let id = pushed(&store, "d-1", "x").await;
    assert_eq!(store.queue_stats().await.expect("stats").depth, 1, "the webhook made it due");
    let (a, claimed) = store.claim_due("a", later).await.expect("claim").expect("due");
    assert_eq!(a.id, id);
    assert_eq!(Some(claimed), store.get(id).await.expect("get"), "the record as the claim left it");
    assert_eq!(store.claim_due("b", later).await.expect("claim"), None, "held by a");
    assert_eq!(store.claim(id, "b", later).await.expect("claim"), None, "held by a");
    // A push while a holds it: on release it stays due, and b takes it.
    pushed(&store, "d-2", "x").await;
    assert_eq!(store.claim_due("b", later).await.expect("claim"), None, "still held by a");
    assert_eq!(store.pending(&[id]).await.expect("pending"), 1);
    store.release(&a, None).await.expect("release");
    let b = store.claim_due("b", later).await.expect("claim").expect("asked again meanwhile").0;
    assert!(b.epoch > a.epoch, "every claim is a new epoch");
    // Nothing asked meanwhile: done, not due.
    store.release(&b, None).await.expect("release");
    assert_eq!(store.claim_due("a", later).await.expect("claim"), None);
    assert_eq!(store.pending(&[id]).await.expect("pending"), 0);
    assert_eq!(store.queue_stats().await.expect("stats"), Default::default());
    // A record made without a webhook is not due until asked.
    let quiet = store.record_desired(&change("y", present('b'))).await.expect("record");
    assert_eq!(store.claim_due("a", later).await.expect("claim"), None);
    store.enqueue(quiet, Lane::Background, now_ms()).await.expect("enqueue");
    assert_eq!(store.claim_due("a", later).await.expect("claim").map(|(c, _)| c.id), Some(quiet));
}

async fn a_lease_taken_over_fences_the_old_holder(store: Store) {
    let id = pushed(&store, "d-1", "x").await;
    // a's lease ends at once (a replica that died, or stalled past its lease).
    let a = store.claim_due("a", now_ms() - 1).await.expect("claim").expect("due").0;
    assert!(store.next_due().await.expect("next").is_some_and(|at| at <= now_ms()), "due again: its lease ended");
    let b = store.claim_due("b", now_ms() + 60_000).await.expect("claim").expect("taken over").0;
    assert_eq!(b.id, id);
    assert!(!store.renew(&a, "a", now_ms() + 60_000).await.expect("renew"), "a lost it");
    assert!(store.renew(&b, "b", now_ms() + 60_000).await.expect("renew"));
    let before = store.get(id).await.expect("get").expect("env");
    let o = Observed { status: Status::Failed, last_error: Some("a's stale view".into()), ..before.observed() };
    let refused = store.update_observed(a.fence(), &o, Some((EventKind::Failed, "stale"))).await;
    assert!(matches!(refused, Err(StoreError::Fenced { id: i }) if i == id), "{refused:?}");
    let refused = store.seed_progress(a.fence(), Default::default()).await;
    assert!(matches!(&refused, Err(e) if e.is_fenced()), "{refused:?}");
    let refused = store.release(&a, None).await;
    assert!(matches!(&refused, Err(e) if e.is_fenced()), "{refused:?}");
    let env = store.get(id).await.expect("get").expect("env");
    assert_eq!((env.status, env.last_error.clone()), (Status::Pending, None), "nothing of a's was applied");
    assert!(!store.events(id, 10).await.expect("events").iter().any(|e| e.message == "stale"));
    assert_eq!(env.fence(), b.fence(), "the record carries the latest claim's epoch");
    let o = Observed { status: Status::Provisioning, ..env.observed() };
    store.update_observed(b.fence(), &o, Some((EventKind::Create, "b's"))).await.expect("b's write");
    store.release(&b, None).await.expect("release");
    assert_eq!(store.get(id).await.expect("get").expect("env").status, Status::Provisioning);
}

async fn the_webhook_lane_goes_first_and_requeues_wait(store: Store) {
    let later = now_ms() + 60_000;
    let quiet = store.record_desired(&change("bg", present('a'))).await.expect("record");
    store.enqueue(quiet, Lane::Background, now_ms() - 5_000).await.expect("enqueue");
    let urgent = pushed(&store, "d-1", "hook").await;
    let first = store.claim_due("w", later).await.expect("claim").expect("due").0;
    assert_eq!(first.id, urgent, "due later, but someone waits for it");
    // A requeue keeps it out of reach until its time, and the dispatcher knows when that is.
    let at = now_ms() + 30_000;
    store.release(&first, Some(at)).await.expect("release");
    assert_eq!(store.claim_due("w", later).await.expect("claim").map(|(c, _)| c.id), Some(quiet));
    assert_eq!(store.claim_due("w", later).await.expect("claim"), None, "the requeue is not due yet");
    assert_eq!(store.next_due().await.expect("next"), Some(at));
    // A webhook brings it forward; an earlier background request never demotes it.
    pushed(&store, "d-2", "hook").await;
    store.enqueue(urgent, Lane::Background, now_ms()).await.expect("enqueue");
    assert_eq!(store.claim_due("w", later).await.expect("claim").map(|(c, _)| c.id), Some(urgent));
    let stats = store.queue_stats().await.expect("stats");
    assert_eq!((stats.depth, stats.oldest_due), (2, None), "both held, none waiting");
}

async fn concurrent_claims_take_each_environment_once(store: Store) {
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(pushed(&store, &format!("d-{n}"), &format!("b{n}")).await);
    }
    let claimers = (0..6).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((c, _)) = store.claim_due(&format!("r{n}"), now_ms() + 60_000).await.expect("claim") {
                got.push(c.id);
            }
            got
        })
    });
    let mut claimed: Vec<i64> = Vec::new();
    for c in claimers {
        claimed.extend(c.await.expect("claimer"));
    }
    claimed.sort_unstable();
    assert_eq!(claimed, ids, "every due environment taken exactly once");
}

async fn priorities_are_unique_per_repository(store: Store) {
    let mut ids = vec![];
    for (i, b) in ["a", "b", "c"].into_iter().enumerate() {
        let r = store.record_webhook(&format!("d-{i}"), "push", Some(&change(b, present('a')))).await.expect("push");
        let Recorded::New { env_id: Some(id) } = r else { panic!() };
        ids.push(id);
    }
    let repo = RepoName::new("acme/shop").expect("repo");
    let p0 = store.allocate_priority(ids[0], &repo, 7, 10).await.expect("p0");
    let p1 = store.allocate_priority(ids[1], &repo, 7, 10).await.expect("p1");
    let p2 = store.allocate_priority(ids[2], &repo, 10, 10).await.expect("p2");
    assert_eq!((p0, p1), (7, 8), "the same hint moves on to the next free one");
    assert_eq!(p2, 10);
    assert_eq!(store.allocate_priority(ids[0], &repo, 1, 10).await.expect("again"), 7, "kept once given");
}

async fn deliveries_are_pruned_by_age(store: Store) {
    store.record_webhook("old", "ping", None).await.expect("record");
    assert_eq!(store.prune_deliveries(previewd_store::now_ms() - 1000).await.expect("prune"), 0);
    assert_eq!(store.prune_deliveries(previewd_store::now_ms() + 1000).await.expect("prune"), 1);
    assert_eq!(store.record_webhook("old", "ping", None).await.expect("again"), Recorded::New { env_id: None });
}

async fn hostile_branch_names_round_trip(store: Store) {
    for (i, b) in ["'; DROP TABLE environments;--", "ünï/🚀", "$(x)`y`", "a\u{202e}b"].into_iter().enumerate() {
        let b = b.replace(' ', "-");
        let c = change(&b, present('c'));
        store.record_webhook(&format!("h-{i}"), "push", Some(&c)).await.expect("record");
        let env = store.find(&c.repo, &c.branch).await.expect("find").expect("env");
        assert_eq!(env.branch.as_str(), b);
    }
    assert_eq!(store.list().await.expect("list").len(), 4);
}

async fn absence_evidence_keeps_the_first_sighting(store: Store) {
    let id = store.record_desired(&change("feat/y", present('a'))).await.expect("record");
    let env = store.get(id).await.expect("get").expect("env");
    assert!(env.pushed_at.is_some() && env.missing_since.is_none() && !env.keep);
    assert!(store.mark_missing(id, 1_000).await.expect("missing"));
    assert!(!store.mark_missing(id, 2_000).await.expect("again"), "the grace counts from the first absence");
    assert_eq!(store.get(id).await.expect("get").expect("env").missing_since, Some(1_000));
    // A push is evidence of presence: the branch is no longer missing.
    store.record_webhook("d-9", "push", Some(&change("feat/y", present('b')))).await.expect("push");
    assert_eq!(store.get(id).await.expect("get").expect("env").missing_since, None);
    assert!(store.mark_missing(id, 3_000).await.expect("missing"));
    assert!(store.mark_seen(id).await.expect("seen"));
    assert!(!store.mark_seen(id).await.expect("seen again"), "nothing to write");
    store.set_keep(id, true, "kept by a test").await.expect("keep");
    assert!(store.get(id).await.expect("get").expect("env").keep);
}

async fn named_locks_exclude_other_holders_until_they_expire(store: Store) {
    let now = previewd_store::now_ms();
    assert!(store.try_lock("reaper", "a", now + 60_000).await.expect("lock"));
    assert!(!store.try_lock("reaper", "b", now + 60_000).await.expect("held"));
    assert!(store.try_lock("reaper", "a", now + 90_000).await.expect("the holder extends it"));
    store.unlock("reaper", "b").await.expect("not b's to release");
    assert!(!store.try_lock("reaper", "b", now + 60_000).await.expect("still held"));
    store.unlock("reaper", "a").await.expect("release");
    assert!(store.try_lock("reaper", "b", now - 1).await.expect("free"));
    assert!(store.try_lock("reaper", "c", now + 60_000).await.expect("an expired lock is taken over"));
}

async fn reaper_passes_round_trip(store: Store) {
    assert_eq!(store.last_reaper_pass().await.expect("none"), None);
    let pass = |dry_run, outcome: PassOutcome| previewd_store::ReaperPassRecord {
        id: 0,
        started_at: 1,
        finished_at: 2,
        dry_run,
        outcome,
        summary: format!("{outcome} pass"),
        decisions: "[]".into(),
    };
    store.record_reaper_pass(&pass(false, PassOutcome::Removed)).await.expect("record");
    store.record_reaper_pass(&pass(true, PassOutcome::Clean)).await.expect("record dry run");
    let last = store.last_reaper_pass().await.expect("read").expect("one");
    assert_eq!((last.outcome.as_str(), last.dry_run), ("removed", false), "dry runs are not the last pass");
}

/// A webhook's change: the readable names first, the hashed ones on a collision.
fn readable_change(branch: &str) -> DesiredChange {
    let repo = RepoName::new("acme/shop").expect("repo");
    let branch = BranchName::new(branch).expect("branch");
    let (owner, zone) = (OwnerId::new("t").expect("o"), DnsZone::new("p.example.com").expect("z"));
    let hashed = EnvNames::hashed(&owner, &repo, &branch, &zone);
    let names = EnvNames::readable(&owner, &repo, &branch, &zone).expect("readable");
    DesiredChange {
        repo,
        repo_display: None,
        branch,
        names,
        fallback: Some(hashed),
        desired: present('a'),
        reason: "test".into(),
    }
}

async fn readable_keys_are_allocated_once_and_hashed_on_a_collision(store: Store) {
    // The slug first, then the plain label that is its own slug: each order gets two keys.
    let early = store.record_desired(&readable_change("fix/y")).await.expect("fix/y");
    let late = store.record_desired(&readable_change("fix-y")).await.expect("fix-y");
    let (e, l) = (store.get(early).await.expect("get").expect("e"), store.get(late).await.expect("get").expect("l"));
    assert_eq!(e.env_key.as_str(), "fix-y");
    assert!(l.env_key.is_hashed() && l.env_key.as_str().starts_with("fix-y-"), "{}", l.env_key);
    let first = store.record_desired(&readable_change("feat-x")).await.expect("feat-x");
    let second = store.record_desired(&readable_change("feat/x")).await.expect("feat/x");
    let (a, b) = (store.get(first).await.expect("get").expect("a"), store.get(second).await.expect("get").expect("b"));
    assert_eq!(a.env_key.as_str(), "feat-x");
    assert!(b.env_key.is_hashed() && b.env_key.as_str().starts_with("feat-x-"), "{}", b.env_key);
    assert_eq!(b.dns_name, format!("{}.p.example.com", b.env_key));
    // The key stays with the environment: a later change of the first never moves it.
    store.record_desired(&readable_change("feat-x")).await.expect("again");
    assert_eq!(store.get(first).await.expect("get").expect("a").env_key.as_str(), "feat-x");
    let c = store.record_desired(&readable_change("feature/login")).await.expect("login");
    assert_eq!(store.get(c).await.expect("get").expect("c").dns_name, "feature-login.p.example.com");
}

async fn pages_are_filtered_and_counted_in_sql(store: Store) {
    for b in ["feat/a_b", "feat/axb", "main", "gone"] {
        store.record_desired(&change(b, present('a'))).await.expect("record");
    }
    let gone = store.find(&RepoName::new("acme/shop").expect("repo"), &BranchName::new("gone").expect("b")).await;
    let gone = gone.expect("find").expect("env");
    let o = Observed { status: Status::Deleted, ..gone.observed() };
    store.update_observed(Fence::unleased(gone.id), &o, None).await.expect("deleted");
    let page = |text: Option<&str>, include_deleted: bool, limit: i64, offset: i64| previewd_store::EnvFilter {
        text: text.map(str::to_owned),
        include_deleted,
        limit,
        offset,
        ..Default::default()
    };
    let (envs, total) = store.list_page(&page(None, false, 2, 0)).await.expect("page");
    assert_eq!((envs.len(), total), (2, 3), "deleted ones hidden, the page bounded, the total counted");
    assert_eq!(store.list_page(&page(None, true, 10, 0)).await.expect("all").1, 4);
    assert_eq!(store.list_page(&page(None, false, 10, 2)).await.expect("offset").0.len(), 1);
    // `_` in the text is a character, not LIKE's wildcard.
    let (envs, _) = store.list_page(&page(Some("A_B"), false, 10, 0)).await.expect("text");
    assert_eq!(envs.iter().map(|e| e.branch.as_str()).collect::<Vec<_>>(), ["feat/a_b"]);
    // A branch exactly: not part of one, not another case.
    let exact = |b: &str| previewd_store::EnvFilter { branch: Some(b.into()), limit: 10, ..Default::default() };
    let (envs, _) = store.list_page(&exact("feat/a_b")).await.expect("branch");
    assert_eq!(envs.iter().map(|e| e.branch.as_str()).collect::<Vec<_>>(), ["feat/a_b"]);
    assert!(store.list_page(&exact("feat/a")).await.expect("branch").0.is_empty());
    assert!(store.list_page(&exact("FEAT/A_B")).await.expect("branch").0.is_empty());
    let by_status = previewd_store::EnvFilter { status: Some(Status::Deleted), limit: 10, ..Default::default() };
    assert_eq!(store.list_page(&by_status).await.expect("status").1, 1);
    let mut counts = store.status_counts().await.expect("counts");
    counts.sort();
    let shop = || "acme/shop".to_owned();
    assert_eq!(counts, [(shop(), "deleted".to_owned(), 1), (shop(), "pending".to_owned(), 3)]);
}

async fn repositories_keep_githubs_spelling(store: Store) {
    let first = DesiredChange { repo_display: Some("Acme/Shop".into()), ..change("x", present('a')) };
    let id = store.record_desired(&first).await.expect("record");
    assert_eq!(store.get(id).await.expect("get").expect("env").repo_display.as_deref(), Some("Acme/Shop"));
    // Compared case-blind: the same repository, whatever the spelling; a change without one keeps it.
    let again = DesiredChange { repo_display: Some("ACME/shop".into()), ..change("x", present('b')) };
    assert_eq!(store.record_desired(&again).await.expect("again"), id);
    store.record_desired(&change("x", present('c'))).await.expect("no spelling");
    assert_eq!(store.get(id).await.expect("get").expect("env").repo_display.as_deref(), Some("ACME/shop"));
}

async fn a_commits_checks_wake_the_environments_waiting_at_it(store: Store) {
    let waiting = store.record_desired(&change("waiting", present('a'))).await.expect("record");
    let queued = store.record_desired(&change("queued", present('a'))).await.expect("record");
    store.enqueue(queued, Lane::Background, now_ms() + 600_000).await.expect("enqueue");
    let other_commit = store.record_desired(&change("other-commit", present('b'))).await.expect("record");
    let gone = store.record_desired(&change("gone", Desired::Absent)).await.expect("record");
    let deleting = store.record_desired(&change("deleting", present('a'))).await.expect("record");
    let env = store.get(deleting).await.expect("get").expect("env");
    let o = Observed { status: Status::Deleting, ..env.observed() };
    store.update_observed(Fence::unleased(deleting), &o, None).await.expect("deleting");
    let elsewhere = {
        let repo = RepoName::new("acme/other").expect("repo");
        let branch = BranchName::new("waiting").expect("branch");
        let zone = DnsZone::new("p.example.com").expect("zone");
        let names = EnvNames::new(&OwnerId::new("t").expect("owner"), &repo, &branch, &zone);
        let c = DesiredChange { repo, branch, names, ..change("waiting", present('a')) };
        store.record_desired(&c).await.expect("record")
    };
    // Each waits for something of its commit, but one: ready at it, it waits for nothing.
    let settled = store.record_desired(&change("settled", present('a'))).await.expect("record");
    for (id, commit) in
        [(waiting, 'a'), (queued, 'a'), (other_commit, 'b'), (deleting, 'a'), (elsewhere, 'a'), (settled, 'a')]
    {
        let mut t = previewd_store::Timeline::new(sha(commit), Some(now_ms()));
        t.waiting_for = (id != settled).then(|| "the image".to_owned());
        store.record_timeline(Fence::unleased(id), &t).await.expect("timeline");
    }
    let repo = RepoName::new("Acme/Shop").expect("repo");
    assert_eq!(store.wake_commit(&repo, &sha('a')).await.expect("wake"), 2);
    let webhook = Lane::Webhook as i64;
    assert_eq!(store.due_state(waiting).await.expect("due"), Some((webhook, 1)));
    assert_eq!(store.due_state(queued).await.expect("due"), Some((webhook, 2)), "brought into the webhook lane");
    assert!(store.next_due().await.expect("next").is_some_and(|at| at <= now_ms()), "due now, not in ten minutes");
    for id in [other_commit, gone, deleting, elsewhere, settled] {
        assert_eq!(store.due_state(id).await.expect("due"), None, "environment {id} was woken");
    }
    // Through a delivery: once per delivery id, in the delivery's transaction.
    let woken = store.record_commit_checked("d-1", "check_run", &repo, &sha('a')).await.expect("record");
    assert_eq!(woken, Some(2));
    let again = store.record_commit_checked("d-1", "check_run", &repo, &sha('a')).await.expect("again");
    assert_eq!(again, None);
    assert_eq!(store.due_state(waiting).await.expect("due"), Some((webhook, 2)), "the duplicate asked nothing");
    let nobody = store.record_commit_checked("d-2", "status", &repo, &sha('f')).await.expect("record");
    assert_eq!(nobody, Some(0));
    assert_eq!(store.delivery_count().await.expect("count"), 2);
}

/// [`Store::record_webhooks`] folds a batch into a few statements; the same deliveries recorded one at a
/// time into a second repository must leave the same environments, events, outcomes and due work.
/// Seeded (`PREVIEWD_BATCH_SEED` replays one), over branches that exist, are new, failed or deleted, with
/// pushes, `create`s without a commit, deletions, pings, and ids repeated inside and across batches.
async fn a_batch_records_what_one_delivery_at_a_time_would(store: Store) {
    let seed =
        std::env::var("PREVIEWD_BATCH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("PREVIEWD_BATCH_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let repos = ["acme/one", "acme/batch"];
    // The repository's spelling, as a delivery may carry it: none, upper case or title case.
    let spell = |repo: &str, how: u8| match how {
        0 => None,
        1 => Some(repo.to_uppercase()),
        _ => Some(repo[..1].to_uppercase() + &repo[1..]),
    };
    let change_in = |repo: &str, branch: &str, desired: Desired, how: u8, reason: String| {
        let (repo_name, branch) = (RepoName::new(repo).expect("repo"), BranchName::new(branch).expect("branch"));
        let zone = DnsZone::new("p.example.com").expect("zone");
        let names = EnvNames::new(&OwnerId::new("t").expect("owner"), &repo_name, &branch, &zone);
        DesiredChange {
            repo: repo_name,
            repo_display: spell(repo, how),
            branch,
            names,
            fallback: None,
            desired,
            reason,
        }
    };
    // Branches that exist before, in both repositories alike: one failed, one deleted and missing.
    for repo in repos {
        for (branch, status) in [("b0", Status::Ready), ("b1", Status::Failed), ("b2", Status::Deleted)] {
            let id =
                store.record_desired(&change_in(repo, branch, present('a'), 1, "before".into())).await.expect("record");
            let env = store.get(id).await.expect("get").expect("env");
            store
                .update_observed(Fence::unleased(id), &Observed { status, ..env.observed() }, None)
                .await
                .expect("status");
            if status == Status::Deleted {
                assert!(store.mark_missing(id, 1_000).await.expect("missing"));
            }
        }
    }
    let branches = ["b0", "b1", "b2", "b3", "b4"];
    let mut sequence = Vec::new();
    for n in 0..120 {
        // About one in six repeats an earlier id (GitHub redelivers), whatever it carried; none in the last
        // third, whose batches PostgreSQL then records in one statement (every branch exists by then).
        let id = if n > 0 && n < 80 && rng.u8(..6) == 0 { rng.usize(..n) } else { n };
        let branch = branches[rng.usize(..branches.len())];
        let (event, desired) = match rng.u8(..10) {
            0 => ("ping", None),
            1 => ("create", Some(Desired::Present { sha: None })),
            2 | 3 => ("delete", Some(Desired::Absent)),
            _ => ("push", Some(present(['a', 'b', 'c', 'd'][rng.usize(..4)]))),
        };
        sequence.push((id, event, branch, desired, rng.u8(..3)));
    }
    let deliveries = |repo: &str| -> Vec<previewd_store::Delivery> {
        sequence
            .iter()
            .map(|(id, event, branch, desired, how)| previewd_store::Delivery {
                id: format!("{repo}-{id}"),
                event: (*event).into(),
                change: desired.clone().map(|d| change_in(repo, branch, d, *how, format!("{event} {id}"))),
            })
            .collect()
    };

    // Each batch recorded one delivery at a time into the first repository and as one batch into the
    // second, then both compared; between batches, the same branch of each is failed or found missing.
    let (mut one, mut batched) = (deliveries(repos[0]), deliveries(repos[1]));
    let mut rounds = 0;
    while !one.is_empty() {
        let n = rng.usize(1..=one.len().min(40));
        let mut outcomes = [Vec::new(), Vec::new()];
        for d in one.drain(..n) {
            outcomes[0].push(store.record_webhook(&d.id, &d.event, d.change.as_ref()).await.expect("one"));
        }
        outcomes[1] = store.record_webhooks(&batched.drain(..n).collect::<Vec<_>>()).await.expect("batch");
        let outcome = |r: &Recorded| match r {
            Recorded::Duplicate => "duplicate",
            Recorded::New { env_id: None } => "new, no change",
            Recorded::New { env_id: Some(_) } => "new",
        };
        let [a, b] = outcomes.map(|o| o.iter().map(outcome).collect::<Vec<_>>());
        assert_eq!(a, b, "PREVIEWD_BATCH_SEED={seed}");
        let [a, b] = [batch_snapshot(&store, repos[0], spell).await, batch_snapshot(&store, repos[1], spell).await];
        assert_eq!(a, b, "after batch {rounds}, PREVIEWD_BATCH_SEED={seed}");
        rounds += 1;

        let branch = BranchName::new(branches[rng.usize(..branches.len())]).expect("branch");
        let failed = rng.bool();
        for repo in repos {
            let Some(env) = store.find(&RepoName::new(repo).expect("repo"), &branch).await.expect("find") else {
                continue;
            };
            if failed {
                let o = Observed { status: Status::Failed, ..env.observed() };
                store.update_observed(Fence::unleased(env.id), &o, None).await.expect("failed");
            } else {
                store.mark_missing(env.id, 1_000).await.expect("missing");
            }
        }
    }
    assert!(rounds > 2);
}

/// What recording deliveries leaves of a repository's environments, comparable across repositories.
async fn batch_snapshot(
    store: &Store,
    name: &str,
    spell: impl Fn(&str, u8) -> Option<String>,
) -> Vec<impl PartialEq + std::fmt::Debug> {
    let repo = RepoName::new(name).expect("repo");
    let mut envs = Vec::new();
    for env in store.list().await.expect("list").into_iter().filter(|e| e.repo == repo) {
        let events: Vec<_> =
            store.events(env.id, 1_000).await.expect("events").into_iter().map(|e| (e.kind, e.message)).collect();
        envs.push((
            env.branch.to_string(),
            env.desired.clone(),
            env.desired_seq,
            env.status,
            (0..3).find(|&how| spell(name, how) == env.repo_display),
            (env.missing_since.is_some(), env.expired_at.is_some(), env.pushed_at.is_some()),
            (env.attempts, env.retries, env.observed_rev, env.feedback_due.is_some()),
            store.due_state(env.id).await.expect("due"),
            events,
        ));
    }
    envs.sort_by(|a, b| a.0.cmp(&b.0));
    envs
}
