//! What "ready" means, acted on: the commit's artifact and checks before it runs (the gate), the
//! timeline of its phases, and the URL answering before it is called ready (the probe).

use std::time::Duration;

use previewd_domain::{CommitSha, EventKind, Status};
use previewd_github::{CheckState, ChecksVerdict, checks_verdict};
use previewd_render::{Artifact, ProbeRules, Rules};
use previewd_store::{EnvRecord, Observed, Timeline, now_ms};

use super::record::record;
use crate::artifacts::{Found, artifact_delay};
use crate::context::{Inner, humanize};
use crate::error::{Action, ReconcileError};
use crate::probe::Target;

/// A commit's timeline as this step found it and changes it; written once, when it changed.
pub(super) struct Stamps {
    pub(super) now: Timeline,
    before: Option<Timeline>,
    /// Phases are counted in `previewd_phase_seconds` (not for a commit that ran before previewd kept
    /// timelines: its push may be weeks old).
    measured: bool,
}

impl Stamps {
    /// The environment's timeline for `sha`: the stored one, or a fresh one when the commit changed or
    /// came again (a push of the same commit, a redeploy: the wait starts over). The push is the latest
    /// word of the commit: a webhook's, or the desired state's change (a missed push found by a listing).
    pub(super) async fn load(inner: &Inner, env: &EnvRecord, sha: &CommitSha) -> Result<Self, ReconcileError> {
        let before = inner.store.timeline(env.id).await?;
        let pushed = env.pushed_at.unwrap_or(0).max(env.desired_at);
        let now = match &before {
            Some(t) if t.sha == *sha && t.pushed_at.unwrap_or(0) >= pushed => t.clone(),
            _ => Timeline::new(sha.clone(), Some(pushed)),
        };
        let settled = before.is_none() && env.status == Status::Ready && env.deployed_sha.as_ref() == Some(sha);
        Ok(Self { now, before, measured: !settled })
    }

    /// Stamps `phase` now, once, and counts it in `previewd_phase_seconds`.
    pub(super) fn reach(&mut self, phase: Phase) {
        let t = &mut self.now;
        let (slot, phase) = match phase {
            Phase::Artifact => (&mut t.artifact_at, "artifact"),
            Phase::Infrastructure => (&mut t.infrastructure_at, "infrastructure"),
            Phase::Answered => (&mut t.answered_at, "answered"),
            Phase::Ready => (&mut t.ready_at, "ready"),
        };
        if slot.is_some() {
            return;
        }
        let at = now_ms();
        *slot = Some(at);
        if let Some(pushed) = t.pushed_at.filter(|_| self.measured) {
            let seconds = (at - pushed).max(0) as f64 / 1000.0;
            let label = previewd_metrics::PhaseLabel { phase };
            previewd_metrics::METRICS.phase_seconds.get_or_create(&label).observe(seconds);
        }
    }

    /// Waiting for `what` (since the first time it was said), with the last answer heard.
    pub(super) fn wait_for(&mut self, what: String, last_answer: Option<String>) {
        if self.now.waiting_for.as_deref() != Some(what.as_str()) {
            self.now.waiting_since = Some(now_ms());
            self.now.waiting_for = Some(what);
        }
        self.now.last_answer = last_answer;
    }

    pub(super) fn done_waiting(&mut self) {
        self.now.waiting_for = None;
        self.now.waiting_since = None;
        self.now.last_answer = None;
    }

    /// Waiting for `url` to answer (so its name was pointed already, for this commit).
    pub(super) fn probing(&self, url: &str) -> bool {
        self.now.waiting_for.as_deref() == Some(url_wait(url).as_str())
    }

    fn before_waiting_for(&self) -> Option<String> {
        self.before.as_ref().and_then(|t| t.waiting_for.clone())
    }

    /// Written before the observed state it goes with: whoever reads a status (the API, GitHub's
    /// feedback) finds the timeline that explains it.
    pub(super) async fn save(&self, inner: &Inner, env: &EnvRecord) -> Result<(), ReconcileError> {
        if self.before.as_ref() != Some(&self.now) {
            inner.store.record_timeline(env.fence(), &self.now).await?;
        }
        Ok(())
    }
}

/// A phase of a commit's way to ready, as the timeline stamps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Artifact,
    Infrastructure,
    Answered,
    Ready,
}

/// How the commit came up, in words: "ready 4m 12s after the push: build 3m 2s, infrastructure 2m 40s
/// alongside" once ready, else the phases reached so far ("artifact after 1m 2s"); `None` before any.
/// "Alongside" when the infrastructure was complete before the build ended.
pub(crate) fn timeline_summary(t: &Timeline) -> Option<String> {
    let pushed = t.pushed_at?;
    let after = |at: Option<i64>| at.map(|a| humanize((a - pushed).max(0)));
    let mut parts = Vec::new();
    if let Some(build) = after(t.artifact_at) {
        parts.push(format!("build {build}"));
    }
    if let Some(infra) = after(t.infrastructure_at) {
        let alongside = matches!((t.infrastructure_at, t.artifact_at), (Some(i), Some(a)) if i <= a);
        parts.push(format!("infrastructure {infra}{}", if alongside { " alongside" } else { "" }));
    }
    match after(t.ready_at) {
        Some(total) if parts.is_empty() => Some(format!("ready {total} after the push")),
        Some(total) => Some(format!("ready {total} after the push: {}", parts.join(", "))),
        None if parts.is_empty() => None,
        None => Some(format!("so far: {}", parts.join(", "))),
    }
}

