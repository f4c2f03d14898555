//! The fake GitHub API as a process, for the local demo:
//! `fake-github LISTEN_ADDR OWNER/REPO:BRANCH:SHA...` serves those branches until killed.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let github = previewd_testkit::FakeGitHub::start_on(&listen, "").await;
    for spec in args {
        let mut parts = spec.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(repo), Some(branch), Some(sha)) => github.set_branch(repo, branch, sha),
            _ => {
                eprintln!("expected OWNER/REPO:BRANCH:SHA, got {spec:?}");
                std::process::exit(2);
            }
        }
    }
    println!("{}", github.api_url());
    std::future::pending::<()>().await;
}
