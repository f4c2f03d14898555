//! The beanstalk blueprint, provisioned end to end: a repository on it waits for its commit's bundle in S3,
//! creates its stacks, points its name at the environment's own Beanstalk host name (never an address),
//! becomes ready through the probe, and leaves nothing behind when its branch goes. moto through the fault
//! proxy, the fake GitHub, a stand-in app, and the real process.
//!
//! What moto does and does not: it creates the stacks, the bucket, the instance role and profile, the
//! security group and the DNS records as AWS would; it takes the Elastic Beanstalk resources
//! (application, application version, environment) without creating anything (it has no Beanstalk
//! behind CloudFormation). So this proves previewd's side (the gate, the stacks, the name, the probe, the
//! teardown); that Beanstalk starts the bundle on an instance, and that `<prefix>.<region>.elasticbeanstalk.com`
//! resolves to it, only a real account shows.

use previewd_domain::Status;
use previewd_testkit::{Options, StandInApp, TestEnv, sha, webhook};

const BEANS: &str = "acme/beans";
const BEANS_ZONE: &str = "beans.test.example";
const BUNDLES: &str = "acme-beans-bundles";

/// `f`'s first `Some`, asked every 50 ms for at most a minute.
async fn until<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within a minute: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn push(t: &mut TestEnv, branch: &str, sha: &str) {
    t.github.set_branch(BEANS, branch, sha);
    let body = serde_json::to_vec(&webhook::push(BEANS, branch, &"0".repeat(40), sha)).expect("json");
    assert_eq!(t.deliver("push", &body, None, None).await, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beanstalk_preview_waits_for_its_bundle_answers_by_name_and_leaves_nothing() {
    let app = StandInApp::start(BEANS_ZONE).await.expect("stand-in app");
    // Previews are single instances reached over plain HTTP; the stand-in app answers over TLS, so the
    // probe is told so (a repository may set readiness.*; a branch may not).
    let extra = format!(
        r#"[repos."{BEANS}"]
blueprint = "beanstalk"
dns_zone = "{BEANS_ZONE}"

[repos."{BEANS}".stages.staging]
network.vpc_id = "${{vpc_id}}"
network.subnet_ids = [${{subnet_ids}}]
database.enabled = false
bundle.bucket = "{BUNDLES}"
bundle.key_prefix = "beans/"
artifact.wait = true
readiness.probe = true

# After the blueprint's preview layer, which asks over plain HTTP.
[repos."{BEANS}".branches."feature/*"]
readiness.url = "https://{{dns_name}}{{health_check_path}}"
readiness.connect_to = {:?}
readiness.ca_file = {:?}
"#,
        app.connect_to(),
        app.ca_file().display().to_string()
    );
    let mut t = TestEnv::with(&Options { extra: &extra, zones: &[BEANS_ZONE], ..Options::default() }).await;
    let s3 = t.s3().await;
    s3.create_bucket().bucket(BUNDLES).send().await.expect("bundle bucket");
    let commit = sha(1);
    push(&mut t, "feature/beans", &commit).await;

    // No stack before the bundle: a Beanstalk environment cannot run without its application version.
    let waiting =
        t.wait_for_in(BEANS, "feature/beans", "waiting for its bundle", |e| e.status == Status::Pending).await;
    let what =
        until("what it waits for", || async { t.store.timeline(waiting.id).await.expect("store")?.waiting_for }).await;
    assert!(what.contains(&format!("s3://{BUNDLES}/beans/{commit}.zip")), "{what}");
    assert!(t.stack(&waiting.stack_name).await.is_none(), "no stack while the bundle is missing");

    // CI uploads the bundle: the stacks are created, the name points at a host name, the URL answers.
    let key = format!("beans/{commit}.zip");
    s3.put_object().bucket(BUNDLES).key(&key).body(b"PK\x05\x06".to_vec().into()).send().await.expect("bundle");
    let ready = t.wait_for_in(BEANS, "feature/beans", "ready", |e| e.status == Status::Ready).await;
    assert_eq!(ready.deployed_sha.as_ref().map(|s| s.as_str()), Some(commit.as_str()));
    assert!(app.requests() >= 2 && app.hosts().iter().all(|h| *h == ready.dns_name), "{:?}", app.hosts());
    let stack = t.stack(&ready.stack_name).await.expect("stack");
    let endpoint = stack.outputs.get("Endpoint").expect("endpoint").clone();
    assert!(endpoint.ends_with(".us-east-1.elasticbeanstalk.com"), "the environment's own name: {endpoint}");
    assert!(endpoint.parse::<std::net::IpAddr>().is_err());
    let records = dns_records(&t).await;
    let cname = records.iter().find(|(name, kind, _)| name == &format!("{}.", ready.dns_name) && kind == "CNAME");
    assert_eq!(cname.map(|(_, _, value)| value.trim_end_matches('.')), Some(endpoint.as_str()), "{records:?}");
    let url = stack.outputs.get("Url").expect("url");
    assert!(url.starts_with("http://"), "a single instance serves plain HTTP, and the app is told so: {url}");

    // The branch goes: everything previewd made for it goes too (the bundle is CI's, and stays).
    t.github.delete_branch(BEANS, "feature/beans");
    let body = serde_json::to_vec(&webhook::branch_event("delete", BEANS, "feature/beans")).expect("json");
    assert_eq!(t.deliver("delete", &body, None, None).await, 202);
    t.wait_for_in(BEANS, "feature/beans", "deleted", |e| e.status == Status::Deleted).await;
    assert!(t.stack(&ready.stack_name).await.is_none_or(|s| s.status == "DELETE_COMPLETE"));
    let left: Vec<_> = dns_records(&t).await.into_iter().filter(|(_, kind, _)| kind != "SOA" && kind != "NS").collect();
    assert!(left.is_empty(), "{left:?}");
    let buckets = s3.list_buckets().send().await.expect("buckets");
    let names: Vec<_> = buckets.buckets().iter().filter_map(|b| b.name()).collect();
    assert!(names.iter().all(|n| *n == BUNDLES || !n.contains("feature-beans")), "{names:?}");
}

/// Every record in the beanstalk repository's zone: (name, type, first value).
async fn dns_records(t: &TestEnv) -> Vec<(String, String, String)> {
    let r53 = aws_sdk_route53::Client::new(&t.sdk_config().await);
    let zone = &t.seeded.zones[BEANS_ZONE].hosted_zone_id;
    let records = r53.list_resource_record_sets().hosted_zone_id(zone).send().await.expect("records");
    records
        .resource_record_sets()
        .iter()
        .map(|r| {
            let value = r.resource_records().first().map(|v| v.value().to_owned()).unwrap_or_default();
            (r.name().to_owned(), r.r#type().as_str().to_owned(), value)
        })
        .collect()
}
