//! A whole previewd for one test: moto behind the fault proxy, a fake GitHub Enterprise, a fresh SQLite
//! database, the real router and reconciler on a free port. Waits are on conditions, with a deadline.

use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use previewd::{Application, Config};
use previewd_cloud::Aws;
use previewd_domain::{BranchName, DnsZone, EnvNames, OwnerId, RepoName};
use previewd_store::EnvRecord;

use crate::{AwsProxy, FakeGitHub, Moto, Seeded, webhook, workspace_root};

/// Mixed case, as GitHub shows many repositories: previewd must treat the name as GitHub does.
pub const REPO: &str = "Acme/Shop";
pub const ZONE: &str = "preview.test.example";
pub const SECRET: &str = "test-webhook-secret";

/// The `n`th made-up commit.
pub fn sha(n: usize) -> String {
    format!("{n:040x}")
}
/// No single wait in a test lasts longer than this.
const WAIT: Duration = Duration::from_secs(60);

/// AWS clients aimed at `endpoint` with test credentials and quick retries.
pub async fn aws_for(endpoint: &str) -> Aws {
    Aws::new(&sdk_config(endpoint).await)
}

async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudformation::config::Credentials::new("test", "test", None, None, "testkit"))
        .retry_config(RetryConfig::standard().with_max_attempts(4).with_initial_backoff(Duration::from_millis(20)))
        .load()
        .await
}

/// How [`TestEnv::with`] configures previewd; every field has a default.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// Top-level configuration keys (`dashboard_token = "…"`).
    pub top: &'a str,
    /// Keys of the `[github]` table: `token = "…"` turns GitHub feedback on (it is off without
    /// credentials).
    pub github: &'a str,
    /// Appended to the configuration (more repositories, pattern overrides); it may use the emulator
    /// configuration's placeholders (`${vpc_id}`, `${subnet_ids}`).
    pub extra: &'a str,
    /// The reaper's grace.
    pub grace: &'a str,
    /// Blueprints from here instead of the workspace's `stacks/`.
    pub stacks_dir: Option<&'a str>,
    /// Hosted zones made besides [`ZONE`] (for more repositories).
    pub zones: &'a [&'a str],
    /// previewd's database; a SQLite file in the test's folder when `None` (see [`postgres_database`]).
    pub database_url: Option<&'a str>,
    /// More keys of the `[reconciler]` table (`step_limit = "1s"`).
    pub reconciler: &'a str,
    /// The repository's `artifact.*` and `readiness.*` settings (its staging table); [`READY_OFF`] by
    /// default: no artifact is waited for and no URL probed.
    pub ready: &'a str,
}

/// A Docker image manifest (schema 2) as CI pushes one; moto takes its digest from it.
const IMAGE_MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"}]}"#;

/// No artifact gate and no readiness probe: `ready` as soon as the stack is complete.
pub const READY_OFF: &str = "artifact.wait = false\nreadiness.probe = false";

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            top: "",
            github: "",
            extra: "",
            grace: "10m",
            stacks_dir: None,
            zones: &[],
            database_url: None,
            reconciler: "",
            ready: READY_OFF,
        }
    }
}

pub struct TestEnv {
    /// The test's own connection to previewd's database (SQLite in WAL mode takes several).
    pub store: previewd_store::Store,
    pub moto: Moto,
    pub proxy: AwsProxy,
    pub github: FakeGitHub,
    pub seeded: Seeded,
    pub app: Option<Application>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    http: reqwest::Client,
    base: String,
    deliveries: u64,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Every AWS call previewd made in the test (at the proxy) must be one its deployed role allows.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let missing = crate::role::not_allowed(&self.proxy.actions_seen());
        assert!(
            missing.is_empty(),
            "previewd called AWS with actions deploy/aws/previewd.json does not grant its task role: {missing:?}"
        );
    }
}

impl TestEnv {
    /// previewd as most tests want it; [`TestEnv::with`] changes what a test needs.
    pub async fn start() -> Self {
        Self::with(&Options::default()).await
    }

