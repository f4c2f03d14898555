//! The checks on a commit as the GitHub client reads them from the fake GitHub (under Enterprise's
//! `/api/v3`): check runs and statuses in every page, the newest of each name, and a listing that does
//! not add up refused rather than judged.

use std::time::Duration;

use previewd_domain::{CommitSha, RepoName};
use previewd_github::{CheckState, ChecksVerdict, CommitCheck, Credentials, GitHub, checks_verdict};
use previewd_testkit::{FakeGitHub, Fault, REPO, Target, sha};

fn client(fake: &FakeGitHub) -> GitHub {
    GitHub::new(&fake.api_url(), &Credentials::None, Duration::from_secs(5)).expect("client")
}

fn failed(conclusion: &str) -> CheckState {
    CheckState::Failed { conclusion: conclusion.to_owned() }
}

fn required(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[tokio::test]
async fn every_page_of_check_runs_and_statuses_is_read() {
    let fake = FakeGitHub::start("/api/v3").await;
    let at = sha(7);
    fake.set_page_size_cap(2);
    fake.set_check_run(REPO, &at, "build", "completed", Some("failure"));
    // Re-run: the newest run of the name is the one that counts.
    fake.rerun_check_run(REPO, &at, "build", "completed", Some("success"));
    fake.set_check_run(REPO, &at, "test", "in_progress", None);
    fake.set_check_run(REPO, &at, "lint", "completed", Some("skipped"));
    fake.set_check_run(REPO, &at, "e2e", "completed", Some("timed_out"));
    fake.set_status(REPO, &at, "ci/legacy", "pending");
    fake.set_status(REPO, &at, "ci/legacy", "success");
    fake.set_status(REPO, &at, "ci/docs", "error");
    fake.set_status(REPO, &at, "ci/size", "failure");
    fake.set_check_run(REPO, &sha(8), "test", "completed", Some("success"));

    let github = client(&fake);
    let repo = RepoName::new(REPO).expect("repo");
    let checks = github.commit_checks(&repo, &CommitSha::new(&at).expect("sha")).await.expect("checks");
    let mut states: Vec<(String, CheckState)> = checks.iter().map(|c| (c.name.clone(), c.state.clone())).collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    let expected = [
        ("build", CheckState::Passed),
        ("ci/docs", failed("error")),
        ("ci/legacy", CheckState::Passed),
        ("ci/size", failed("failure")),
        ("e2e", failed("timed_out")),
        ("lint", CheckState::Passed),
        ("test", CheckState::Pending),
    ];
    assert_eq!(states, expected.map(|(n, s)| (n.to_owned(), s)));
    assert!(checks.iter().all(|c| c.url.is_some()), "{checks:?}");
    let paged = fake.requests().iter().filter(|r| r.ends_with("/check-runs") || r.ends_with("/status")).count();
    assert_eq!(paged, 4, "two pages of check runs, two of statuses: {:?}", fake.requests());

    assert_eq!(checks_verdict(&required(&["build", "ci/legacy", "lint"]), &checks), ChecksVerdict::Passed);
    assert_eq!(
        checks_verdict(&required(&["build", "test", "deploy"]), &checks),
        ChecksVerdict::Waiting { pending: required(&["test", "deploy"]) }
    );
    let ChecksVerdict::Failed(CommitCheck { name, state, .. }) = checks_verdict(&required(&["test", "e2e"]), &checks)
    else {
        panic!("a timed-out check fails the wait")
    };
    assert_eq!((name.as_str(), state), ("e2e", failed("timed_out")));
}

#[tokio::test]
async fn a_listing_that_does_not_add_up_is_refused() {
    let fake = FakeGitHub::start("/api/v3").await;
    let at = sha(9);
    fake.set_page_size_cap(1);
    fake.set_check_run(REPO, &at, "build", "completed", Some("success"));
    fake.set_check_run(REPO, &at, "test", "completed", Some("failure"));
    let github = client(&fake);
    let (repo, commit) = (RepoName::new(REPO).expect("repo"), CommitSha::new(&at).expect("sha"));
    // The first page comes without its link to the next: one check run of two is no answer.
    fake.inject(Target::Checks, Fault::NoLink, 1);
    let e = github.commit_checks(&repo, &commit).await.expect_err("an incomplete listing").to_string();
    assert!(e.contains("1 of 2 check runs"), "{e}");
    assert_eq!(github.commit_checks(&repo, &commit).await.expect("whole again").len(), 2);
    // A repository GitHub does not show is an error, not a commit without checks.
    fake.hide_repo(REPO, true);
    assert!(github.commit_checks(&repo, &commit).await.is_err());
}
