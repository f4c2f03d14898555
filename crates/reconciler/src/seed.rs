//! Seeding: a blueprint's seed steps run once, in order, after an environment's first create (and again
//! on a reseed), one step per reconcile so a long step never holds a worker and a restart resumes where
//! it stopped. Each outcome is recorded; a step that fails marks the environment `failed`, says which
//! step and what to do, and leaves the environment standing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use hmac::{Hmac, Mac};
use previewd_cloud::TaskRequest;
use previewd_domain::{CommitSha, EventKind, StepOutcome};
use previewd_render::{Blueprint, Ref, SeedKind, SeedSource, SeedStep, Settings};
use previewd_store::{EnvRecord, SeedOutcome, SeedProgress, now_ms};
use sha2::Sha256;
use sqlx::Connection as _;

use crate::context::Inner;
use crate::error::{Action, ReconcileError};

/// The header carrying the HMAC-SHA256 of a seed hook's body, as GitHub signs its webhooks.
pub const HOOK_SIGNATURE_HEADER: &str = "x-previewd-signature-256";
/// A hook, or a database connection, that has not answered in this long has failed this attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at a hook that answers 5xx, 429 or not at all, before the step fails.
const HOOK_ATTEMPTS: usize = 3;
/// Connection attempts at a seed step's database (each after the reconciler's backoff) before the step
/// fails.
const SQL_CONNECT_ATTEMPTS: i64 = 10;
/// At most this many fixture files a step (a blueprint's folder, not a data set).
const MAX_FIXTURE_FILES: usize = 10_000;

/// How the step went.
enum StepResult {
    Done(String),
    /// Started something to wait for (an ECS task).
    Waiting,
}

/// A step's failure: a person must look (`Failed`), or it may pass next time (`Transient`).
enum StepError {
    Failed(String),
    Transient(ReconcileError),
}

impl<E: Into<ReconcileError>> From<E> for StepError {
    fn from(e: E) -> Self {
        let e = e.into();
        if e.needs_human() { StepError::Failed(e.to_string()) } else { StepError::Transient(e) }
    }
}

/// What a step needs to know of its environment.
pub(crate) struct SeedContext<'a> {
    pub env: &'a EnvRecord,
    pub blueprint: &'a Blueprint,
    pub settings: &'a Settings,
    pub outputs: &'a BTreeMap<String, String>,
    pub sha: &'a CommitSha,
    pub url: &'a str,
}

/// Takes the next seeding step. `None`: seeding is over, the environment may be called ready.
pub(crate) async fn step(inner: &Inner, cx: &SeedContext<'_>) -> Result<Option<Action>, ReconcileError> {
    let env = cx.env;
    let steps = &cx.blueprint.seed;
    let index = env.seed_step.max(0) as usize;
    let Some(step) = steps.get(index) else {
        let progress = SeedProgress { next_step: index as i64, finished: true, ..SeedProgress::default() };
        inner.store.seed_progress(env.fence(), progress).await?;
        return Ok(None);
    };
    let (word, result) = if step.applies(cx.settings) {
        (StepOutcome::Ok, run(inner, cx, step).await)
    } else {
        (
            StepOutcome::Skipped,
            Ok(StepResult::Done(format!("{} is not true", step.when.as_deref().unwrap_or_default()))),
        )
    };
    match result {
        Ok(StepResult::Waiting) => Ok(Some(Action::Requeue(inner.setup.tuning.poll_min))),
        Ok(StepResult::Done(detail)) => {
            let progress = SeedProgress {
                next_step: index as i64 + 1,
                outcome: Some(outcome(index, step, word, detail)),
                ..SeedProgress::default()
            };
            inner.store.seed_progress(env.fence(), progress).await?;
            Ok(Some(Action::Requeue(Duration::ZERO)))
        }
        Err(StepError::Transient(e)) => Err(e),
        Err(StepError::Failed(detail)) => {
            let progress = SeedProgress {
                next_step: index as i64,
                outcome: Some(outcome(index, step, StepOutcome::Failed, detail.clone())),
                ..SeedProgress::default()
            };
            inner.store.seed_progress(env.fence(), progress).await?;
            Err(ReconcileError::NeedsHuman(format!(
                "seed step {} of {} ({} {:?}) failed: {detail}. The environment is kept as it is; fix the cause, \
                 then reseed (previewd envs reseed {}) or push again",
                index + 1,
                steps.len(),
                step.kind.name(),
                step.name,
                env.id
            )))
        }
    }
}