    /// previewd configured as `opts` says (every field has a default).
    pub async fn with(opts: &Options<'_>) -> Self {
        let moto = Moto::start().await;
        let zones: Vec<&str> = std::iter::once(ZONE).chain(opts.zones.iter().copied()).collect();
        let seeded = moto.seed(&zones).await;
        let proxy = AwsProxy::start(&moto.endpoint).await;
        let github = FakeGitHub::start("/api/v3").await;
        // Every repository has its default branch (a listing of none is a fault the reaper refuses).
        github.set_branch(REPO, "main", &"f".repeat(40));
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("previewd.toml");
        let stacks = opts.stacks_dir.map_or_else(|| workspace_root().join("stacks"), PathBuf::from);
        let db = opts
            .database_url
            .map_or_else(|| format!("sqlite://{}", dir.path().join("previewd.db").display()), str::to_owned);
        let text = config_text(&db, &github, &seeded, &stacks, opts);
        std::fs::write(&config_path, text).expect("config");
        let store = previewd_store::Store::connect(&db).await.expect("test database");
        let mut env = Self {
            store,
            moto,
            proxy,
            github,
            seeded,
            app: None,
            dir,
            config_path,
            http: reqwest::Client::new(),
            base: String::new(),
            deliveries: 0,
        };
        env.start_app().await;
        env
    }

    pub fn config(&self) -> Config {
        Config::load(Some(&self.config_path), |_| None).expect("test configuration")
    }

    pub async fn start_app(&mut self) {
        let app = Application::build_with_aws(&self.config(), aws_for(&self.proxy.endpoint()).await)
            .await
            .expect("previewd starts");
        self.base = format!("http://{}", app.addr());
        self.app = Some(app);
    }

