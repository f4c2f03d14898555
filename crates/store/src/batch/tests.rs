//! The one-statement batch path on PostgreSQL, called directly.

use std::time::Duration;

use previewd_domain::{BranchName, CommitSha, DnsZone, EnvNames, OwnerId, RepoName};
use sqlx::{AnyPool, Connection as _, Executor as _};

use super::*;
use crate::{Store, now_ms};

fn change(branch: &str, desired: Desired) -> DesiredChange {
    let repo = RepoName::new("acme/shop").expect("repo");
    let branch = BranchName::new(branch).expect("branch");
    let zone = DnsZone::new("p.example.com").expect("zone");
    let names = EnvNames::new(&OwnerId::new("t").expect("owner"), &repo, &branch, &zone);
    DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "test".into() }
}

pub(crate) fn push(id: &str, branch: &str, sha: Option<char>) -> Delivery {
    let sha = sha.map(|c| CommitSha::new(&c.to_string().repeat(40)).expect("sha"));
    Delivery { id: id.into(), event: "push".into(), change: Some(change(branch, Desired::Present { sha })) }
}

/// The one-statement path on PostgreSQL, called directly (the store suite cannot tell which path a
/// batch took): it records a batch of new deliveries for recorded branches, and leaves everything as
/// it was, answering `None`, when a delivery was seen before, a branch is new, or another replica
/// inserts one of the ids while it runs.
#[tokio::test]
async fn postgres_records_a_usual_batch_in_one_statement_and_nothing_else() {
    let admin = std::env::var("PREVIEWD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if admin == "skip" {
        eprintln!("PostgreSQL skipped: PREVIEWD_TEST_POSTGRES_URL=skip");
        return;
    }
    sqlx::any::install_default_drivers();
    let name = format!("previewd_unit_{}", std::process::id());
    let pool = AnyPool::connect(&admin).await.expect("PostgreSQL reachable (or PREVIEWD_TEST_POSTGRES_URL=skip)");
    pool.execute(format!("DROP DATABASE IF EXISTS {name}").as_str()).await.expect("drop");
    pool.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create");
    let (base, _) = admin.rsplit_once('/').expect("url with a database");
    let store = Store::connect(&format!("{base}/{name}")).await.expect("connect");
    let mut conn = store.open_writer().await.expect("writer");

    let a = store.record_webhook("a-0", "push", push("a-0", "a", Some('1')).change.as_ref()).await.expect("a");
    let b = store.record_webhook("b-0", "push", push("b-0", "b", Some('1')).change.as_ref()).await.expect("b");
    let (Recorded::New { env_id: Some(a) }, Recorded::New { env_id: Some(b) }) = (a.clone(), b.clone()) else {
        panic!("{a:?} {b:?}")
    };
    let state = async |store: &Store| {
        let env = |id| async move { store.get(id).await.expect("get").expect("env") };
        let (ea, eb) = (env(a).await, env(b).await);
        let events =
            store.events(a, 100).await.expect("events").len() + store.events(b, 100).await.expect("events").len();
        (store.delivery_count().await.expect("count"), ea.desired, ea.desired_seq, eb.desired, eb.desired_seq, events)
    };

    // A push then a `create` (no commit) on `a`, a ping, and a push on `b` twice by the same id.
    let ping = Delivery { id: "p-1".into(), event: "ping".into(), change: None };
    let batch = [
        push("a-1", "a", Some('2')),
        push("a-2", "a", None),
        ping,
        push("b-1", "b", Some('3')),
        push("b-1", "b", Some('4')),
    ];
    let plan = BatchPlan::new(&batch);
    let recorded =
        record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.expect("batch").expect("in one statement");
    let new = |env_id| Recorded::New { env_id };
    assert_eq!(recorded, [new(Some(a)), new(Some(a)), new(None), new(Some(b)), Recorded::Duplicate]);
    let sha = |c: char| Some(CommitSha::new(&c.to_string().repeat(40)).expect("sha"));
    let after = state(&store).await;
    assert_eq!(
        after,
        (6, Desired::Present { sha: sha('2') }, 3, Desired::Present { sha: sha('3') }, 2, 5),
        "deliveries, each branch's desired state and generation, and the events"
    );

    // A delivery seen before, or a branch not recorded yet: not in one statement, and nothing changed.
    for batch in [
        [push("a-3", "a", Some('5')), push("b-1", "b", Some('5'))],
        [push("a-4", "a", Some('5')), push("c-0", "c", Some('5'))],
    ] {
        let plan = BatchPlan::new(&batch);
        assert_eq!(record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.expect("batch"), None);
        assert_eq!(state(&store).await, after);
        assert!(
            store
                .find(&RepoName::new("acme/shop").expect("repo"), &BranchName::new("c").expect("branch"))
                .await
                .expect("find")
                .is_none()
        );
    }

    // Another replica inserting one of the ids while this statement runs: the statement waits for it,
    // then fails on the id, and that is not an error but a batch for the transaction to sort out.
    let mut other = store.open_writer().await.expect("other");
    let mut tx = other.begin().await.expect("begin");
    sqlx::query("INSERT INTO deliveries (id, event, received_at, outcome) VALUES ('a-5', 'push', 0, 'recorded')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    let racing = tokio::spawn(async move {
        let batch = [push("a-5", "a", Some('6'))];
        let plan = BatchPlan::new(&batch);
        record_batch_at_once(&mut conn, &batch, &plan, now_ms()).await.map(|r| (r, conn))
    });
    // Until the statement waits for the other transaction's id.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&store.pool)
    .await
    .expect("activity")
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the statement never waited for the other id");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.commit().await.expect("commit");
    let (answer, conn) = racing.await.expect("task").expect("a conflict is no error");
    assert_eq!(answer, None);
    let (_, desired, seq, ..) = state(&store).await;
    assert_eq!((desired, seq), (after.1.clone(), after.2), "the environment is as it was");

    conn.close().await.expect("close");
    other.close().await.expect("close");
    store.close().await;
    pool.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.expect("drop");
}
