//! Seeding and GitHub feedback, end to end: moto behind the fault proxy, the local PostgreSQL, a hook
//! server of the test's own, and the stateful fake GitHub, which records every deployment, status and
//! comment in the order they arrived.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use previewd_domain::{EventKind, Status};
use previewd_testkit::{Fault, Options, REPO, Target, TestEnv, eventually};
use sha2::Sha256;

/// GitHub feedback on, with a token the fake accepts.
const FEEDBACK: &str = r#"token = "test-token""#;
const HOOK_SECRET: &str = "test-hook-secret";
const TOKEN: &str = "test-dashboard-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(60);
/// The `n`th commit, its short form (the first 7 characters) unlike every other's.
fn sha(n: u32) -> String {
    format!("{n:07x}{}", "a".repeat(33))
}

async fn bucket_keys(t: &TestEnv, bucket: &str) -> Vec<String> {
    let out = t.s3().await.list_objects_v2().bucket(bucket).send().await.expect("list objects");
    out.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_once_deployments_in_order_and_one_comment_edited_in_place() {
    let mut t = TestEnv::with(&Options {
        github: FEEDBACK,
        top: r#"public_url = "https://previewd.test.example""#,
        ..Options::default()
    })
    .await;
    t.github.open_pull(REPO, 7, "feature/login");
    assert_eq!(t.push("feature/login", &sha(1)).await, 202);
    let env = t.ready("feature/login", &sha(1)).await;

    // Seeding: the fixtures in the bucket, the SQL step skipped (no database), both recorded.
    assert!(env.seeded_at.is_some(), "{env:#?}");
    let steps: Vec<_> = env.seed_log.iter().map(|s| (s.name.as_str(), s.outcome.as_str())).collect();
    assert_eq!(steps, [("fixtures", "ok"), ("sample rows", "skipped")]);
    let stack = t.stack(&env.stack_name).await.expect("stack");
    let bucket = stack.outputs["BucketName"].clone();
    let keys = bucket_keys(&t, &bucket).await;
    assert_eq!(keys, ["fixtures/README.txt", "fixtures/products/catalog.json"]);
    let puts = t.proxy.calls().iter().filter(|c| c.action == "PutObject").count();

    // The API and the environment's page show each step.
    let api: serde_json::Value =
        reqwest::get(t.url(&format!("/api/environments/{}", env.id))).await.expect("api").json().await.expect("json");
    assert_eq!(api["seed"][0]["outcome"], "ok");
    assert_eq!(api["seeding"], false);
    assert!(api["seeded_at"].is_string());
    let page =
        reqwest::get(t.url(&format!("/environments/{}", env.id))).await.expect("page").text().await.expect("html");
    assert!(page.contains("Seed steps") && page.contains("objects into bucket"), "{page}");

    // GitHub: a deployment of the commit, in_progress then success, and one comment.
    // The comment may be made while provisioning and edited once ready: wait for what it says at the end.
    let log = eventually("success and a comment saying ready", || {
        let log = t.github.feedback_log(REPO);
        let ready = t.github.comments(REPO, 7).first().is_some_and(|c| c.1.contains("ready"));
        (log.iter().any(|l| l.ends_with(" success")) && ready).then_some(log)
    })
    .await;
    let deployments = t.github.deployments(REPO);
    assert_eq!(deployments.len(), 1, "{deployments:#?}");
    let d = &deployments[0];
    let id = d["id"].as_u64().expect("id");
    assert_eq!(d["ref"], sha(1));
    assert_eq!(d["environment"], "preview/feature/login");
    assert_eq!(d["transient_environment"], true);
    assert_eq!(d["production_environment"], false);
    assert_eq!(d["auto_merge"], false);
    assert_eq!(d["required_contexts"], serde_json::json!([]));
    let statuses = t.github.deployment_statuses(REPO, id);
    let states: Vec<_> = statuses.iter().map(|s| s["state"].as_str().unwrap_or_default()).collect();
    assert_eq!(states, ["in_progress", "success"]);
    let env = t.env("feature/login").await.expect("env");
    assert_eq!(statuses[1]["environment_url"].as_str(), env.url.as_deref());
    assert_eq!(statuses[1]["log_url"], format!("https://previewd.test.example/environments/{}", env.id));
    let deploy_log: Vec<_> = log.iter().filter(|l| !l.starts_with("comment")).cloned().collect();
    let expected = [
        format!("deployment {id} {} preview/feature/login", sha(1)),
        format!("status {id} in_progress"),
        format!("status {id} success"),
    ];
    assert_eq!(deploy_log, expected);
    let comments = t.github.comments(REPO, 7);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert!(comments[0].1.contains(&sha(1)[..7]) && comments[0].1.contains("ready"), "{}", comments[0].1);

    // A second push: the stack is updated, the fixtures are not put again, the comment is edited.
    assert_eq!(t.push("feature/login", &sha(2)).await, 202);
    t.ready("feature/login", &sha(2)).await;
    let comment = eventually("the comment shows the new commit", || {
        let c = t.github.comments(REPO, 7);
        c.first()
            .filter(|c| c.1.contains(&sha(2)[..7]) && c.1.contains("ready"))
            .cloned()
            .map(|c| (c, t.github.comments(REPO, 7).len()))
    })
    .await;
    assert_eq!(comment.1, 1, "one comment, edited in place");
    assert!(t.github.feedback_log(REPO).iter().any(|l| l == &format!("comment edit {}", comment.0.0)));
    assert_eq!(t.proxy.calls().iter().filter(|c| c.action == "PutObject").count(), puts, "no fixture put again");
    assert_eq!(bucket_keys(&t, &bucket).await.len(), 2);
    assert_eq!(t.github.deployments(REPO).len(), 2, "one deployment per commit");
    let first = t.github.deployment_statuses(REPO, id);
    assert_eq!(first.last().map(|s| s["state"].clone()), Some(serde_json::json!("inactive")), "superseded: {first:#?}");

    // previewd restarted, its record of the comment lost: the comment is found again by its hidden
    // marker and edited, not duplicated.
    let github = t.github.clone();
    let edits = move || github.feedback_log(REPO).iter().filter(|l| l.starts_with("comment edit")).count();
    let edits_before = edits();
    t.stop_app().await;
    t.store.forget_pr_comment(env.id, 7).await.expect("forget");
    t.start_app().await;
    t.store.touch_feedback(env.id).await.expect("touch");
    eventually("the comment edited again", || (edits() == edits_before + 1).then_some(())).await;
    assert_eq!(t.github.comments(REPO, 7).len(), 1);

    // A person deletes the comment; the next change makes it again.
    t.github.delete_comment(comment.0.0);
    // Teardown: the last deployment goes inactive.
    assert_eq!(t.delete("feature/login").await, 202);
    t.deleted("feature/login").await;
    let second = t.github.deployments(REPO)[1]["id"].as_u64().expect("id");
    eventually("inactive", || {
        let s = t.github.deployment_statuses(REPO, second);
        (s.last().map(|s| s["state"].clone()) == Some(serde_json::json!("inactive"))).then_some(())
    })
    .await;
    let comments = eventually("a new comment after the deleted one", || {
        let c = t.github.comments(REPO, 7);
        (c.len() == 1 && c[0].1.contains("deleted")).then_some(c)
    })
    .await;
    assert_ne!(comments[0].0, comment.0.0);

    // The dashboard shows the pull request with who opened it, until it is closed.
    let pulls = |t: &TestEnv| {
        let t = t.store.clone();
        async move {
            let found = t.pull_requests(&[env.id]).await.expect("pull requests");
            found.into_iter().map(|p| (p.number, p.author)).collect::<Vec<_>>()
        }
    };
    assert_eq!(pulls(&t).await, [(7, Some("acme".to_owned()))]);
    t.github.close_pull(REPO, 7);
    t.store.touch_feedback(env.id).await.expect("touch");
    for _ in 0..200 {
        if pulls(&t).await.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("a closed pull request is still the branch's: {:?}", pulls(&t).await);
}

/// A request the hook received: its body and its signature header.
type HookCall = (Vec<u8>, Option<String>);

/// A hook server: records each request's body and signature, answers with the next status given.
#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<HookCall>>>,
    status: Arc<Mutex<u16>>,
}

impl Hook {
    async fn start(status: u16) -> (Self, String) {
        let hook = Hook { status: Arc::new(Mutex::new(status)), ..Hook::default() };
        let h = hook.clone();
        let app = axum::Router::new().route(
            "/seed",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let h = h.clone();
                async move {
                    let sig = headers.get("x-previewd-signature-256").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    h.seen.lock().expect("lock").push((body.to_vec(), sig));
                    axum::http::StatusCode::from_u16(*h.status.lock().expect("lock")).expect("status")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/seed?token=do-not-log-me", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hook, url)
    }

    fn seen(&self) -> Vec<HookCall> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A blueprint of the test's own: an ECS cluster and task definition and a bucket, with SQL, hook and
/// ECS seed steps. SQL goes to the local PostgreSQL, into a table of this test's own.
fn seeded_blueprint(dir: &std::path::Path, table: &str, hook_url: &str, secret_arn: &str, source: &str) {
    let bp = dir.join("seeded");
    std::fs::create_dir_all(bp.join("seed")).expect("mkdir");
    std::fs::write(
        bp.join("blueprint.toml"),
        r#"description = "Seeding under test."
overridable = []

[[seed]]
name = "data set"
kind = "s3_copy"
from = "s3://SOURCE/sets/small/"
bucket = { output = "BucketName" }
prefix = "data/"

[[seed]]
name = "rows"
kind = "sql"
files = ["seed/rows.sql"]
host = { output = "DatabaseHost" }
port = { setting = "db.port" }
database = { setting = "db.name" }
secret = { output = "DatabaseSecretArn" }

[[seed]]
name = "tell the app"
kind = "http"
url = { setting = "hook.url" }

[[seed]]
name = "migrations"
kind = "ecs_task"
cluster = { output = "ClusterName" }
task_definition = { output = "SeedTaskDefinition" }
container = "seed"
command = ["bin/seed", "--sample", "it's; rm -rf /"]
subnets = { output = "Subnets" }
"#
        .replace("SOURCE", source),
    )
    .expect("blueprint");
    std::fs::write(
        bp.join("defaults.toml"),
        format!(
            r#"[db]
host = "127.0.0.1"
port = "5432"
name = "test"
secret = "{secret_arn}"
[hook]
url = "{hook_url}"
"#
        ),
    )
    .expect("defaults");
    std::fs::write(
        bp.join("seed/rows.sql"),
        format!("CREATE TABLE {table} (n INTEGER);\nINSERT INTO {table} VALUES (1), (2), (3);\n"),
    )
    .expect("sql");
    std::fs::write(
        bp.join("application.json"),
        r#"{"AWSTemplateFormatVersion": "2010-09-09", "Resources": {"Logs": {"Type": "AWS::Logs::LogGroup", "Properties": {"RetentionInDays": 1}}}}"#,
    )
    .expect("application");
    std::fs::write(
        bp.join("environment.json"),
        r#"{
  "AWSTemplateFormatVersion": "2010-09-09",
  "Resources": {
    "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {"CidrBlock": "10.9.0.0/16"}},
    "Subnet": {"Type": "AWS::EC2::Subnet", "Properties": {"VpcId": {"Ref": "Vpc"}, "CidrBlock": "10.9.1.0/24"}},
    "Cluster": {"Type": "AWS::ECS::Cluster"},
    "SeedTask": {"Type": "AWS::ECS::TaskDefinition", "Properties": {
      "Family": {"Previewd::Join": [{"Previewd::Context": "bucket_prefix"}, "-seed"]},
      "RequiresCompatibilities": ["FARGATE"], "NetworkMode": "awsvpc", "Cpu": "256", "Memory": "512",
      "ContainerDefinitions": [{"Name": "seed", "Image": "busybox", "Essential": true, "Memory": 512}]}},
    "Bucket": {"Type": "AWS::S3::Bucket"}
  },
  "Outputs": {
    "Endpoint": {"Value": "lb.seeded.test"},
    "BucketName": {"Value": {"Ref": "Bucket"}},
    "DatabaseHost": {"Value": {"Previewd::Setting": "db.host"}},
    "DatabaseSecretArn": {"Value": {"Previewd::Setting": "db.secret"}},
    "ClusterName": {"Value": {"Ref": "Cluster"}},
    "Subnets": {"Value": {"Ref": "Subnet"}},
    "SeedTaskDefinition": {"Value": {"Ref": "SeedTask"}}
  }
}"#,
    )
    .expect("environment");
}

async fn postgres() -> sqlx::PgPool {
    sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await.expect("the local PostgreSQL")
}

const SEEDED: &str = "acme/seeded";
const SEEDED_ZONE: &str = "seeded.test.example";

/// previewd with the `seeded` blueprint for repository `acme/seeded` (beside the workspace's `webapp`),
/// the database secret in moto, and a hook answering `hook_status`.
async fn start_seeded(hook_status: u16) -> Seeded {
    start_seeded_with(hook_status, "").await
}

/// As [`start_seeded`], with more `[reconciler]` keys.
async fn start_seeded_with(hook_status: u16, reconciler: &str) -> Seeded {
    let (hook, hook_url) = Hook::start(hook_status).await;
    let table = format!("seed_rows_{:08x}", fastrand::u32(..));
    let secret = format!("previewd-test/db-{:08x}", fastrand::u32(..));
    let stacks = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(previewd_testkit::workspace_root().join("stacks/webapp"), stacks.path().join("webapp"))
        .expect("symlink");
    let source = format!("seed-source-{:08x}", fastrand::u32(..));
    seeded_blueprint(stacks.path(), &table, &hook_url, &secret, &source);
    let t = TestEnv::with(&Options {
        github: FEEDBACK,
        top: &format!("dashboard_token = \"{TOKEN}\"\n[seed]\nhook_secret = \"{HOOK_SECRET}\""),
        extra: &format!("[repos.\"{SEEDED}\"]\nblueprint = \"seeded\"\ndns_zone = \"{SEEDED_ZONE}\""),
        zones: &[SEEDED_ZONE],
        stacks_dir: Some(stacks.path().to_str().expect("utf-8")),
        reconciler,
        ..Options::default()
    })
    .await;
    let sm = aws_sdk_secretsmanager::Client::new(&t.sdk_config().await);
    sm.create_secret()
        .name(&secret)
        .secret_string(r#"{"username": "postgres", "password": "hunter2-never-shown"}"#)
        .send()
        .await
        .expect("secret");
    // A data set kept in S3, two objects under the prefix and one beside it.
    let s3 = t.s3().await;
    s3.create_bucket().bucket(&source).send().await.expect("bucket");
    for key in ["sets/small/a.json", "sets/small/nested/b.json", "sets/large/c.json"] {
        s3.put_object().bucket(&source).key(key).body(b"{}".to_vec().into()).send().await.expect("object");
    }
    t.github.set_branch(SEEDED, "main", &"f".repeat(40));
    Seeded { t, hook, table, stacks }
}

struct Seeded {
    t: TestEnv,
    hook: Hook,
    table: String,
    stacks: tempfile::TempDir,
}

impl Seeded {
    async fn push(&mut self, branch: &str, sha: &str) {
        self.t.github.set_branch(SEEDED, branch, sha);
        let body =
            serde_json::to_vec(&previewd_testkit::webhook::push(SEEDED, branch, &"0".repeat(40), sha)).expect("json");
        assert_eq!(self.t.deliver("push", &body, None, None).await, 202);
    }

    async fn wait(
        &self,
        branch: &str,
        what: &str,
        done: impl Fn(&previewd_store::EnvRecord) -> bool,
    ) -> previewd_store::EnvRecord {
        let repo = previewd_domain::RepoName::new(SEEDED).expect("repo");
        let b = previewd_domain::BranchName::new(branch).expect("branch");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let env = self.t.store.find(&repo, &b).await.expect("store");
            if let Some(e) = env.as_ref().filter(|e| done(e)) {
                return e.clone();
            }
            if tokio::time::Instant::now() > deadline {
                let events = match &env {
                    Some(e) => self.t.store.events(e.id, 50).await.unwrap_or_default(),
                    None => vec![],
                };
                panic!("{branch}: not {what}: {env:#?}\n{events:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sql_hook_and_ecs_steps_run_once_in_order() {
    let mut s = start_seeded(200).await;
    s.push("feat/seed", &sha(1)).await;
    let env = s.wait("feat/seed", "ready", |e| e.status == Status::Ready).await;
    let outcomes: Vec<_> = env.seed_log.iter().map(|o| (o.kind.as_str(), o.outcome.as_str())).collect();
    assert_eq!(outcomes, [("s3_copy", "ok"), ("sql", "ok"), ("http", "ok"), ("ecs_task", "ok")], "{:#?}", env.seed_log);

    // The data set, copied from its S3 prefix.
    let stack = s.t.stack(&env.stack_name).await.expect("stack");
    let keys = bucket_keys(&s.t, &stack.outputs["BucketName"]).await;
    assert_eq!(keys, ["data/a.json", "data/nested/b.json"]);

    // The SQL rows, in the local PostgreSQL.
    let pg = postgres().await;
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", s.table)).fetch_one(&pg).await.expect("rows");
    assert_eq!(n, 3);

    // The hook: called once, with a valid signature over a body naming the environment.
    let seen = s.hook.seen();
    assert_eq!(seen.len(), 1);
    let (body, sig) = &seen[0];
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
    mac.update(body);
    assert_eq!(sig.as_deref(), Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes()))).as_deref());
    let body: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(body["repository"], SEEDED);
    assert_eq!(body["branch"], "feat/seed");
    assert_eq!(body["commit"], sha(1));
    assert_eq!(body["url"].as_str(), env.url.as_deref());

    // The ECS task: one RunTask with the command.
    let runs: Vec<_> = s.t.proxy.calls().into_iter().filter(|c| c.action == "RunTask").collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let ecs = aws_sdk_ecs::Client::new(&s.t.sdk_config().await);
    let cluster = &stack.outputs["ClusterName"];
    let tasks = ecs.list_tasks().cluster(cluster).send().await.expect("tasks");
    let arns = tasks.task_arns().to_vec();
    let described = ecs.describe_tasks().cluster(cluster).set_tasks(Some(arns)).send().await.expect("describe");
    let overrides = described.tasks()[0].overrides().expect("overrides");
    assert_eq!(overrides.container_overrides()[0].command(), ["bin/seed", "--sample", "it's; rm -rf /"]);

    // An update runs nothing again; a reseed runs every step again (the SQL step fails: its table exists,
    // which shows it ran; the rows are untouched).
    s.push("feat/seed", &sha(2)).await;
    s.wait("feat/seed", "ready at the new commit", |e| {
        e.status == Status::Ready && e.deployed_sha.as_ref().is_some_and(|x| x.as_str() == sha(2))
    })
    .await;
    assert_eq!(s.hook.seen().len(), 1, "an update does not seed");
    let r = reqwest::Client::new()
        .post(s.t.url(&format!("/api/environments/{}/reseed", env.id)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("reseed");
    assert_eq!(r.status(), 202);
    let failed = s.wait("feat/seed", "failed at the SQL step", |e| e.status == Status::Failed).await;
    let error = failed.last_error.expect("an error");
    assert!(
        error.contains("seed step 2 of 4") && error.contains("already exists") && error.contains("reseed"),
        "{error}"
    );
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", s.table)).fetch_one(&pg).await.expect("rows");
    assert_eq!(n, 3, "the failed step left nothing behind");
    sqlx::query(&format!("DROP TABLE {}", s.table)).execute(&pg).await.expect("drop");
}

/// A step that does not finish (here the SQL seed step, waiting on a lock in its database) is cut off
/// after `step_limit`, reported, and tried again: it holds neither its environment nor a worker for ever.
/// Once the lock goes, the environment is seeded and ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_hangs_is_cut_off_reported_and_tried_again() {
    let mut s = start_seeded_with(200, r#"step_limit = "2s""#).await;
    // The script waits for the test's lock. It may run whole and be cut off before its success is
    // recorded (seeding is at least once), so it is written to run again harmlessly.
    let key = fastrand::i64(..);
    let table = &s.table;
    std::fs::write(
        s.stacks.path().join("seeded/seed/rows.sql"),
        format!(
            "SELECT pg_advisory_xact_lock({key});\nCREATE TABLE IF NOT EXISTS {table} (n INTEGER);\n\
             INSERT INTO {table} SELECT n FROM (VALUES (1), (2), (3)) v (n) WHERE NOT EXISTS (SELECT 1 FROM {table});\n"
        ),
    )
    .expect("rows.sql");
    let pg = postgres().await;
    let mut lock = pg.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut *lock).await.expect("lock");

    s.push("feat/hang", &sha(1)).await;
    // Cut off at the SQL step: the S3 copy before it done (a slow step before it may be cut off too).
    let cut = s
        .wait("feat/hang", "cut off", |e| {
            e.seed_log.len() == 1 && e.last_error.as_deref().is_some_and(|m| m.contains("step_limit (2s)"))
        })
        .await;
    assert_eq!(cut.status, Status::Provisioning, "{cut:#?}");
    let steps: Vec<_> = cut.seed_log.iter().map(|o| (o.kind.as_str(), o.outcome.as_str())).collect();
    assert_eq!(steps, [("s3_copy", "ok")], "the SQL step has not run: {:#?}", cut.seed_log);
    // Tried again, and cut off again, while the lock is held. A cut-off attempt's session does not wait on
    // in the database (PostgreSQL does not see a client gone while it waits on a lock): its statements
    // are limited to step_limit too, so only the attempt under way waits, and at most the one before it.
    s.wait("feat/hang", "tried again", |e| e.retries >= 4).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1 AND pid <> pg_backend_pid()",
    )
    .bind(format!("%pg_advisory_xact_lock({key})%"))
    .fetch_one(&pg)
    .await
    .expect("sessions");
    assert!(waiting <= 2, "{waiting} sessions wait on the lock");

    lock.rollback().await.expect("unlock");
    let env = s.wait("feat/hang", "ready", |e| e.status == Status::Ready).await;
    let outcomes: Vec<_> = env.seed_log.iter().map(|o| (o.kind.as_str(), o.outcome.as_str())).collect();
    assert_eq!(outcomes, [("s3_copy", "ok"), ("sql", "ok"), ("http", "ok"), ("ecs_task", "ok")], "{:#?}", env.seed_log);
    assert_eq!(env.last_error, None);
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", s.table)).fetch_one(&pg).await.expect("rows");
    assert_eq!(n, 3);
    sqlx::query(&format!("DROP TABLE {}", s.table)).execute(&pg).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_fails_the_environment_and_its_deployment() {
    let mut s = start_seeded(500).await;
    s.push("feat/hook", &sha(1)).await;
    let env = s.wait("feat/hook", "failed", |e| e.status == Status::Failed).await;
    let error = env.last_error.clone().expect("an error");
    assert!(
        error.contains("seed step 3 of 4") && error.contains("HTTP 500") && error.contains("3 attempts"),
        "{error}"
    );
    assert!(!error.contains("do-not-log-me"), "the hook's query stays out of errors: {error}");
    assert_eq!(s.hook.seen().len(), 3, "bounded retries");
    let stack = s.t.stack(&env.stack_name).await;
    assert!(stack.is_some(), "the environment is not torn down");
    let statuses = eventually("a failure status", || {
        let d = s.t.github.deployments(SEEDED);
        let id = d.first()?["id"].as_u64()?;
        let st = s.t.github.deployment_statuses(SEEDED, id);
        (st.last()?["state"] == "failure").then_some(st)
    })
    .await;
    let description = statuses.last().expect("status")["description"].as_str().expect("text").to_owned();
    assert!(description.chars().count() <= 140 && description.contains("seed step 3"), "{description}");
    assert!(statuses.last().expect("status")["log_url"].is_null(), "no public_url configured");
    let pg = postgres().await;
    sqlx::query(&format!("DROP TABLE {}", s.table)).execute(&pg).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_limits_and_outages_delay_feedback_never_provisioning() {
    let mut t = TestEnv::with(&Options { github: FEEDBACK, ..Options::default() }).await;
    t.github.open_pull(REPO, 3, "feature/slow");
    t.github.inject(Target::Writes, Fault::RetryAfter { status: 403, seconds: 1 }, 1);
    t.github.inject(Target::Deployments, Fault::Status(500), 2);
    t.github.inject(Target::Pulls, Fault::RateLimited { status: 429 }, 1);
    assert_eq!(t.push("feature/slow", &sha(1)).await, 202);
    t.ready("feature/slow", &sha(1)).await;
    // Everything arrives in the end, once each, in order.
    eventually("feedback complete", || {
        let log = t.github.feedback_log(REPO);
        (log.iter().any(|l| l.ends_with(" success")) && log.iter().any(|l| l.starts_with("comment"))).then_some(())
    })
    .await;
    let env = t.wait_for("feature/slow", "told GitHub everything", |e| e.feedback_due.is_none()).await;
    assert_eq!(t.github.deployments(REPO).len(), 1, "{:#?}", t.github.deployments(REPO));
    let log = t.github.feedback_log(REPO);
    let deploy_log: Vec<_> = log.iter().filter(|l| !l.starts_with("comment")).collect();
    assert!(deploy_log[0].starts_with("deployment ") && deploy_log[1].ends_with(" in_progress"), "{log:?}");
    assert!(deploy_log[2].ends_with(" success"), "{log:?}");
    assert_eq!(log.iter().filter(|l| l.starts_with("comment create 3 ")).count(), 1, "{log:?}");
    assert_eq!(env.feedback_error, None);
    let events = t.store.events(env.id, 100).await.expect("events");
    assert!(events.iter().any(|e| e.kind == EventKind::Github && e.message.contains("rate limited")), "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_gets_installation_tokens_and_renews_them() {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::{EncodePublicKey as _, LineEnding};

    let fake = previewd_testkit::FakeGitHub::start("/api/v3").await;
    fake.set_branch(REPO, "main", &sha(1));
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("an RSA key");
    let private_pem = key.to_pkcs1_pem(LineEnding::LF).expect("PEM").to_string();
    let public_pem = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("PEM");
    fake.enable_app(4242, &public_pem, Duration::from_secs(3));

    // The key as a file, as PREVIEWD_GITHUB_APP_KEY names it.
    let dir = tempfile::tempdir().expect("tempdir");
    let pem_path = dir.path().join("app.pem");
    std::fs::write(&pem_path, &private_pem).expect("key file");
    let config = previewd::Config::load(None, |name| match name {
        "PREVIEWD_GITHUB_APP_ID" => Some("4242".to_owned()),
        "PREVIEWD_GITHUB_APP_KEY" => Some(pem_path.display().to_string()),
        _ => None,
    })
    .expect("configuration");
    let credentials = config.github_credentials().expect("credentials");
    assert!(!format!("{credentials:?}").contains("PRIVATE KEY"), "the key never shows in Debug");

    let github = previewd_github::GitHub::new(&fake.api_url(), &credentials, Duration::from_secs(2))
        .expect("client")
        .with_refresh_margin(Duration::from_secs(1));
    let repo = previewd_domain::RepoName::new(REPO).expect("repo");
    let main = previewd_domain::BranchName::new("main").expect("branch");
    let head = github.branch_head(&repo, &main).await.expect("an answer");
    assert_eq!(head.at().map(|h| h.to_string()), Some(sha(1)));
    assert!(github.repo_visible(&repo).await.expect("an answer"));
    assert_eq!(fake.tokens_issued(), 1, "one token for both calls");
    // Within a second of its expiry (3 s), the token is renewed before the next call.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert!(github.branch_head(&repo, &main).await.expect("an answer").at().is_some());
    assert_eq!(fake.tokens_issued(), 2, "renewed");
    assert_eq!(fake.unauthenticated_count(), 0);

    // What the App wrote is found again by its marker; a person's comment carrying the marker is not.
    fake.open_pull(REPO, 5, "main");
    let marker = "<!-- previewd:test-owner:main -->";
    fake.add_comment(REPO, 5, marker);
    assert_eq!(github.find_comment(&repo, 5, marker).await.expect("an answer"), None);
    let own = github.create_comment(&repo, 5, &format!("{marker}\nmine")).await.expect("comment");
    assert_eq!(github.find_comment(&repo, 5, marker).await.expect("an answer"), Some(own));

    // Without credentials the App-only fake refuses, and the refusal is an error, not "no branch".
    let anonymous =
        previewd_github::GitHub::new(&fake.api_url(), &previewd_github::Credentials::None, Duration::from_secs(2))
            .expect("client");
    assert!(anonymous.branch_head(&repo, &main).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_opened_later_gets_the_comment_with_the_branch_escaped() {
    let mut t = TestEnv::with(&Options { github: FEEDBACK, ..Options::default() }).await;
    let branch = "feat/<img_src=x>@team|#1";
    assert_eq!(t.push(branch, &sha(1)).await, 202);
    let env = t.ready(branch, &sha(1)).await;
    t.wait_for(branch, "told GitHub", |e| e.feedback_due.is_none() && e.observed_rev == env.observed_rev).await;
    assert!(t.github.comments(REPO, 12).is_empty());

    t.github.open_pull(REPO, 12, branch);
    // Someone plants a comment carrying previewd's marker: it is not previewd's to edit.
    let marker = format!("<!-- previewd:test-owner:{} -->", env.env_key);
    let planted = t.github.add_comment(REPO, 12, &format!("{marker}\nplanted"));
    let body = serde_json::json!({
        "action": "opened",
        "number": 12,
        "pull_request": { "number": 12, "head": { "ref": branch, "repo": { "full_name": REPO } } },
        "repository": { "full_name": REPO },
    });
    let body = serde_json::to_vec(&body).expect("json");
    assert_eq!(t.deliver("pull_request", &body, None, Some("pr-12")).await, 202);
    assert_eq!(t.deliver("pull_request", &body, None, Some("pr-12")).await, 200, "a duplicate");
    let comments = eventually("previewd's own comment", || {
        let c = t.github.comments(REPO, 12);
        (c.len() == 2).then_some(c)
    })
    .await;
    assert_eq!(comments[0], (planted, format!("{marker}\nplanted")), "the planted comment is left as it was");
    let text = &comments[1].1;
    assert!(text.starts_with(&marker), "{text}");
    assert!(text.contains("&lt;img") && !text.contains("<img") && !text.contains("@team"), "{text}");
    assert!(text.contains("| Branch | feat\\/&lt;img\\_src\\=x&gt;@\u{200B}team\\|\\#1 |"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_answer_was_lost_is_found_not_made_twice() {
    let mut t = TestEnv::with(&Options { github: FEEDBACK, ..Options::default() }).await;
    // The first write (creating the deployment) is carried out, but its answer comes after previewd's
    // GitHub timeout (2 s in tests).
    t.github.inject(Target::Writes, Fault::Delay(Duration::from_secs(3)), 1);
    assert_eq!(t.push("feature/lost", &sha(1)).await, 202);
    t.ready("feature/lost", &sha(1)).await;
    let env = t.wait_for("feature/lost", "told GitHub everything", |e| e.feedback_due.is_none()).await;
    let deployments = t.github.deployments(REPO);
    assert_eq!(deployments.len(), 1, "{deployments:#?}");
    let id = deployments[0]["id"].as_u64().expect("id");
    let states: Vec<_> = t.github.deployment_statuses(REPO, id).iter().map(|s| s["state"].clone()).collect();
    assert_eq!(states, [serde_json::json!("in_progress"), serde_json::json!("success")]);
    let events = t.store.events(env.id, 100).await.expect("events");
    // The lost answer shows as a timeout or a broken connection, whichever the client saw first.
    assert!(
        events.iter().any(|e| e.kind == EventKind::Github && e.message.contains("create a deployment")),
        "{events:#?}"
    );
}

/// A `Link` header may name any host: previewd follows it only under the configured API, so the token
/// never reaches another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_on_another_host_is_not_followed_with_the_token() {
    let fake = previewd_testkit::FakeGitHub::start("/api/v3").await;
    let elsewhere = previewd_testkit::FakeGitHub::start("/api/v3").await;
    fake.set_branch(REPO, "main", &sha(1));
    let port: u16 =
        elsewhere.api_url().rsplit(':').next().and_then(|p| p.split('/').next()?.parse().ok()).expect("port");
    fake.inject(Target::BranchList, Fault::LinkElsewhere(port), 1);
    let token = previewd_github::Credentials::Token(previewd_domain::Secret::new("test-token"));
    let github = previewd_github::GitHub::new(&fake.api_url(), &token, Duration::from_secs(2)).expect("client");
    let repo = previewd_domain::RepoName::new(REPO).expect("repo");
    let e = github.list_branches(&repo).await.expect_err("an incomplete listing").to_string();
    assert!(e.contains("is outside the configured API") && e.contains("not followed"), "{e}");
    assert!(elsewhere.requests().is_empty(), "{:?}", elsewhere.requests());
    // The next listing, linked as GitHub links, is whole.
    assert_eq!(github.list_branches(&repo).await.expect("a listing").branches.len(), 1);
}

/// Every request previewd sends in a whole scenario (provisioning, a pull request's comment, an update,
/// the fleet observer, the reaper, a teardown) is one GitHub's published OpenAPI description accepts:
/// its operation, path and query parameters and body (tests/github-openapi, pinned `@octokit/openapi`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_previewd_sends_is_one_githubs_description_accepts() {
    let checker = previewd_testkit::workspace_root().join("tests/github-openapi");
    assert!(
        checker.join("node_modules/@octokit/openapi").is_dir(),
        "the checker is not installed: ./test.sh installs it (cd tests/github-openapi && npm ci)"
    );
    let mut t = TestEnv::with(&Options { github: FEEDBACK, grace: "0s", ..Options::default() }).await;
    let branch = "feat/spec#1";
    assert_eq!(t.push(branch, &sha(1)).await, 202);
    t.ready(branch, &sha(1)).await;
    t.github.open_pull(REPO, 21, branch);
    let body = serde_json::json!({
        "action": "opened",
        "number": 21,
        "pull_request": { "number": 21, "head": { "ref": branch, "repo": { "full_name": REPO } } },
        "repository": { "full_name": REPO },
    });
    assert_eq!(t.deliver("pull_request", &serde_json::to_vec(&body).expect("json"), None, None).await, 202);
    eventually("the comment", || (!t.github.comments(REPO, 21).is_empty()).then_some(())).await;
    assert_eq!(t.push(branch, &sha(2)).await, 202);
    t.ready(branch, &sha(2)).await;
    t.wait_for(branch, "told GitHub", |e| e.feedback_due.is_none()).await;
    t.app().reconciler().resync().await;
    t.app().reconciler().reap(false).await;
    assert_eq!(t.delete(branch).await, 202);
    t.deleted(branch).await;
    t.wait_for(branch, "told GitHub", |e| e.feedback_due.is_none()).await;

    let sent = t.github.sent();
    assert!(sent.len() >= 20, "a whole scenario: {} requests", sent.len());
    // Each names previewd and asks for GitHub's media type and API version, once, as GitHub asks.
    let agent = serde_json::json!([previewd_github::USER_AGENT]);
    for r in &sent {
        assert_eq!(r["user_agent"], agent, "{r}");
        assert_eq!(r["accept"], serde_json::json!(["application/vnd.github+json"]), "{r}");
        assert_eq!(r["api_version"], serde_json::json!(["2022-11-28"]), "{r}");
    }
    assert!(previewd_github::USER_AGENT.starts_with("previewd/0."), "{}", previewd_github::USER_AGENT);
    let file = t.dir.path().join("github-requests.jsonl");
    let lines: Vec<String> = sent.iter().map(|r| r.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let out = std::process::Command::new("node")
        .arg(checker.join("check.mjs"))
        .arg(&file)
        .output()
        .expect("node runs (./test.sh has it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "requests GitHub would refuse:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("github-openapi: {} passed, 0 failed", sent.len())), "{stdout}");
    eprintln!("{} requests held against GitHub's description", sent.len());
    // The checker is really consulted: a request GitHub would refuse is named.
    let bad = serde_json::json!({ "method": "GET", "path": "/repos/acme/shop/branches", "query": [["per_page", "500"]], "body": null });
    std::fs::write(&file, format!("{bad}\n")).expect("write");
    let out = std::process::Command::new("node").arg(checker.join("check.mjs")).arg(&file).output().expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stdout.contains("github-openapi: 0 passed, 1 failed"), "{stdout}");
}