/// What a commit waits for while its URL does not answer.
fn url_wait(url: &str) -> String {
    format!("{url} to answer")
}

/// Whether the commit may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    Open,
    /// Not yet: look again after `delay` (or at a webhook for the commit).
    Waiting {
        delay: Duration,
    },
    /// It will not: a check failed, or the wait timed out.
    Failed(String),
}

/// The gate for the commit: the named checks, then the artifact. Stamps `artifact` once both are there.
pub(super) async fn gate(
    inner: &Inner,
    env: &EnvRecord,
    sha: &CommitSha,
    rules: &Rules,
    stamps: &mut Stamps,
    running: bool,
) -> Result<Gate, ReconcileError> {
    // Found once for this commit, or running already with a stack (an image expired from ECR since is no
    // reason to stop what runs).
    if stamps.now.artifact_at.is_some() || (running && env.deployed_sha.as_ref() == Some(sha)) {
        // It runs already: its artifact is there (or was: one expired from ECR since is no reason to stop).
        stamps.reach(Phase::Artifact);
        return Ok(Gate::Open);
    }
    let waiting = match checks(inner, env, sha, &rules.checks).await? {
        Err(failed) => return Ok(Gate::Failed(failed)),
        Ok(Some(pending)) => Some((pending, None)),
        Ok(None) => match &rules.artifact {
            None => None,
            Some(artifact) => artifact_missing(inner, artifact).await?.map(|answer| (artifact.to_string(), answer)),
        },
    };
    let Some((what, answer)) = waiting else {
        stamps.reach(Phase::Artifact);
        stamps.done_waiting();
        return Ok(Gate::Open);
    };
    stamps.wait_for(what.clone(), answer);
    let since = stamps.now.pushed_at.or(stamps.now.waiting_since).unwrap_or_else(now_ms);
    let waited = Duration::from_millis((now_ms() - since).max(0) as u64);
    if waited >= rules.artifact_timeout {
        let last = stamps.now.last_answer.as_deref().map(|a| format!(" ({a})")).unwrap_or_default();
        return Ok(Gate::Failed(format!(
            "{what} was not there within artifact.timeout ({}){last}: did CI build and publish it for {}? \
             A new push or a redeploy starts over",
            humanize(rules.artifact_timeout.as_millis() as i64),
            sha.short()
        )));
    }
    Ok(Gate::Waiting { delay: artifact_delay(waited, now_ms()) })
}

/// `Err`: a required check failed (why, with its link); `Ok(Some)`: what is still awaited; `Ok(None)`:
/// every required check passed (or none is required).
async fn checks(
    inner: &Inner,
    env: &EnvRecord,
    sha: &CommitSha,
    required: &[String],
) -> Result<Result<Option<String>, String>, ReconcileError> {
    if required.is_empty() {
        return Ok(Ok(None));
    }
    let found = inner.github.commit_checks(&env.repo, sha).await?;
    Ok(match checks_verdict(required, &found) {
        ChecksVerdict::Passed => Ok(None),
        ChecksVerdict::Waiting { pending } => {
            Ok(Some(format!("the check{} {} to pass", plural(&pending), pending.join(", "))))
        }
        ChecksVerdict::Failed(check) => {
            let conclusion = match &check.state {
                CheckState::Failed { conclusion } => conclusion.as_str(),
                _ => "failed",
            };
            // Whoever posted a status chose its link: only a web address, quoted and bounded.
            let link = check
                .url
                .as_deref()
                .filter(|u| (u.starts_with("https://") || u.starts_with("http://")) && u.len() <= 500)
                .map(|u| format!(" ({})", previewd_domain::text::quote(u)))
                .unwrap_or_default();
            Err(format!(
                "the check {} concluded {conclusion} on {}{link}: nothing was run; push a fix, or re-run the \
                 check and redeploy",
                previewd_domain::text::quote(&check.name),
                sha.short()
            ))
        }
    })
}

fn plural(v: &[String]) -> &'static str {
    if v.len() == 1 { "" } else { "s" }
}

/// `None` when the artifact exists; otherwise what was heard of it, if anything beyond "not there".
async fn artifact_missing(inner: &Inner, artifact: &Artifact) -> Result<Option<Option<String>>, ReconcileError> {
    match artifact {
        Artifact::Image(image) => {
            let repo = image.repository.clone();
            let aws = inner.aws.clone();
            let found = inner
                .images
                .look(&repo, &image.tag, |tags| {
                    let repo = repo.clone();
                    async move { aws.images_present(&repo, &tags).await }
                })
                .await?;
            Ok(match found {
                Found::Present => None,
                Found::Missing => Some(None),
                Found::NoRepository => Some(Some(format!("ECR has no repository {}", image.repository.name))),
            })
        }
        Artifact::Object { bucket, key } => Ok((!inner.aws.object_exists(bucket, key).await?).then_some(None)),
    }
}

