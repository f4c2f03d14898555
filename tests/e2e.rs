//! previewd end to end: signed webhooks through the real router, the real reconciler, moto behind the
//! fault-injecting proxy, and a stateful fake GitHub Enterprise.

use previewd_domain::Status;
use previewd_testkit::{REPO, TestEnv};

const SHA1: &str = "1111111111111111111111111111111111111111";
const SHA2: &str = "2222222222222222222222222222222222222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_update_and_delete() {
    let mut t = TestEnv::start().await;
    assert_eq!(t.push("feature/login", SHA1).await, 202);
    let env = t.wait_for("feature/login", "ready", |e| e.status == Status::Ready).await;
    assert_eq!(env.deployed_sha.as_ref().map(|s| s.as_str()), Some(SHA1));
    let stack = t.stack(&env.stack_name).await.expect("stack exists");
    assert_eq!(stack.status, "CREATE_COMPLETE");
    for (k, v) in [
        ("previewd:owner", "test-owner"),
        ("previewd:repo", REPO),
        ("previewd:branch", "feature/login"),
        ("previewd:env", env.env_key.as_str()),
        ("previewd:sha", SHA1),
    ] {
        assert_eq!(stack.tag(k), Some(v), "tag {k}");
    }
    println!("{env:#?}");
}
