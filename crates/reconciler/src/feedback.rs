//! Telling GitHub what became of each environment, on its own loop so that GitHub being slow, down or
//! rate-limiting never delays provisioning.
//!
//! Level-triggered like the reconciler: every write of an environment's observed state marks it due
//! (durably, in the same transaction); this loop compares what GitHub was last told (the deployment, its
//! last state, each comment's hash) with the environment now and sends only the difference. A commit
//! superseded before it was reported is never reported (its statuses are coalesced away); a restart
//! resumes from the record; a deployment or comment whose creation answer was lost is found again, never
//! duplicated.

use std::time::Duration;

use previewd_domain::{CommitSha, Desired, Status, StepOutcome};
use previewd_github::{DeploymentState, DeploymentStatus, GithubError};
use previewd_store::{DeploymentRecord, EnvRecord, PrComment, Timeline, now_ms};
use sha2::{Digest, Sha256};

use crate::context::{Inner, humanize};
use crate::error::ReconcileError;
use crate::reconcile::timeline_summary;

/// Environments taken per look at the store.
const BATCH: i64 = 20;
/// How long a replica holds an environment's feedback while it tells GitHub (a replica that dies
/// meanwhile hands it over after this).
const CLAIM: Duration = Duration::from_secs(120);
/// How often the loop looks for due feedback when nothing woke it.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The loop: until `shutdown`, tells GitHub about every environment that is due.
pub(crate) async fn run(inner: &Inner, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(setup) = &inner.setup.feedback else { return };
    let mut paused_until = 0i64;
    let mut last_write = tokio::time::Instant::now() - setup.write_gap;
    loop {
        let now = now_ms();
        let due = if now < paused_until { Ok(Vec::new()) } else { inner.store.feedback_due(now, BATCH).await };
        let due = due.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read due feedback");
            Vec::new()
        });
        for &(id, seen) in &due {
            if *shutdown.borrow() {
                return;
            }
            // Replicas share the table: whoever claims the environment tells GitHub, the others skip it.
            match inner.store.claim_feedback(id, seen, now_ms() + CLAIM.as_millis() as i64).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim feedback");
                    continue;
                }
            }
            let env = match inner.store.get(id).await {
                Ok(Some(env)) => env,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read environment");
                    continue;
                }
            };
            match tell(inner, &env, setup, &mut last_write).await {
                Ok(()) => {}
                Err(e) => {
                    let retry_after = e.retry_after();
                    if let Some(wait) = retry_after {
                        // GitHub asked everyone to wait: nothing is sent before then.
                        paused_until = now_ms() + wait.as_millis() as i64;
                    }
                    failed(inner, &env, &e, retry_after).await;
                    if retry_after.is_some() {
                        break;
                    }
                }
            }
        }
        if due.len() as i64 == BATCH && now_ms() >= paused_until {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn failed(inner: &Inner, env: &EnvRecord, e: &ReconcileError, retry_after: Option<Duration>) {
    let id = env.id;
    // GitHub's wait when it named one, else the reconciler's backoff.
    let wait = retry_after.unwrap_or_else(|| inner.setup.tuning.backoff(env.feedback_retries + 1));
    let message = format!("GitHub feedback: {e}; trying again in {}", humanize(wait.as_millis() as i64));
    tracing::warn!(env_id = id, error = %e, "GitHub feedback failed");
    if let Err(e) =
        inner.store.feedback_failed(id, now_ms() + wait.as_millis() as i64, retry_after.is_none(), &message).await
    {
        tracing::warn!(error = %e, "cannot record a feedback failure");
    }
}

/// The commit and the state GitHub should show for the environment now; `None`: nothing to report
/// (a `-no-infra` or skipped branch, a push whose commit is not known yet, or one the reconciler has not
/// looked at: whether it will wait is not known). `timeline`: the commit's.
fn target(env: &EnvRecord, timeline: Option<&Timeline>) -> Option<(Option<CommitSha>, DeploymentState)> {
    let desired_sha = match &env.desired {
        Desired::Present { sha } => sha.clone(),
        Desired::Absent => None,
    };
    // Its artifact or checks awaited: nothing of the commit runs yet.
    let queued = timeline.is_some_and(|t| t.artifact_at.is_none() && t.waiting_for.is_some());
    match env.status {
        Status::Skipped => None,
        Status::Deleting | Status::Deleted => Some((None, DeploymentState::Inactive)),
        Status::Ready => Some((env.deployed_sha.clone(), DeploymentState::Success)),
        Status::Failed => Some((desired_sha.or(env.deployed_sha.clone()), DeploymentState::Failure)),
        Status::Pending | Status::Provisioning if queued => desired_sha.map(|s| (Some(s), DeploymentState::Queued)),
        Status::Pending | Status::Provisioning if timeline.is_none() => None,
        Status::Pending | Status::Provisioning => desired_sha.map(|s| (Some(s), DeploymentState::InProgress)),
    }
}

/// The statuses to post, in order, on a deployment last shown `at` to bring it to `state`: every
/// deployment shows `queued` (while its artifact is awaited) or `in_progress` first, then where it ended.
fn steps(at: Option<DeploymentState>, state: DeploymentState) -> Vec<DeploymentState> {
    use DeploymentState::{InProgress, Queued};
    let mut steps = Vec::new();
    let mut at = at;
    if at.is_none() {
        let first = if state == Queued { Queued } else { InProgress };
        steps.push(first);
        at = Some(first);
    }
    match state {
        Queued => {}
        InProgress if at == Some(Queued) => steps.push(InProgress),
        InProgress => {}
        done if at != Some(done) => steps.push(done),
        _ => {}
    }
    steps
}

/// GitHub takes an environment name of at most 255 characters.
const ENVIRONMENT_NAME_MAX: usize = 255;

/// GitHub's environment name for a branch's previews.
pub(crate) fn environment_name(env: &EnvRecord) -> String {
    name_for(env.branch.as_str(), env.env_key.as_str())
}

/// `preview/<branch>`; a branch too long for that is cut and ended with `~<environment key>`, which is
/// unique in the repository, so two long branches never share a GitHub environment.
fn name_for(branch: &str, env_key: &str) -> String {
    let name = format!("preview/{branch}");
    if name.chars().count() <= ENVIRONMENT_NAME_MAX {
        return name;
    }
    let room = ENVIRONMENT_NAME_MAX - "preview/".len() - 1 - env_key.chars().count();
    format!("preview/{}~{env_key}", branch.chars().take(room).collect::<String>())
}

/// Waits out the gap GitHub's secondary limit asks between content-creating requests.
async fn pace(setup: &crate::setup::FeedbackSetup, last_write: &mut tokio::time::Instant) {
    tokio::time::sleep_until(*last_write + setup.write_gap).await;
    *last_write = tokio::time::Instant::now();
}

async fn tell(
    inner: &Inner,
    env: &EnvRecord,
    setup: &crate::setup::FeedbackSetup,
    last_write: &mut tokio::time::Instant,
) -> Result<(), ReconcileError> {
    let id = env.id;
    let rev = env.observed_rev;
    let log_url =
        setup.dashboard_url.as_ref().map(|base| format!("{}/environments/{}", base.trim_end_matches('/'), env.id));
    // The timeline of the commit GitHub is told about (an earlier commit's says nothing of this one).
    let timeline = match env.status {
        Status::Skipped | Status::Deleting | Status::Deleted => None,
        _ => inner.store.timeline(id).await?.filter(|t| Some(&t.sha) == shown_sha(env).as_ref()),
    };
    let waiting = timeline.as_ref().and_then(|t| t.waiting_for.as_deref());
    if let Some((sha, state)) = target(env, timeline.as_ref()) {
        deployment(inner, env, sha, state, waiting, log_url.clone(), setup, last_write).await?;
    }
    if !matches!(env.status, Status::Skipped) {
        let body = comment_body(inner, env, timeline.as_ref(), log_url.as_deref());
        comments(inner, env, &body, setup, last_write).await?;
    }
    inner.store.feedback_done(id, rev).await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn deployment(
    inner: &Inner,
    env: &EnvRecord,
    sha: Option<CommitSha>,
    state: DeploymentState,
    waiting: Option<&str>,
    log_url: Option<String>,
    setup: &crate::setup::FeedbackSetup,
    last_write: &mut tokio::time::Instant,
) -> Result<(), ReconcileError> {
    let github = &inner.github;
    let mut current = env.deployment.clone();
    let post = |state: DeploymentState| {
        let description = match (state, waiting) {
            (DeploymentState::Queued | DeploymentState::InProgress, Some(what)) => format!("waiting for {what}"),
            (DeploymentState::Queued, None) => format!("previewd is waiting to run {}", env.branch),
            (DeploymentState::InProgress, None) => format!("previewd is provisioning {}", env.branch),
            (DeploymentState::Success, _) => format!("ready at {}", env.url.as_deref().unwrap_or(&env.dns_name)),
            (DeploymentState::Failure, _) => {
                env.last_error.clone().unwrap_or_else(|| "the environment failed".to_owned())
            }
            (DeploymentState::Inactive, _) => "the environment is torn down".to_owned(),
        };
        DeploymentStatus {
            state,
            environment_url: (state == DeploymentState::Success).then(|| env.url.clone()).flatten(),
            log_url: log_url.clone(),
            description,
        }
    };
    let Some(sha) = sha else {
        // Torn down: the last deployment goes inactive (nothing was ever reported: nothing to say).
        if let Some(d) = current.filter(|d| d.state != Some(DeploymentState::Inactive)) {
            pace(setup, last_write).await;
            match github.create_deployment_status(&env.repo, d.id as u64, &post(DeploymentState::Inactive)).await {
                Ok(()) | Err(GithubError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let d = DeploymentRecord { state: Some(DeploymentState::Inactive), ..d };
            inner.store.set_deployment(env.id, &d).await?;
        }
        return Ok(());
    };
    if current.as_ref().is_none_or(|d| d.sha != sha) {
        // GitHub marks older deployments inactive only for non-transient environments: previewd does it
        // for the commit it replaces.
        if let Some(old) = current.take().filter(|d| d.state != Some(DeploymentState::Inactive)) {
            pace(setup, last_write).await;
            let mut superseded = post(DeploymentState::Inactive);
            superseded.description = format!("superseded by {}", sha.short());
            match github.create_deployment_status(&env.repo, old.id as u64, &superseded).await {
                Ok(()) => {}
                // Deleted on GitHub: nothing left to mark.
                Err(GithubError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let old = DeploymentRecord { state: Some(DeploymentState::Inactive), ..old };
            inner.store.set_deployment(env.id, &old).await?;
        }
        let environment = environment_name(env);
        let id = match github.find_deployment(&env.repo, &sha, &environment).await? {
            Some(id) => id,
            None => {
                pace(setup, last_write).await;
                let description = format!("previewd: {} at {}", env.branch, sha.short());
                github.create_deployment(&env.repo, &sha, &environment, &description).await?
            }
        };
        let d = DeploymentRecord { sha: sha.clone(), id: id as i64, state: None };
        inner.store.set_deployment(env.id, &d).await?;
        current = Some(d);
    }
    let Some(mut d) = current else { return Ok(()) };
    for step in steps(d.state, state) {
        pace(setup, last_write).await;
        if let Err(e) = github.create_deployment_status(&env.repo, d.id as u64, &post(step)).await {
            if matches!(e, GithubError::Status { status: 404, .. }) {
                // Deleted on GitHub: forgotten, made again on the next turn.
                inner.store.forget_deployment(env.id).await?;
            }
            return Err(e.into());
        }
        d.state = Some(step);
        inner.store.set_deployment(env.id, &d).await?;
    }
    Ok(())
}

/// The marker that finds previewd's comment again (after a restart, or a lost answer).
pub(crate) fn marker(inner: &Inner, env: &EnvRecord) -> String {
    format!("<!-- previewd:{}:{} -->", inner.setup.owner, env.env_key)
}

/// `text` as Markdown shows it literally: punctuation escaped, HTML defused, one line; an `@` is followed
/// by a zero-width space, so no name in a branch or an error mentions (notifies) anyone.
pub(crate) fn markdown_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{200B}"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_ascii_punctuation() => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The commit the comment and the deployment speak of: the deployed one once ready, else the desired one.
fn shown_sha(env: &EnvRecord) -> Option<CommitSha> {
    if env.status == Status::Ready { env.deployed_sha.clone() } else { None }.or(match &env.desired {
        Desired::Present { sha } => sha.clone(),
        Desired::Absent => env.deployed_sha.clone(),
    })
}

fn comment_body(inner: &Inner, env: &EnvRecord, timeline: Option<&Timeline>, log_url: Option<&str>) -> String {
    let mut rows = vec![("Branch", markdown_text(env.branch.as_str()))];
    let url = match (&env.url, env.status) {
        (Some(url), Status::Ready | Status::Provisioning) => format!("<{}>", url.replace(['<', '>', ' '], "")),
        _ => "—".to_owned(),
    };
    rows.push(("URL", url));
    rows.push(("Status", format!("**{}**", env.status)));
    rows.push(("Commit", shown_sha(env).map_or_else(|| "—".to_owned(), |s| format!("`{}`", s.short()))));
    if let Some(t) = timeline.filter(|_| matches!(env.status, Status::Pending | Status::Provisioning))
        && let (Some(what), Some(since)) = (&t.waiting_for, t.waiting_since)
    {
        rows.push(("Waiting for", format!("{} (since {})", markdown_text(what), clock(since))));
    }
    if let Some(summary) = timeline.filter(|_| env.status != Status::Failed).and_then(timeline_summary) {
        rows.push(("Timeline", markdown_text(&summary)));
    }
    let seed = match (env.seeded_at, env.seed_log.last()) {
        (Some(_), _) => format!("seeded ({} steps)", env.seed_log.len()),
        (None, Some(last)) if last.outcome == StepOutcome::Failed => {
            format!("step {} ({}) failed", last.step + 1, markdown_text(&last.name))
        }
        (None, Some(_)) if env.seed_pending => "seeding…".to_owned(),
        (None, None) if env.seed_pending => "waiting for the stack".to_owned(),
        _ => "—".to_owned(),
    };
    rows.push(("Test data", seed));
    if let Some(e) = &env.last_error {
        rows.push(("Last error", markdown_text(&previewd_github::truncate(e, 500))));
    }
    if let Some(url) = log_url {
        rows.push(("Details", format!("[previewd dashboard]({url})")));
    }
    let table: Vec<String> = rows.iter().map(|(k, v)| format!("| {k} | {v} |")).collect();
    format!("{}\n### Preview environment\n\n| | |\n|---|---|\n{}\n", marker(inner, env), table.join("\n"))
}

/// A moment as the comment shows it: UTC, to the second (it never changes, so neither does the comment).
fn clock(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string().replace('T', " ").replace('Z', " UTC")
}

async fn comments(
    inner: &Inner,
    env: &EnvRecord,
    body: &str,
    setup: &crate::setup::FeedbackSetup,
    last_write: &mut tokio::time::Instant,
) -> Result<(), ReconcileError> {
    let github = &inner.github;
    let pulls = github.open_pulls(&env.repo, &env.branch).await?;
    let known = inner.store.pr_comments(env.id).await?;
    // A pull request closed or merged since is no longer the branch's: the dashboard stops showing it.
    for gone in known.iter().filter(|c| !pulls.iter().any(|p| p.number as i64 == c.pr_number)) {
        inner.store.forget_pr_comment(env.id, gone.pr_number).await?;
    }
    if pulls.is_empty() {
        return Ok(());
    }
    let hash = format!("{:x}", Sha256::digest(body.as_bytes()));
    let marker = marker(inner, env);
    for pull in pulls {
        let number = pull.number;
        let mine = known.iter().find(|c| c.pr_number == number as i64);
        if let Some(c) = mine.filter(|c| c.body_hash == hash) {
            // The comment says it already; only who opened the pull request may be news.
            if c.author != pull.author {
                inner.store.set_pr_comment(env.id, &PrComment { author: pull.author.clone(), ..c.clone() }).await?;
            }
            continue;
        }
        let mut comment_id = mine.map(|c| c.comment_id as u64);
        if comment_id.is_none() {
            comment_id = github.find_comment(&env.repo, number, &marker).await?;
        }
        pace(setup, last_write).await;
        let id = match comment_id {
            Some(id) if github.edit_comment(&env.repo, id, body).await? => id,
            // Never made, or deleted by a person since: made (again).
            _ => github.create_comment(&env.repo, number, body).await?,
        };
        let c = PrComment {
            pr_number: number as i64,
            comment_id: id as i64,
            body_hash: hash.clone(),
            author: pull.author.clone(),
        };
        inner.store.set_pr_comment(env.id, &c).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn content_creating_requests_are_spaced_under_githubs_limit() {
        let setup = crate::setup::FeedbackSetup { dashboard_url: None, write_gap: Duration::from_millis(750) };
        let start = tokio::time::Instant::now();
        let mut last = start - setup.write_gap;
        for _ in 0..81 {
            pace(&setup, &mut last).await;
        }
        // 81 writes take at least 80 gaps: a minute, so never more than 80 in any minute.
        assert!(start.elapsed() >= Duration::from_secs(60), "{:?}", start.elapsed());
    }

    #[test]
    fn a_deployment_is_queued_or_in_progress_first_then_where_it_ended() {
        use DeploymentState::*;
        assert_eq!(steps(None, Queued), [Queued]);
        assert_eq!(steps(Some(Queued), Queued), []);
        assert_eq!(steps(Some(Queued), InProgress), [InProgress]);
        assert_eq!(steps(Some(Queued), Success), [Success]);
        assert_eq!(steps(Some(Queued), Failure), [Failure], "a failed check fails a queued deployment");
        assert_eq!(steps(None, InProgress), [InProgress]);
        assert_eq!(steps(None, Success), [InProgress, Success]);
        assert_eq!(steps(Some(InProgress), Success), [Success]);
        assert_eq!(steps(Some(Success), Success), []);
        assert_eq!(steps(Some(Success), InProgress), [], "never back to in_progress once it ended");
    }

    #[test]
    fn environment_names_fit_githubs_limit() {
        assert_eq!(name_for("feat/x", "feat-x"), "preview/feat/x");
        let long = "é".repeat(1_000);
        let (a, b) = (name_for(&format!("{long}a"), "aaa-11111111"), name_for(&format!("{long}b"), "aaa-22222222"));
        assert_eq!(a.chars().count(), ENVIRONMENT_NAME_MAX);
        assert!(a.ends_with("~aaa-11111111") && a != b, "{a}");
        let exact = "x".repeat(ENVIRONMENT_NAME_MAX - "preview/".len());
        assert_eq!(name_for(&exact, "k"), format!("preview/{exact}"));
    }

    #[test]
    fn markdown_shows_hostile_text_literally() {
        let s = markdown_text("<img src=x onerror=alert(1)> **bold** [a](b) @team `x`\n# h");
        assert!(!s.contains('<') && !s.contains("@team") && !s.contains('\n'), "{s}");
        assert!(s.contains("\\*\\*bold\\*\\*") && s.contains("\\[a\\]\\(b\\)") && s.contains("\\`x\\`"), "{s}");
    }
}
