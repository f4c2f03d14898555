//! The real `previewd serve` process, killed with SIGKILL while CloudFormation is still creating its
//! stack, then started again: it converges on the newest commit with no duplicate stack and no
//! acknowledged webhook lost.

use std::time::Duration;

use previewd_domain::{EventKind, Status};
use previewd_testkit::{Serve, TestEnv};

const SHA1: &str = "1111111111111111111111111111111111111111";
const SHA2: &str = "2222222222222222222222222222222222222222";

async fn serve(t: &TestEnv, n: u32) -> Serve {
    let log = t.dir.path().join(format!("serve-{n}.log"));
    Serve::start(t, env!("CARGO_BIN_EXE_previewd"), &[], &[("RUST_LOG", "info")], log).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_creating_then_restart_converges() {
    let mut t = TestEnv::start().await;
    t.stop_app().await;
    let stack = t.names("feat/crash").stack_name;
    t.proxy.slow_create(&stack, Duration::from_secs(3));

    let mut first = serve(&t, 1).await;
    t.set_target(first.addr);
    assert_eq!(t.push("feat/crash", SHA1).await, 202);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while t.proxy.count("CreateStack", &stack) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no CreateStack");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Acknowledged a moment before the crash: must survive it.
    assert_eq!(t.push("feat/crash", SHA2).await, 202);
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");
    // The proxy counts a call when it arrives: moto may still be working on the create. It finishes
    // it whether or not its caller lives, as CloudFormation would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = t.stack(&stack).await.map(|s| s.status);
        if status.as_deref() == Some("CREATE_COMPLETE") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "moto never finished the create: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = serve(&t, 2).await;
    t.set_target(second.addr);
    let env = t
        .wait_for("feat/crash", "ready at the newest commit", |e| {
            e.status == Status::Ready && e.deployed_sha.as_ref().is_some_and(|s| s.as_str() == SHA2)
        })
        .await;
    assert_eq!(t.proxy.count("CreateStack", &stack), 1, "no duplicate stack");
    assert_eq!(t.stack(&stack).await.expect("stack").tag("previewd:sha"), Some(SHA2));
    let events = t.store.events(env.id, 100).await.expect("events");
    let webhooks: Vec<_> = events.iter().filter(|e| e.kind == EventKind::Webhook).collect();
    assert_eq!(webhooks.len(), 2, "both acknowledged webhooks recorded: {events:#?}");
}