async fn run(inner: &Inner, cx: &SeedContext<'_>, step: &SeedStep) -> Result<StepResult, StepError> {
    match &step.kind {
        SeedKind::S3Copy { from, bucket, prefix } => {
            let bucket = resolve(cx, bucket)?;
            let n = match from {
                SeedSource::Files(dir) => {
                    let root = cx.blueprint.dir.join(dir);
                    let files = fixture_files(&root).map_err(StepError::Failed)?;
                    for (key, path) in &files {
                        let body = std::fs::read(path)
                            .map_err(|e| StepError::Failed(format!("cannot read {}: {e}", path.display())))?;
                        inner.aws.put_object(&bucket, &format!("{prefix}{key}"), body, None).await?;
                    }
                    files.len()
                }
                SeedSource::S3 { bucket: from, prefix: from_prefix } => {
                    inner.aws.copy_prefix(from, from_prefix, &bucket, prefix).await?
                }
            };
            Ok(StepResult::Done(format!("{n} objects into bucket {bucket}")))
        }
        SeedKind::Sql(sql) => {
            let (host, database, secret_id) =
                (resolve(cx, &sql.host)?, resolve(cx, &sql.database)?, resolve(cx, &sql.secret)?);
            let port: u16 =
                resolve(cx, &sql.port)?.parse().map_err(|_| StepError::Failed("the port is not a number".into()))?;
            run_sql(inner, cx, &sql.files, &host, port, &database, &secret_id).await
        }
        SeedKind::Http(h) => call_hook(inner, cx, &resolve(cx, &h.url)?).await,
        SeedKind::EcsTask(step_task) => {
            let container = &step_task.container;
            let cluster = resolve(cx, &step_task.cluster)?;
            if let Some(task) = &cx.env.seed_task {
                let state = inner.aws.describe_task(&cluster, task, container).await?;
                if !state.stopped() {
                    return Ok(StepResult::Waiting);
                }
                let reason = state.reason.unwrap_or_else(|| "no reason given".to_owned());
                return match state.exit_code {
                    Some(0) => Ok(StepResult::Done(format!("task {task} exited 0"))),
                    Some(code) => Err(StepError::Failed(format!("task {task} exited {code} ({reason})"))),
                    None => Err(StepError::Failed(format!("task {task} stopped without an exit code ({reason})"))),
                };
            }
            let req = TaskRequest {
                cluster,
                task_definition: resolve(cx, &step_task.task_definition)?,
                container: container.clone(),
                command: step_task.command.clone(),
                subnets: list(cx, &step_task.subnets)?,
                security_groups: list(cx, &step_task.security_groups)?,
                assign_public_ip: step_task.assign_public_ip,
                started_by: format!("previewd/{}", cx.env.env_key),
                // The same for every try at this step of this seeding: a retry after a lost answer starts
                // no second task.
                client_token: format!(
                    "previewd-{}-{}-{}",
                    cx.env.id,
                    cx.env.seed_requested_at.unwrap_or_default(),
                    cx.env.seed_step
                ),
            };
            let arn = inner.aws.run_task(&req).await?;
            let progress =
                SeedProgress { next_step: cx.env.seed_step, task: Some(arn.clone()), ..SeedProgress::default() };
            inner.store.seed_progress(cx.env.fence(), progress).await?;
            inner
                .store
                .add_event(cx.env.id, EventKind::Seed, &format!("started ECS task {arn} for seed step {:?}", step.name))
                .await?;
            Ok(StepResult::Waiting)
        }
    }
}

fn outcome(index: usize, step: &SeedStep, result: StepOutcome, detail: String) -> SeedOutcome {
    let labels =
        previewd_metrics::SeedLabels { kind: step.kind.name().to_owned(), outcome: result.as_str().to_owned() };
    previewd_metrics::METRICS.seed_steps.get_or_create(&labels).inc();
    SeedOutcome {
        step: index as i64,
        name: step.name.clone(),
        kind: step.kind.name().to_owned(),
        outcome: result,
        detail,
        at: now_ms(),
    }
}