    pub async fn stop_app(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("stops");
        }
    }

    /// previewd's SQLite database is lost (a disk replaced, a restore from before): previewd is stopped,
    /// the file removed, and previewd started on a new, empty one. AWS keeps what it held.
    pub async fn lose_database(&mut self) {
        self.stop_app().await;
        self.store.close().await;
        let db = self.dir.path().join("previewd.db");
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", db.display());
            std::fs::remove_file(&path).or_else(|e| if suffix.is_empty() { Err(e) } else { Ok(()) }).expect("remove");
        }
        let url = format!("sqlite://{}", db.display());
        self.store = previewd_store::Store::connect(&url).await.expect("test database");
        self.start_app().await;
    }

    /// The names previewd gives the branch's environment when no other environment holds its readable key.
    pub fn names(&self, branch: &str) -> EnvNames {
        let (owner, repo) = (OwnerId::new("test-owner").expect("owner"), RepoName::new(REPO).expect("repo"));
        let (branch, zone) = (BranchName::new(branch).expect("branch"), DnsZone::new(ZONE).expect("zone"));
        EnvNames::readable(&owner, &repo, &branch, &zone)
            .unwrap_or_else(|| EnvNames::new(&owner, &repo, &branch, &zone))
    }

    pub fn app(&self) -> &Application {
        self.app.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts `body` as a GitHub delivery; `signature: None` signs it with the right secret.
    pub async fn deliver(
        &mut self,
        event: &str,
        body: &[u8],
        signature: Option<&str>,
        delivery: Option<&str>,
    ) -> reqwest::StatusCode {
        let req = self.delivery_request(event, body, signature, delivery);
        req.send().await.expect("previewd answers").status()
    }

    /// As [`TestEnv::deliver`], made but not sent.
    pub fn delivery_request(
        &mut self,
        event: &str,
        body: &[u8],
        signature: Option<&str>,
        delivery: Option<&str>,
    ) -> reqwest::RequestBuilder {
        self.deliveries += 1;
        let delivery =
            delivery.map_or_else(|| format!("delivery-{}-{}", self.deliveries, fastrand::u64(..)), str::to_owned);
        let mut req = self
            .http
            .post(self.url("/webhooks/github"))
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("content-type", "application/json")
            .body(body.to_vec());
        let sig = signature.map_or_else(|| webhook::sign(SECRET, body), str::to_owned);
        if !sig.is_empty() {
            req = req.header("x-hub-signature-256", sig);
        }
        req
    }

    /// The branch is at `sha` on GitHub, and GitHub delivers the push.
    pub async fn push(&mut self, branch: &str, sha: &str) -> reqwest::StatusCode {
        let req = self.push_request(branch, sha);
        req.send().await.expect("previewd answers").status()
    }

    /// The branch is at `sha` on GitHub, and GitHub's push delivery is made, signed, to be sent.
    pub fn push_request(&mut self, branch: &str, sha: &str) -> reqwest::RequestBuilder {
        self.github.set_branch(REPO, branch, sha);
        let body = serde_json::to_vec(&webhook::push(REPO, branch, &"0".repeat(40), sha)).expect("json");
        self.delivery_request("push", &body, None, None)
    }

    /// The branch is deleted on GitHub, and GitHub delivers the `delete` event.
    pub async fn delete(&mut self, branch: &str) -> reqwest::StatusCode {
        self.github.delete_branch(REPO, branch);
        let body = serde_json::to_vec(&webhook::branch_event("delete", REPO, branch)).expect("json");
        self.deliver("delete", &body, None, None).await
    }

    pub async fn env(&self, branch: &str) -> Option<EnvRecord> {
        self.env_in(REPO, branch).await
    }

    /// The environment of `branch` of another repository the test configured.
    pub async fn env_in(&self, repo: &str, branch: &str) -> Option<EnvRecord> {
        let repo = RepoName::new(repo).expect("repo");
        let branch = BranchName::new(branch).expect("branch");
        self.store.find(&repo, &branch).await.expect("store")
    }

    /// Waits until the branch's environment satisfies `done`, and returns it.
    pub async fn wait_for(&self, branch: &str, what: &str, done: impl Fn(&EnvRecord) -> bool) -> EnvRecord {
        self.wait_for_in(REPO, branch, what, done).await
    }

    /// As [`wait_for`](Self::wait_for), for a branch of another repository the test configured.
    pub async fn wait_for_in(
        &self,
        repo: &str,
        branch: &str,
        what: &str,
        done: impl Fn(&EnvRecord) -> bool,
    ) -> EnvRecord {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let env = self.env_in(repo, branch).await;
            if let Some(e) = &env
                && done(e)
            {
                return e.clone();
            }
            if tokio::time::Instant::now() > deadline {
                let events = match &env {
                    Some(e) => self.store.events(e.id, 50).await.unwrap_or_default(),
                    None => vec![],
                };
                panic!("{branch}: not {what} within {WAIT:?}: {env:#?}\nevents: {events:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the branch's environment is ready at `sha`.
    pub async fn ready(&self, branch: &str, sha: &str) -> EnvRecord {
        self.wait_for(branch, &format!("ready at {sha}"), |e| {
            e.status == previewd_domain::Status::Ready && e.deployed_sha.as_ref().is_some_and(|s| s.as_str() == sha)
        })
        .await
    }

    /// Waits until the branch's environment is deleted.
    pub async fn deleted(&self, branch: &str) -> EnvRecord {
        self.wait_for(branch, "deleted", |e| e.status == previewd_domain::Status::Deleted).await
    }

    /// Asks the running moto for a stack, without the proxy.
    pub async fn stack(&self, name: &str) -> Option<previewd_cloud::Stack> {
        aws_for(&self.moto.endpoint).await.describe_stack(name).await.expect("describe")
    }

    /// The stack's template as moto holds it (no proxy), if there is such a stack.
    pub async fn stack_template(&self, name: &str) -> Option<String> {
        let cfn = aws_sdk_cloudformation::Client::new(&sdk_config(&self.moto.endpoint).await);
        let out = cfn.get_template().stack_name(name).send().await.ok()?;
        out.template_body().map(str::to_owned)
    }

    /// The SDK configuration of this test's moto (no proxy), for clients previewd does not wrap.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        sdk_config(&self.moto.endpoint).await
    }

    pub async fn direct_aws(&self) -> Aws {
        aws_for(&self.moto.endpoint).await
    }

    /// Puts the image `<repository>:<tag>` into this test's ECR, as CI does when its build ends (the
    /// repository is made first if it is not there).
    pub async fn put_image(&self, repository: &str, tag: &str) {
        let ecr = aws_sdk_ecr::Client::new(&sdk_config(&self.moto.endpoint).await);
        let _exists = ecr.create_repository().repository_name(repository).send().await;
        ecr.put_image()
            .repository_name(repository)
            .image_tag(tag)
            // Each build its own image: the manifest names a config of its own.
            .image_manifest(IMAGE_MANIFEST.replace(
                "b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7",
                &format!("{:x}", Sha256::digest(tag.as_bytes())),
            ))
            .send()
            .await
            .expect("put image");
    }

    /// An S3 client straight to moto, to put what an application would into its buckets.
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = sdk_config(&self.moto.endpoint).await;
        aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build())
    }

    /// Turns versioning on for a bucket, as an application keeping history would.
    pub async fn enable_versioning(&self, bucket: &str) {
        self.s3()
            .await
            .put_bucket_versioning()
            .bucket(bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("versioning");
    }

    /// Sends webhooks to a previewd running elsewhere (a child process) instead.
    pub fn set_target(&mut self, addr: std::net::SocketAddr) {
        self.base = format!("http://{addr}");
    }

    /// Nothing in moto that live branches do not explain: every stack, bucket and DNS record belongs to
    /// the application stack or to the environment of one of `live` branches.
    pub async fn assert_clean(&self, live: &[&str]) {
        let config = sdk_config(&self.moto.endpoint).await;
        let cfn = aws_sdk_cloudformation::Client::new(&config);
        let mut allowed_stacks = vec![];
        let mut allowed_names = vec![];
        for b in live {
            let env = self.env(b).await.expect("live branch has an environment");
            allowed_stacks.push(env.stack_name.clone());
            allowed_names.push(format!("{}.", env.dns_name));
            allowed_names.push(format!("_previewd.{}.", env.dns_name));
        }
        let stacks = cfn.describe_stacks().send().await.expect("describe stacks");
        let mut live_buckets = vec![];
        for s in stacks.stacks() {
            let name = s.stack_name().unwrap_or_default();
            if s.stack_status().map(|st| st.as_str()) == Some("DELETE_COMPLETE") {
                continue;
            }
            let is_app = name.ends_with("-staging") || name.ends_with("-production");
            assert!(
                is_app || allowed_stacks.iter().any(|a| a == name),
                "stack {name} is not explained by a live branch"
            );
            if !is_app {
                live_buckets
                    .extend(self.direct_aws().await.stack_resources(name, "AWS::S3::Bucket").await.expect("resources"));
            }
        }
        let s3 = self.s3().await;
        for b in s3.list_buckets().send().await.expect("buckets").buckets() {
            let name = b.name().unwrap_or_default();
            assert!(live_buckets.iter().any(|l| l == name), "bucket {name} is not explained by a live branch");
        }
        let r53 = aws_sdk_route53::Client::new(&config);
        let zone = &self.seeded.zones[ZONE].hosted_zone_id;
        let records = r53.list_resource_record_sets().hosted_zone_id(zone).send().await.expect("records");
        for r in records.resource_record_sets() {
            let kind = r.r#type().as_str();
            if kind == "SOA" || kind == "NS" {
                continue;
            }
            assert!(
                allowed_names.iter().any(|a| a == r.name()),
                "{kind} record {} is not explained by a live branch",
                r.name()
            );
        }
    }

    /// Environment variables that point a `previewd` process at this test's AWS and GitHub.
    pub fn process_env(&self) -> Vec<(String, String)> {
        vec![
            ("PREVIEWD_CONFIG".into(), self.config_path.display().to_string()),
            ("AWS_ENDPOINT_URL".into(), self.proxy.endpoint()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

/// The shared emulator configuration (`tests/config/emulator.toml`) with this test's values in it.
fn config_text(db: &str, github: &FakeGitHub, seeded: &Seeded, stacks: &std::path::Path, opts: &Options<'_>) -> String {
    let Options { top, github: github_keys, extra, grace, reconciler, ready, .. } = opts;
    let zone = &seeded.zones[ZONE];
    let subnets: Vec<String> = seeded.subnet_ids.iter().map(|s| format!("{s:?}")).collect();
    let template = std::fs::read_to_string(workspace_root().join("tests/config/emulator.toml")).expect("emulator.toml");
    // The test's own text first, so that it may use the placeholders too (`${vpc_id}` in `extra`).
    let values = [
        ("ready", (*ready).to_owned()),
        ("extra", format!("\n{TEST_REAPER}grace = \"{grace}\"\n{extra}")),
        ("owner", "test-owner".to_owned()),
        ("zone", ZONE.to_owned()),
        ("database_url", db.to_owned()),
        ("secret", SECRET.to_owned()),
        ("top", format!("listen = \"127.0.0.1:0\"\nstacks_dir = \"{}\"\n{top}", stacks.display())),
        ("github_api", github.api_url()),
        ("github", format!("timeout = \"2s\"\nwrite_gap = \"0s\"\n{github_keys}")),
        ("reconciler", format!("{}{reconciler}", without_keys(TEST_RECONCILER, reconciler))),
        ("repo", REPO.to_owned()),
        ("vpc_id", seeded.vpc_id.clone()),
        ("subnet_ids", subnets.join(", ")),
        ("certificate_arn", zone.certificate_arn.clone()),
    ];
    values.iter().fold(template, |text, (key, value)| text.replace(&format!("${{{key}}}"), value))
}

/// `table`'s lines but those setting a key `more` sets: `more` wins (a benchmark's production tuning).
fn without_keys(table: &str, more: &str) -> String {
    let key = |line: &str| line.split_once('=').map(|(k, _)| k.trim().to_owned());
    let set: Vec<String> = more.lines().filter_map(key).collect();
    table.lines().filter(|l| key(l).is_none_or(|k| !set.contains(&k))).map(|l| format!("{l}\n")).collect()
}

/// Tests wait little: short polls, retries and leases.
const TEST_RECONCILER: &str = r#"workers = 4
poll_min = "50ms"
poll_max = "250ms"
retry_min = "50ms"
retry_max = "400ms"
resync_every = "1h"
lease = "2s"
api_lag = "300ms"
# One DeleteObjects batch per teardown step, so bounded emptying shows in tests.
empty_batches_per_step = 1
"#;

/// Tests run passes themselves: the schedule never fires during one (midnight on New Year's Day).
const TEST_REAPER: &str = r#"[reaper]
schedule = "0 0 0 1 1 *"
"#;

/// A fresh, empty PostgreSQL database on the local server (`PREVIEWD_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`), or `None` when that variable is `skip`. Its URL; the
/// database is left for the server's owner (the names are unique per process).
pub async fn postgres_database(name: &str) -> Option<String> {
    use sqlx::Executor as _;
    let admin = std::env::var("PREVIEWD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if admin == "skip" {
        eprintln!("PostgreSQL skipped: PREVIEWD_TEST_POSTGRES_URL=skip");
        return None;
    }
    let db = format!("previewd_{name}_{}", std::process::id());
    let pool = sqlx::PgPool::connect(&admin).await.expect("PostgreSQL reachable (or PREVIEWD_TEST_POSTGRES_URL=skip)");
    pool.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await.expect("drop");
    pool.execute(format!("CREATE DATABASE {db}").as_str()).await.expect("create database");
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database");
    Some(format!("{base}/{db}"))
}

/// A real `previewd serve` process aimed at a [`TestEnv`], listening on a free port, its standard error in a
/// log file; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Serve {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `bin` (the test's `env!("CARGO_BIN_EXE_previewd")`) with `args` before `serve`, the test's
    /// environment plus `env`, and waits until `/healthz` answers.
    pub async fn start(t: &TestEnv, bin: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf) -> Self {
        let port = crate::free_port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = std::process::Command::new(bin)
            .args(args)
            .arg("serve")
            .envs(t.process_env())
            .env("PREVIEWD_LISTEN", addr.to_string())
            // The test says how much it logs, not whoever runs the tests.
            .env_remove("RUST_LOG")
            .env_remove("PREVIEWD_LOG_LEVEL")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("previewd starts");
        let serve = Self { child, addr, log };
        let deadline = tokio::time::Instant::now() + WAIT;
        while !reqwest::get(format!("http://{addr}/healthz")).await.is_ok_and(|r| r.status() == 200) {
            assert!(tokio::time::Instant::now() < deadline, "previewd serve did not come up: {}", serve.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        serve
    }

    /// Everything it has written to standard error so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
