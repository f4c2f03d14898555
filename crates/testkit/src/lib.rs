//! Test-only helpers, never a dependency of non-test code: a moto server per test, a proxy in front of it
//! that injects AWS's real failures, a stateful fake GitHub (optionally under GitHub Enterprise's
//! `/api/v3`), signed webhooks in GitHub's payload shapes, [`TestEnv`], a whole previewd wired to
//! them, and [`StandInApp`], an environment's app over HTTPS for the readiness probe.

pub mod app;
mod env;
mod github;
mod moto;
mod proxy;
pub mod role;
pub mod webhook;

pub use app::StandInApp;
pub use env::{Options, READY_OFF, REPO, SECRET, Serve, TestEnv, ZONE, aws_for, postgres_database, sha};
pub use github::{FakeGitHub, Fault, Target};
pub use moto::{Moto, Seeded, free_port, venv_bin, workspace_root};
pub use proxy::{AwsProxy, Call};

/// Waits (up to a minute, looking every 50 ms) until `f` finds something, and returns it; panics saying
/// `what` was not seen.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