fn resolve(cx: &SeedContext<'_>, r: &Ref) -> Result<String, StepError> {
    r.resolve(cx.outputs, cx.settings).map_err(|e| StepError::Failed(e.to_string()))
}

fn list(cx: &SeedContext<'_>, r: &Option<Ref>) -> Result<Vec<String>, StepError> {
    r.as_ref()
        .map(|r| r.resolve_list(cx.outputs, cx.settings).map_err(|e| StepError::Failed(e.to_string())))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// Every file under `root`, by its path relative to it (with `/`), sorted.
fn fixture_files(root: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let key: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                found.push((key.join("/"), path));
            }
            if found.len() > MAX_FIXTURE_FILES {
                return Err(format!("more than {MAX_FIXTURE_FILES} files under {}", root.display()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The database's credentials as RDS keeps a managed master password: JSON with `username` and
/// `password`. Never shown.
#[derive(serde::Deserialize)]
struct DbCredentials {
    username: String,
    password: String,
}

async fn run_sql(
    inner: &Inner,
    cx: &SeedContext<'_>,
    files: &[String],
    host: &str,
    port: u16,
    database: &str,
    secret_id: &str,
) -> Result<StepResult, StepError> {
    let secret = inner.aws.secret_string(secret_id).await?;
    let credentials: DbCredentials = serde_json::from_str(secret.expose())
        .map_err(|_| StepError::Failed(format!("secret {secret_id} is not JSON with a username and a password")))?;
    let options = sqlx::postgres::PgConnectOptions::new()
        .host(host)
        .port(port)
        .database(database)
        .username(&credentials.username)
        .password(&credentials.password)
        // TLS whenever the server offers it (RDS forces it from PostgreSQL 15 on).
        .ssl_mode(sqlx::postgres::PgSslMode::Prefer)
        // A step cut off at step_limit closes the connection, but PostgreSQL does not notice a client gone
        // while the session waits (on a lock, say): the server ends the statement itself by then.
        .options([("statement_timeout", inner.setup.tuning.step_limit.as_millis().to_string())]);
    let mut scripts = Vec::new();
    for file in files {
        let path = cx.blueprint.dir.join(file);
        let sql = std::fs::read_to_string(&path)
            .map_err(|e| StepError::Failed(format!("cannot read {}: {e}", path.display())))?;
        scripts.push((file.clone(), sql));
    }
    let place = format!("{host}:{port}/{database}");
    match run_scripts(options, scripts, place.clone()).await {
        Ok(n) => Ok(StepResult::Done(format!("{n} SQL files run against {place}"))),
        // A database just created may take a while to accept connections; one that never does is a
        // network matter for a person (previewd must reach it: the same VPC, a security group rule).
        Err(SqlFailure::Connect(why)) if cx.env.retries + 1 >= SQL_CONNECT_ATTEMPTS => Err(StepError::Failed(format!(
            "{why} ({SQL_CONNECT_ATTEMPTS} attempts): previewd must be able to reach the database (run it in the \
             VPC, or allow it in the database's security group)"
        ))),
        Err(SqlFailure::Connect(why)) => Err(StepError::Transient(ReconcileError::Transient(why))),
        Err(SqlFailure::Failed(why)) => Err(StepError::Failed(why)),
    }
}

enum SqlFailure {
    /// Not accepting connections (yet): a database just created, a security group being applied.
    Connect(String),
    Failed(String),
}

async fn run_scripts(
    options: sqlx::postgres::PgConnectOptions,
    scripts: Vec<(String, String)>,
    place: String,
) -> Result<usize, SqlFailure> {
    let connect = sqlx::postgres::PgConnection::connect_with(&options);
    let mut conn = match tokio::time::timeout(CALL_TIMEOUT, connect).await {
        Err(_) => return Err(SqlFailure::Connect(format!("database {place} did not answer in {CALL_TIMEOUT:?}"))),
        Ok(Err(e)) if e.as_database_error().is_none() => {
            return Err(SqlFailure::Connect(format!("cannot connect to database {place}: {e}")));
        }
        Ok(Err(e)) => return Err(SqlFailure::Failed(format!("database {place} refused: {e}"))),
        Ok(Ok(conn)) => conn,
    };
    // One transaction for the step: a step that fails leaves nothing behind, and runs whole next time.
    let mut tx = conn.begin().await.map_err(|e| SqlFailure::Failed(e.to_string()))?;
    for (file, sql) in &scripts {
        // A plain string goes by the simple query protocol: a file of several statements runs as is.
        sqlx::Executor::execute(&mut *tx, sql.as_str())
            .await
            .map_err(|e| SqlFailure::Failed(format!("{file}: {e}")))?;
    }
    tx.commit().await.map_err(|e| SqlFailure::Failed(e.to_string()))?;
    let _ = conn.close().await;
    Ok(scripts.len())
}

/// The body a seed hook receives.
#[derive(serde::Serialize)]
struct HookBody<'a> {
    event: &'static str,
    repository: &'a str,
    branch: &'a str,
    commit: &'a str,
    url: &'a str,
    environment: &'a str,
}

/// Where a hook is, for messages (which reach pull-request comments): scheme and host only, as a path
/// or a query may hold a token.
fn hook_place(url: &reqwest::Url) -> String {
    format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""))
}

async fn call_hook(inner: &Inner, cx: &SeedContext<'_>, url: &str) -> Result<StepResult, StepError> {
    let url = reqwest::Url::parse(url).map_err(|e| StepError::Failed(format!("the hook URL is not valid: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(StepError::Failed(format!("the hook URL must be http or https, not {}", url.scheme())));
    }
    let place = hook_place(&url);
    let repository = cx.env.repo_display.clone().unwrap_or_else(|| cx.env.repo.to_string());
    let body = serde_json::to_vec(&HookBody {
        event: "seed",
        repository: &repository,
        branch: cx.env.branch.as_str(),
        commit: cx.sha.as_str(),
        url: cx.url,
        environment: cx.env.env_key.as_str(),
    })
    .map_err(|e| StepError::Failed(e.to_string()))?;
    let mut request = inner
        .http
        .post(url)
        .timeout(CALL_TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-previewd-event", "seed");
    if let Some(secret) = &inner.setup.seed_hook_secret {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map_err(|e| StepError::Failed(e.to_string()))?;
        mac.update(&body);
        request = request.header(HOOK_SIGNATURE_HEADER, format!("sha256={}", hex::encode(mac.finalize().into_bytes())));
    }
    let request = request.body(body);
    // A 5xx, a 429 or no answer is tried again, a few times; any other answer is final. The closure owns
    // what its future uses: a future borrowing from it would not be `Send` for every lifetime.
    let send = || {
        let attempt = request.try_clone();
        async move {
            let r = attempt.ok_or(HookFailure::Final("the request cannot be repeated".to_owned()))?.send().await;
            match r {
                Err(e) => Err(HookFailure::Retry(format!("no answer: {}", e.without_url()))),
                Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
                Ok(r) if r.status().is_server_error() || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    Err(HookFailure::Retry(format!("HTTP {}", r.status().as_u16())))
                }
                Ok(r) => Err(HookFailure::Final(format!("HTTP {}", r.status().as_u16()))),
            }
        }
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(inner.setup.tuning.retry_min)
        .with_max_delay(inner.setup.tuning.retry_max)
        .with_max_times(HOOK_ATTEMPTS - 1)
        .with_jitter();
    match send.retry(backoff).when(HookFailure::retryable).await {
        Ok(status) => Ok(StepResult::Done(format!("POST {place} answered HTTP {status}"))),
        Err(HookFailure::Retry(why)) => {
            Err(StepError::Failed(format!("POST {place}: {why}, {HOOK_ATTEMPTS} attempts")))
        }
        Err(HookFailure::Final(why)) => Err(StepError::Failed(format!("POST {place}: {why}"))),
    }
}

#[derive(Debug)]
enum HookFailure {
    Retry(String),
    Final(String),
}

impl HookFailure {
    fn retryable(&self) -> bool {
        matches!(self, HookFailure::Retry(_))
    }
}