/// What a waiting environment records: `pending` (with what else `seen` says of it), and what it waits
/// for.
pub(super) async fn record_waiting(
    inner: &Inner,
    env: &EnvRecord,
    stamps: &Stamps,
    seen: Observed,
) -> Result<(), ReconcileError> {
    let what = stamps.now.waiting_for.clone().unwrap_or_default();
    let o = Observed { status: Status::Pending, last_error: None, ..seen };
    let event = (stamps.before_waiting_for() != stamps.now.waiting_for).then(|| format!("waiting for {what}"));
    stamps.save(inner, env).await?;
    record(inner, env, o, event.as_deref().map(|m| (EventKind::Waiting, m))).await
}

/// The gate or the probe said no for good: `failed`, with why; the next push or a redeploy starts over.
pub(super) async fn record_failed(
    inner: &Inner,
    env: &EnvRecord,
    stamps: &mut Stamps,
    why: String,
) -> Result<Action, ReconcileError> {
    stamps.done_waiting();
    let o = Observed { status: Status::Failed, last_error: Some(why.clone()), ..env.observed() };
    let event = (env.status != Status::Failed || env.last_error.as_deref() != Some(why.as_str())).then_some(why);
    stamps.save(inner, env).await?;
    record(inner, env, o, event.as_deref().map(|m| (EventKind::Failed, m))).await?;
    if let Some(why) = &event {
        super::record::failed(env, why, false);
    }
    Ok(Action::Done)
}

/// Gap between the two answers that make a URL ready, and between probes of a URL not answering yet.
const PROBE_GAP: Duration = Duration::from_secs(1);
const PROBE_AGAIN_MIN: Duration = Duration::from_secs(2);
const PROBE_AGAIN_MAX: Duration = Duration::from_secs(10);

/// Asks the URL, twice in a row when it answers. `None`: it answered, go on to `ready`; otherwise what to
/// do now (look again, or `failed` once `readiness.timeout` has passed).
pub(super) async fn probe(
    inner: &Inner,
    env: &EnvRecord,
    url: &str,
    rules: &ProbeRules,
    stamps: &mut Stamps,
) -> Result<Option<Action>, ReconcileError> {
    let target =
        Target { url: rules.url.clone(), connect_to: rules.connect_to.clone(), ca_file: rules.ca_file.clone() };
    let mut answer = inner.prober.probe(&target).await;
    if let crate::probe::Answer::Invalid(why) = &answer {
        let why = format!("the readiness probe of {} cannot be made: {why}", rules.url);
        return record_failed(inner, env, stamps, why).await.map(Some);
    }
    if answer.passed() {
        stamps.reach(Phase::Answered);
        tokio::time::sleep(PROBE_GAP).await;
        answer = inner.prober.probe(&target).await;
        if answer.passed() {
            stamps.done_waiting();
            return Ok(None);
        }
    }
    stamps.wait_for(url_wait(&rules.url), Some(answer.describe()));
    let since = stamps.now.waiting_since.unwrap_or_else(now_ms);
    let waited = (now_ms() - since).max(0);
    if waited >= rules.timeout.as_millis() as i64 {
        let why = format!(
            "{} did not answer within readiness.timeout ({}): last, {}",
            rules.url,
            humanize(rules.timeout.as_millis() as i64),
            answer.describe()
        );
        return record_failed(inner, env, stamps, why).await.map(Some);
    }
    let o = Observed { status: Status::Provisioning, url: Some(url.to_owned()), ..env.observed() };
    let event = (stamps.before_waiting_for() != stamps.now.waiting_for)
        .then(|| format!("stack ready; waiting for {} to answer", rules.url));
    stamps.save(inner, env).await?;
    record(inner, env, o, event.as_deref().map(|m| (EventKind::Waiting, m))).await?;
    let again = Duration::from_millis((waited / 4).max(0) as u64).clamp(PROBE_AGAIN_MIN, PROBE_AGAIN_MAX);
    Ok(Some(Action::Requeue(again)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeline_reads_as_the_push_to_ready_with_its_phases() {
        let mut t = Timeline::new(CommitSha::new(&"a".repeat(40)).expect("sha"), Some(1_000_000));
        assert_eq!(timeline_summary(&t), None);
        t.infrastructure_at = Some(1_000_000 + 160_000);
        assert_eq!(timeline_summary(&t).as_deref(), Some("so far: infrastructure 2m 40s"));
        t.artifact_at = Some(1_000_000 + 182_000);
        t.ready_at = Some(1_000_000 + 252_000);
        assert_eq!(
            timeline_summary(&t).as_deref(),
            Some("ready 4m 12s after the push: build 3m 2s, infrastructure 2m 40s alongside")
        );
        // The infrastructure after the build (a blueprint that waits with its whole stack).
        t.infrastructure_at = Some(1_000_000 + 230_000);
        assert_eq!(
            timeline_summary(&t).as_deref(),
            Some("ready 4m 12s after the push: build 3m 2s, infrastructure 3m 50s")
        );
    }
}
