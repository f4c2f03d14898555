//! One step of one environment toward its desired state. Each call reads the current desired state (and
//! GitHub's word on the branch) and the stack as AWS describes it, and does the one thing that moves them
//! closer: create, update, wait, delete, point DNS, or report.

use std::time::Duration;

use previewd_cloud::{OwnershipMarker, Stack, StackRequest, Template, UpdateOutcome};
use previewd_domain::plan::{
    self, BranchDecision, ConvergeStep, Evidence, GitHubAnswer, StackView, TeardownStep, Waits,
};
use previewd_domain::{CommitSha, Desired, RULE_PRIORITY_MAX, Stage, Status, app_stack_name, tag_value};
use previewd_github::BranchHead;
use previewd_render::{Context, Layer, LayerKind, TemplateKind};
use previewd_store::{Claim, EnvRecord, Observed, StoreError, now_ms};
use sha2::{Digest, Sha256};

use crate::settings_files::SETTINGS_FILE_MAX;
use crate::{Action, Inner, ReconcileError, RepoSetup, seed};

/// The file a branch commits to override settings of its own environment.
pub const BRANCH_SETTINGS_FILE: &str = ".previewd.toml";
pub(crate) const TAG_OWNER: &str = "previewd:owner";
pub(crate) const TAG_REPO: &str = "previewd:repo";
/// The branch for people ([`tag_value`]: lossy where the name holds characters tags refuse, or is long).
pub(crate) const TAG_BRANCH: &str = "previewd:branch";
/// The branch for machines: [`previewd_domain::BranchName::identity`], SHA-256 of the exact name.
pub(crate) const TAG_BRANCH_ID: &str = "previewd:branch-sha256";
pub(crate) const TAG_ENV: &str = "previewd:env";
pub(crate) const TAG_SHA: &str = "previewd:sha";
const TAG_STAGE: &str = "previewd:stage";
/// A hash of the rendered template: an unchanged template at an unchanged commit needs no update.
const TAG_TEMPLATE: &str = "previewd:template";

/// Stack states from which an update may start.
const UPDATABLE: &[&str] = &["CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"];

/// `kind` is set to the environment's status as the step found it (for the step metrics).
/// `env` is the record as the claim read it.
pub(crate) async fn reconcile(
    inner: &Inner,
    claim: &Claim,
    env: EnvRecord,
    kind: &mut &'static str,
) -> Result<Action, ReconcileError> {
    // Every write below carries the epoch of the record: it must be this claim's.
    if env.lease_epoch != claim.epoch {
        return Err(StoreError::Fenced { id: claim.id }.into());
    }
    *kind = env.status.as_str();
    let span = tracing::Span::current();
    span.record("repo", env.repo.as_str());
    span.record("branch", env.branch.as_str());
    span.record("env", env.env_key.as_str());
    span.record("stack", env.stack_name.as_str());
    tracing::debug!(status = %env.status, "reconcile");
    let Some(repo) = inner.setup.repos.get(&env.repo) else {
        return Err(ReconcileError::NeedsHuman(format!(
            "repository {} is no longer configured; its environments are left as they are",
            env.repo
        )));
    };

    if env.branch.is_no_infra() {
        let status = if env.desired == Desired::Absent { Status::Deleted } else { Status::Skipped };
        if env.status != status {
            let o = Observed { status, last_error: None, attempts: 0, ..env.observed() };
            let why = format!("branch name ends in -no-infra: {status}, never provisioned");
            inner.store.update_observed(env.fence(), &o, Some((status.as_str(), &why))).await?;
        }
        return Ok(Action::Done);
    }

    // Over the repository's cap, an environment waits until there is room, and GitHub is not asked. A new
    // one is almost always let in: its stack is looked at while its admission is decided. A skipped one,
    // or one whose repository was full at its last admission, is admitted first, and AWS is not asked
    // either unless it is let in.
    let unadmitted = env.desired != Desired::Absent
        && env.stack_id.is_none()
        && matches!(env.status, Status::Pending | Status::Skipped);
    let admit_first = unadmitted
        && (env.status == Status::Skipped || inner.full.lock().unwrap_or_else(|p| p.into_inner()).contains(&env.repo));
    let admission = if admit_first {
        let Some(admission) = admit(inner, &env, repo).await? else { return Ok(Action::Done) };
        Admitting::Admitted(admission)
    } else if unadmitted {
        Admitting::ToDecide
    } else {
        Admitting::No
    };

    // Absence was proven before the teardown began; its polls need not ask GitHub again.
    let tearing_down = env.desired == Desired::Absent && env.status == Status::Deleting;
    // The stack is looked at while the rest is decided and GitHub asked: no answer changes what another
    // asks, and nothing is changed in AWS before all are in. Each runs to its end (each may be writing to
    // the store): none is dropped for another's error. The stack's look goes first, so its request is on
    // its way before the others' are made.
    let deciding = admit_and_ask(inner, &env, repo, admission, tearing_down);
    let (looked, decided) = tokio::join!(observe_stack(inner, &env), deciding);
    // Over the cap: recorded `skipped`, and what the look found is of no use yet.
    let Some(answer) = decided? else { return Ok(Action::Done) };
    let (stack, sighted) = looked?;
    let now = now_ms();
    let missing_since = match answer {
        GitHubAnswer::NotFound => Some(env.missing_since.unwrap_or(now)),
        _ => env.missing_since,
    };
    let grace = inner.setup.reaper.grace.as_millis() as i64;
    let evidence = Evidence {
        desired: env.desired.clone(),
        desired_at: env.desired_at,
        pushed_at: env.pushed_at,
        missing_since,
        expired: env.expired_at.is_some(),
        keep: env.keep,
    };
    let waits = Waits { grace_ms: grace, api_lag_ms: inner.setup.tuning.api_lag.as_millis() as i64 };
    match plan::branch(&evidence, &answer, now, waits) {
        BranchDecision::Kept => {
            let why = format!("GitHub no longer shows branch {}; the environment is kept on purpose", env.branch);
            if env.last_error.as_deref() != Some(why.as_str()) {
                let o = Observed { last_error: Some(why.clone()), ..env.observed() };
                inner.store.update_observed(env.fence(), &o, Some(("kept", &why))).await?;
            }
            Ok(Action::Done)
        }
        BranchDecision::Absent => {
            if env.desired != Desired::Absent && env.expired_at.is_none() {
                let why = format!(
                    "GitHub: the branch does not exist (404), and no webhook or listing has shown it for {}",
                    humanize(grace)
                );
                if !inner.store.set_desired(env.id, env.desired_seq, &Desired::Absent, &why).await? {
                    return Ok(Action::Requeue(Duration::ZERO)); // a webhook came meanwhile: look again
                }
            }
            teardown(inner, &env, repo, stack).await
        }
        BranchDecision::NotYetProof { wait_ms } => {
            let why = format!(
                "GitHub does not show branch {} (404), but a webhook or listing said it exists too recently: \
                 not proof of absence yet; looking again (grace {})",
                env.branch,
                humanize(grace)
            );
            if env.last_error.as_deref() != Some(why.as_str()) {
                let o = Observed { last_error: Some(why.clone()), ..env.observed() };
                inner.store.update_observed(env.fence(), &o, Some(("absence", &why))).await?;
            }
            let t = &inner.setup.tuning;
            Ok(Action::Requeue(Duration::from_millis(wait_ms.max(0) as u64).clamp(t.poll_min, t.poll_max)))
        }
        BranchDecision::Present(sha) => {
            let truth = Desired::Present { sha: Some(sha.clone()) };
            if truth != env.desired {
                let why = format!("GitHub: the branch is at {}", sha.short());
                if !inner.store.set_desired(env.id, env.desired_seq, &truth, &why).await? {
                    return Ok(Action::Requeue(Duration::ZERO));
                }
            }
            // A sighting stands in for a look only before a teardown: anything else looks afresh.
            let stack = if sighted { inner.aws.describe_stack(&env.stack_name).await? } else { stack };
            converge(inner, &env, repo, &sha, stack).await
        }
    }
}

/// Where an environment stands with its repository's cap as a step begins.
enum Admitting {
    /// Already let in, or leaving: nothing to decide.
    No,
    /// Let in under the cap; to be recorded.
    Admitted(Admission),
    /// Not yet decided.
    ToDecide,
}

/// Decides `admission` if it is still to be decided, records it while GitHub is asked for the branch
/// (unless `tearing_down`), and returns GitHub's answer; `None` when the environment is over the cap.
async fn admit_and_ask(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    admission: Admitting,
    tearing_down: bool,
) -> Result<Option<GitHubAnswer>, ReconcileError> {
    let admission = match admission {
        Admitting::No => None,
        Admitting::Admitted(a) => Some(a),
        Admitting::ToDecide => match admit(inner, env, repo).await? {
            Some(a) => Some(a),
            None => return Ok(None),
        },
    };
    let admitting = async {
        match admission {
            Some(a) => a.record(inner, env).await,
            None => Ok(()),
        }
    };
    let asking = async { if tearing_down { Ok(GitHubAnswer::NotAsked) } else { ask_github(inner, env).await } };
    let (admitted, answer) = tokio::join!(admitting, asking);
    admitted?;
    Ok(Some(answer?))
}

/// Lets a new environment in under its repository's cap of live environments: `Some` with the
/// admission to record (`provisioning`, so the next admission counts it); over the cap it is recorded
/// `skipped` with the reason, and `None`. One admission at a time per repository in this process, until
/// it is recorded.
async fn admit(inner: &Inner, env: &EnvRecord, repo: &RepoSetup) -> Result<Option<Admission>, ReconcileError> {
    let lock = inner.admit_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(env.repo.clone()).or_default().clone();
    let one_at_a_time = lock.lock_owned().await;
    let live = inner.store.count_live(&env.repo, env.id).await?;
    let cap = repo.max_environments as i64;
    {
        let mut full = inner.full.lock().unwrap_or_else(|p| p.into_inner());
        if live < cap {
            full.remove(&env.repo);
        } else {
            full.insert(env.repo.clone());
        }
    }
    if live < cap {
        return Ok(Some(Admission { _one_at_a_time: one_at_a_time, live, cap }));
    }
    let why = format!(
        "not provisioned: {} already has {live} live environments, its cap (max_environments = {cap}); it \
         will be once one goes",
        env.repo
    );
    if env.status != Status::Skipped || env.last_error.as_deref() != Some(why.as_str()) {
        let o = Observed { status: Status::Skipped, last_error: Some(why.clone()), ..env.observed() };
        inner.store.update_observed(env.fence(), &o, Some(("skipped", &why))).await?;
    }
    Ok(None)
}

/// An environment let in under its repository's cap, to be recorded.
struct Admission {
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
    live: i64,
    cap: i64,
}

impl Admission {
    async fn record(self, inner: &Inner, env: &EnvRecord) -> Result<(), ReconcileError> {
        let o = Observed { status: Status::Provisioning, last_error: None, ..env.observed() };
        let why = format!("admitted: {} of {} live environments in {}", self.live + 1, self.cap, env.repo);
        Ok(inner.store.update_observed(env.fence(), &o, Some(("admitted", &why))).await?)
    }
}

impl Inner {
    // Every stack operation goes through these, so that what was seen of the stack before is known stale.

    // Marked before the call and again after it: a listing begun while the call was on its way may show
    // the stack as it was before.

    async fn create_stack(&self, req: &StackRequest) -> Result<String, previewd_cloud::CloudError> {
        self.sightings.acting(&req.name);
        let r = self.aws.create_stack(req).await;
        self.sightings.acting(&req.name);
        r
    }

    async fn update_stack(&self, req: &StackRequest) -> Result<UpdateOutcome, previewd_cloud::CloudError> {
        self.sightings.acting(&req.name);
        let r = self.aws.update_stack(req).await;
        self.sightings.acting(&req.name);
        r
    }

    /// By id, so a newer stack of the same name is never hit.
    async fn delete_stack(&self, stack: &Stack, token: &str) -> Result<(), previewd_cloud::CloudError> {
        self.sightings.acting(&stack.name);
        let r = self.aws.delete_stack(&stack.id, token, self.setup.stack_role_arn.as_deref()).await;
        self.sightings.acting(&stack.name);
        r
    }
}

/// The environment's stack as CloudFormation shows it, and whether a sighting stood in for the look. A
/// teardown about to begin starts from the last listing when it is young (see [`crate::sightings`]):
/// the reaper lists every stack just before it asks for one. Only an environment
/// whose record says its stack is settled (`ready` or `failed`: no replica is changing it) and is the
/// one listed may start so; the caller looks again if the step turns out not to be a teardown. An
/// environment waiting on CloudFormation looks together with the others waiting ([`Inner::look`]).
/// Anything else describes its stack at once.
async fn observe_stack(inner: &Inner, env: &EnvRecord) -> Result<(Option<Stack>, bool), ReconcileError> {
    let leaving = env.desired == Desired::Absent || env.expired_at.is_some();
    if leaving
        && matches!(env.status, Status::Ready | Status::Failed)
        && let Some(seen) = inner.sightings.settled(&env.stack_name, crate::sightings::SIGHTING_FRESH)
        && env.stack_id.as_ref().is_none_or(|id| *id == seen.id)
    {
        return Ok((Some(seen), true));
    }
    let waiting = env.status == Status::Deleting || (env.status == Status::Provisioning && env.stack_id.is_some());
    if waiting {
        return Ok((inner.look(&env.stack_name).await?, false));
    }
    Ok((inner.aws.describe_stack(&env.stack_name).await?, false))
}

/// Asks GitHub for the branch. A 404 is an answer only while GitHub still shows the repository: a token
/// that lost access must not tear every environment down. The first 404 is noted (the grace counts from
/// it); a branch seen again is no longer missing.
async fn ask_github(inner: &Inner, env: &EnvRecord) -> Result<GitHubAnswer, ReconcileError> {
    let absent = match inner.github.branch_head(&env.repo, &env.branch).await? {
        BranchHead::At(head) => {
            if env.missing_since.is_some() {
                inner.store.mark_seen(env.id).await?;
            }
            return Ok(GitHubAnswer::At(head));
        }
        BranchHead::Missing => inner.github.repo_visible(&env.repo).await?,
        // Renamed: gone under this name once a complete listing agrees (a 301 alone is one answer).
        BranchHead::Renamed(to) => {
            let listing = inner.github.list_branches(&env.repo).await?;
            if listing.branches.iter().any(|(b, _)| *b == env.branch) {
                return Err(ReconcileError::Transient(format!(
                    "GitHub says {} was renamed to {} but still lists it: looking again later",
                    env.branch, to
                )));
            }
            true
        }
    };
    if !absent {
        return Err(ReconcileError::Transient(format!(
            "GitHub does not show repository {} to previewd's token (404): check its access; nothing is changed meanwhile",
            env.repo
        )));
    }
    if env.missing_since.is_none() {
        inner.store.mark_missing(env.id, now_ms()).await?;
    }
    Ok(GitHubAnswer::NotFound)
}

/// The priority a listener rule could not take (`Priority 'N' is currently in use … PriorityInUse`), if that
/// is why the stack rolled back: the stack's own reason names only the resource, its events the cause.
async fn priority_in_use(inner: &Inner, stack: &Stack) -> Result<Option<i64>, ReconcileError> {
    let events = inner.aws.stack_events(&stack.id).await?;
    Ok(events
        .into_iter()
        .filter(|e| e.status.ends_with("_FAILED") && e.resource_type == "AWS::ElasticLoadBalancingV2::ListenerRule")
        .filter_map(|e| e.reason)
        .filter(|r| r.contains("PriorityInUse"))
        .find_map(|r| r.split('\'').nth(1)?.parse().ok()))
}

/// A duration in milliseconds as people write it (`10m`, `90s`).
pub(crate) fn humanize(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
}

/// Counts one more stack operation for the current desired state, `done` having been tried; once
/// `max_stack_attempts` are spent a person must look, and the error says what kept happening and what to do.
fn next_attempt(inner: &Inner, done: i64, stack: &Stack, what: &str, advice: &str) -> Result<i64, ReconcileError> {
    if done < inner.setup.tuning.max_stack_attempts {
        return Ok(done + 1);
    }
    Err(ReconcileError::NeedsHuman(format!(
        "stack {}: {what} {done} times (last reason: {}); {advice}",
        stack.name,
        stack.reason.as_deref().unwrap_or(&stack.status)
    )))
}

/// The gap before the next look at a stack operation: a quarter of the time since the environment last
/// changed, between the configured bounds.
fn poll_delay(inner: &Inner, env: &EnvRecord) -> Duration {
    let t = &inner.setup.tuning;
    let elapsed = Duration::from_millis((now_ms() - env.updated_at).max(0) as u64);
    (elapsed / 4).clamp(t.poll_min, t.poll_max)
}

async fn record(
    inner: &Inner,
    env: &EnvRecord,
    o: Observed,
    event: Option<(&str, &str)>,
) -> Result<(), ReconcileError> {
    if o != env.observed() || event.is_some() {
        inner.store.update_observed(env.fence(), &o, event).await?;
    }
    Ok(())
}

pub(crate) async fn zone_id(inner: &Inner, repo: &RepoSetup) -> Result<String, ReconcileError> {
    let zone = repo.zone.as_str();
    if let Some(id) = inner.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).get(zone) {
        return Ok(id.clone());
    }
    let id = inner.aws.hosted_zone_id(zone).await?;
    inner.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(zone.to_owned(), id.clone());
    Ok(id)
}

/// DNS record first, then every bucket emptied (in bounded steps), then DeleteStack, then wait for it to be
/// gone. Works whether the create finished, failed halfway, or never ran.
async fn teardown(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    stack: Option<Stack>,
) -> Result<Action, ReconcileError> {
    if env.status == Status::Deleted && stack.is_none() {
        return Ok(Action::Done); // nothing left, and nothing to record again
    }
    let view = stack.as_ref().map(|s| stack_view(inner, s, false));
    let attempts = if env.status == Status::Deleting { env.attempts } else { 0 };
    let step = plan::teardown(view.as_ref(), attempts, inner.setup.tuning.max_stack_attempts);
    if let (TeardownStep::Refuse(why), Some(s)) = (&step, &stack) {
        let reason = s.reason.as_deref().unwrap_or(&s.status);
        return Err(ReconcileError::NeedsHuman(format!("stack {}: {why} (last reason: {reason})", s.name)));
    }
    // The record went before the status became `deleting`: its later steps need not look at DNS again.
    let was = env.status;
    let deleting;
    let env = if env.status != Status::Deleting {
        remove_dns(inner, env, repo, stack.as_ref()).await?;
        // What the store holds now: the writes below compare against it.
        deleting = EnvRecord { status: Status::Deleting, url: None, ..env.clone() };
        &deleting
    } else {
        env
    };
    let (stack, retry) = match (step, stack) {
        (TeardownStep::Delete { retry }, Some(stack)) => (stack, retry),
        (TeardownStep::Wait, Some(_)) => {
            let o = Observed { status: Status::Deleting, url: None, ..env.observed() };
            record(inner, env, o, None).await?;
            return Ok(Action::Requeue(poll_delay(inner, env)));
        }
        // No stack (a refusal returned above): the environment is gone.
        _ => {
            let o = Observed {
                status: Status::Deleted,
                url: None,
                stack_id: None,
                last_error: None,
                attempts: 0,
                ..env.observed()
            };
            let event = (was != Status::Deleted).then_some(("deleted", "the branch is gone and so is its environment"));
            record(inner, env, o, event).await?;
            return Ok(Action::Done);
        }
    };
    // After a refused deletion, look harder (see `empty_buckets`).
    let Some(emptied) = empty_buckets(inner, env, &stack, retry).await? else {
        return Ok(Action::Requeue(Duration::ZERO));
    };
    let attempts = if retry { attempts + 1 } else { attempts };
    let request = token("delete", &[&stack.id, &attempts.to_string()]);
    inner.delete_stack(&stack, &request).await?;
    let why = if retry {
        format!("deleting stack {} again after DELETE_FAILED ({emptied} objects emptied)", stack.name)
    } else {
        format!("deleting stack {} ({emptied} objects emptied)", stack.name)
    };
    let o = Observed { status: Status::Deleting, url: None, attempts, ..env.observed() };
    inner.store.update_observed(env.fence(), &o, Some(("deleting", &why))).await?;
    Ok(Action::Requeue(inner.setup.tuning.poll_min))
}

/// Removes the environment's DNS name (when its marker is ours) and records the environment as
/// `deleting`, so later steps of the teardown skip DNS. A name that was pointed at the stack's endpoint
/// is deleted as it was written, without reading it first.
async fn remove_dns(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    stack: Option<&Stack>,
) -> Result<(), ReconcileError> {
    let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
    let pointed = stack.and_then(|s| s.outputs.get("Endpoint")).filter(|_| env.url.is_some());
    match zone_id(inner, repo).await {
        Ok(zone) => match remove_name(inner, &zone, &env.dns_name, pointed.map(String::as_str), &marker).await {
            Ok(true) => inner.store.add_event(env.id, "dns", &format!("removed {}", env.dns_name)).await?,
            Ok(false) => {}
            Err(e) if e.code() == "NotOwned" => tracing::warn!(error = %e, "DNS record left alone"),
            // A record changed between reading and deleting it: look again later, never give up on teardown.
            Err(e) => return Err(ReconcileError::Transient(e.to_string())),
        },
        // No zone, so no record of ours: the stack still goes.
        Err(e) if e.needs_human() => tracing::warn!(error = ?e, "no hosted zone: no DNS record to remove"),
        Err(e) => return Err(e),
    }
    let o = Observed { status: Status::Deleting, url: None, ..env.observed() };
    record(inner, env, o, None).await
}

/// Removes `name` and its marker when the marker is ours, whether or not they exist. With the `target`
/// previewd pointed it at, the pair is deleted as written, in one request shared with other names of
/// the zone; a name not as written (changed since, or never made) is read first, as otherwise.
/// `Ok(true)` when something was removed.
pub(crate) async fn remove_name(
    inner: &Inner,
    zone: &str,
    name: &str,
    target: Option<&str>,
    marker: &OwnershipMarker,
) -> Result<bool, previewd_cloud::CloudError> {
    if let Some(target) = target {
        match inner.change_dns(zone, previewd_cloud::DnsChange::deletion(name, target, marker)?).await {
            Ok(()) => return Ok(true),
            Err(e) if previewd_cloud::MISMATCHED_CHANGE_CODES.contains(&e.code()) => {}
            Err(e) => return Err(e),
        }
    }
    inner.aws.delete_dns(zone, name, marker).await
}

/// Takes one bounded step of emptying the buckets the stack's deletion takes with it (a bucket its
/// template retains keeps what it holds). `after_failure`: a deletion was refused before, so the
/// buckets are read from CloudFormation rather than the stack's own list, and unfinished uploads are
/// aborted too. `Some(objects deleted)` once every bucket is empty; `None` while more remains (the step
/// is recorded, and the reconciler comes straight back).
async fn empty_buckets(
    inner: &Inner,
    env: &EnvRecord,
    stack: &Stack,
    after_failure: bool,
) -> Result<Option<usize>, ReconcileError> {
    let mut emptied = 0;
    for bucket in inner.aws.buckets_to_empty(stack, !after_failure).await? {
        let batches = inner.setup.tuning.empty_batches_per_step;
        let report = inner.aws.empty_bucket(&bucket, batches, after_failure).await?;
        emptied += report.versions_deleted;
        if !report.done {
            let why = format!(
                "emptying bucket {bucket}: {} object versions deleted in this step, more remain",
                report.versions_deleted
            );
            inner.store.add_event(env.id, "emptying", &why).await?;
            return Ok(None);
        }
    }
    Ok(Some(emptied))
}

fn stack_view(inner: &Inner, s: &Stack, current: bool) -> StackView {
    StackView { status: s.stack_status(), owned: s.tag(TAG_OWNER) == Some(inner.setup.owner.as_str()), current }
}

/// Reads the branch's own settings file at `sha`: absent means no overrides.
/// A file at a commit never changes, so it is fetched once per commit (and a settled environment asks
/// GitHub nothing).
async fn branch_layer(inner: &Inner, env: &EnvRecord, sha: &CommitSha) -> Result<Option<Layer>, ReconcileError> {
    let cached = inner.settings_files.lock().unwrap_or_else(|p| p.into_inner()).get(&env.repo, sha).cloned();
    let text = match cached {
        Some(text) => text,
        None => {
            // A refusal (too large, a folder) is an error and is not remembered.
            let text = inner.github.file_at(&env.repo, BRANCH_SETTINGS_FILE, sha, SETTINGS_FILE_MAX).await?;
            let mut files = inner.settings_files.lock().unwrap_or_else(|p| p.into_inner());
            files.insert(env.repo.clone(), sha.clone(), text.clone());
            text
        }
    };
    let Some(text) = text else { return Ok(None) };
    let source = format!("{BRANCH_SETTINGS_FILE} at {}", sha.short());
    Ok(Some(Layer::parse(LayerKind::Branch, source, &text)?))
}

fn template_hash(body: &str) -> String {
    format!("{:x}", Sha256::digest(body.as_bytes()))[..16].to_owned()
}

async fn template(inner: &Inner, key: &str, body: String) -> Result<Template, ReconcileError> {
    if body.len() <= previewd_render::TEMPLATE_BODY_MAX {
        return Ok(Template::Body(body));
    }
    let Some(bucket) = &inner.setup.template_bucket else {
        return Err(ReconcileError::NeedsHuman(format!(
            "the template is {} bytes, over CloudFormation's 51,200-byte TemplateBody limit: configure template_bucket",
            body.len()
        )));
    };
    Ok(Template::Url(inner.aws.upload_template(bucket, key, body).await?))
}

async fn converge(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    sha: &CommitSha,
    stack: Option<Stack>,
) -> Result<Action, ReconcileError> {
    let max = inner.setup.tuning.max_stack_attempts;
    let refuse = |s: &Stack, why: &str| {
        ReconcileError::NeedsHuman(format!(
            "stack {} is {}: {why} ({})",
            s.name,
            s.status,
            s.reason.as_deref().unwrap_or("no reason given")
        ))
    };
    // Waiting and refusing need neither the settings nor a rendered template.
    if let Some(s) = &stack {
        match plan::converge(Some(&stack_view(inner, s, false)), env.attempts, max) {
            ConvergeStep::Wait => {
                let o = Observed { status: Status::Provisioning, stack_id: Some(s.id.clone()), ..env.observed() };
                record(inner, env, o, None).await?;
                return Ok(Action::Requeue(poll_delay(inner, env)));
            }
            ConvergeStep::Refuse(why) => return Err(refuse(s, &why)),
            _ => {}
        }
    }
    let owner = inner.setup.owner.as_str();
    let blueprint = inner
        .blueprints
        .get(&repo.blueprint)
        .ok_or_else(|| ReconcileError::NeedsHuman(format!("blueprint {} is not loaded", repo.blueprint)))?;
    // The settings first: a branch whose settings are wrong changes nothing in AWS, not even the
    // application stack.
    let own = branch_layer(inner, env, sha).await?;
    let settings = blueprint.environment_settings(Stage::Staging, &env.branch, &repo.layers, own.as_ref())?;

    // The application stack comes first: the environment imports from it.
    let app_name = app_stack_name(&env.repo, Stage::Staging);
    let app_ctx = Context::application(owner, &env.repo, Stage::Staging, &app_name);
    if let Some(action) = ensure_application(inner, env, repo, &app_name, &app_ctx).await? {
        return Ok(action);
    }

    let names = env.names(&inner.setup.owner);
    let hint = i64::from(names.env_key.rule_priority_hint());
    let priority = inner.store.allocate_priority(env.id, &env.repo, hint, i64::from(RULE_PRIORITY_MAX)).await?;
    let ctx = app_ctx.with_environment(env.branch.as_str(), sha.as_str(), &names, priority as u32);
    let rendered = blueprint.render(TemplateKind::Environment, &settings, &ctx)?;
    let hash = template_hash(&rendered.body);
    let tags = env_tags(owner, env, sha, &hash);
    // Current when every tag is as this render would set it: a stack made before a tag was added (the
    // branch's identity) gains it at its next update.
    let current = stack.as_ref().is_some_and(|s| tags.iter().all(|(k, v)| s.tag(k) == Some(v.as_str())));
    let view = stack.as_ref().map(|s| stack_view(inner, s, current));

    match (plan::converge(view.as_ref(), env.attempts, max), stack) {
        (ConvergeStep::Create, _) => {
            // Asked before the create, so a crash right after it cannot lose the seeding; from the first
            // step, whatever an earlier stack of this environment got through.
            if !blueprint.seed.is_empty() {
                let why = format!("a new stack: {} seed steps will run once it is created", blueprint.seed.len());
                inner.store.request_seed(env.id, &why).await?;
            }
            let template = template(inner, &format!("{}/{hash}.json", env.stack_name), rendered.body).await?;
            let req = StackRequest {
                name: env.stack_name.clone(),
                template,
                tags,
                // A stack deleted behind previewd's back is a new create (the old id is part of it).
                token: token("create", &[&hash, env.stack_id.as_deref().unwrap_or(""), &env.attempts.to_string()]),
                role_arn: inner.setup.stack_role_arn.clone(),
            };
            let stack_id = match inner.create_stack(&req).await {
                Ok(id) => Some(id),
                // Created by an earlier attempt whose answer was lost: look again.
                Err(e) if e.code() == "AlreadyExistsException" => {
                    return Ok(Action::Requeue(inner.setup.tuning.poll_min));
                }
                Err(e) => return Err(e.into()),
            };
            let o = Observed { status: Status::Provisioning, stack_id, last_error: None, ..env.observed() };
            let why = format!("creating stack {} at {}", env.stack_name, sha.short());
            inner.store.update_observed(env.fence(), &o, Some(("create", &why))).await?;
            Ok(Action::Requeue(inner.setup.tuning.poll_min))
        }
        (ConvergeStep::DeleteAfterRollback, Some(stack)) => {
            let Some(_) = empty_buckets(inner, env, &stack, true).await? else {
                return Ok(Action::Requeue(Duration::ZERO));
            };
            // A listener rule priority something else holds: the next free one, and this try not counted;
            // only when the priority taken is the environment's own (a template that does not use it
            // moves nothing, and counts). Asked once the buckets are empty, right before the delete.
            let moved = match priority_in_use(inner, &stack).await? {
                Some(taken) if taken == priority => {
                    let max = i64::from(RULE_PRIORITY_MAX);
                    let next = inner.store.move_priority(env.id, &env.repo, priority, max).await?;
                    let why = format!(
                        "listener rule priority {priority} is held by a rule previewd did not make: moving to {next}"
                    );
                    inner.store.add_event(env.id, "priority", &why).await?;
                    true
                }
                _ => false,
            };
            inner.delete_stack(&stack, &token("delete-rollback", &[&stack.id])).await?;
            let attempts = if moved { env.attempts } else { env.attempts + 1 };
            let o = Observed { status: Status::Provisioning, attempts, ..env.observed() };
            let why = format!(
                "create rolled back ({}); deleting to create again",
                stack.reason.as_deref().unwrap_or("no reason given")
            );
            inner.store.update_observed(env.fence(), &o, Some(("rollback", &why))).await?;
            Ok(Action::Requeue(inner.setup.tuning.poll_min))
        }
        (ConvergeStep::Update { counted }, Some(stack)) => {
            let attempts = if counted { env.attempts + 1 } else { env.attempts };
            let template = template(inner, &format!("{}/{hash}.json", env.stack_name), rendered.body).await?;
            let req = StackRequest {
                name: env.stack_name.clone(),
                template,
                tags,
                token: token("update", &[&stack.id, &hash, sha.as_str(), &attempts.to_string()]),
                role_arn: inner.setup.stack_role_arn.clone(),
            };
            if inner.update_stack(&req).await? == UpdateOutcome::Started {
                let o = Observed {
                    status: Status::Provisioning,
                    stack_id: Some(stack.id.clone()),
                    attempts,
                    ..env.observed()
                };
                let why = format!("updating stack {} to {}", stack.name, sha.short());
                inner.store.update_observed(env.fence(), &o, Some(("update", &why))).await?;
                return Ok(Action::Requeue(inner.setup.tuning.poll_min));
            }
            inner.store.add_event(env.id, "update", "no updates are to be performed: the stack is up to date").await?;
            point_dns(inner, env, repo, sha, &stack, blueprint, &settings).await
        }
        (ConvergeStep::PointDns, Some(stack)) => point_dns(inner, env, repo, sha, &stack, blueprint, &settings).await,
        (ConvergeStep::Refuse(why), Some(stack)) => Err(refuse(&stack, &why)),
        (ConvergeStep::Wait, _) => Ok(Action::Requeue(poll_delay(inner, env))),
        (step, None) => Err(ReconcileError::NeedsHuman(format!("{step:?} planned for a stack that does not exist"))),
    }
}

/// The stack is what was asked for: point the name at it (unless it already points there), seed a new
/// environment, and call it ready.
async fn point_dns(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    sha: &CommitSha,
    stack: &Stack,
    blueprint: &previewd_render::Blueprint,
    settings: &previewd_render::Settings,
) -> Result<Action, ReconcileError> {
    let endpoint = stack.outputs.get("Endpoint").ok_or_else(|| {
        ReconcileError::NeedsHuman(format!("stack {} has no Endpoint output for the DNS record", stack.name))
    })?;
    let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
    inner.aws.upsert_dns(&zone_id(inner, repo).await?, &env.dns_name, endpoint, &marker).await?;
    let url = stack.outputs.get("Url").cloned().unwrap_or_else(|| format!("https://{}", env.dns_name));
    if env.seed_pending {
        if env.seed_step == 0 && env.seed_log.is_empty() && env.seed_task.is_none() {
            let o = Observed { status: Status::Provisioning, url: Some(url.clone()), ..env.observed() };
            record(inner, env, o, Some(("seed", "the stack is ready: seeding"))).await?;
        }
        let cx = seed::SeedContext { env, blueprint, settings, outputs: &stack.outputs, sha, url: &url };
        if let Some(action) = seed::step(inner, &cx).await? {
            return Ok(action);
        }
    }
    let o = Observed {
        status: Status::Ready,
        deployed_sha: Some(sha.clone()),
        stack_id: Some(stack.id.clone()),
        url: Some(url.clone()),
        last_error: None,
        attempts: 0,
        retries: 0,
    };
    let event = (env.status != Status::Ready || env.deployed_sha.as_ref() != Some(sha))
        .then(|| format!("ready at {}: {url}", sha.short()));
    if event.is_some()
        && let Some(pushed) = env.pushed_at
    {
        previewd_metrics::METRICS.push_to_ready_seconds.observe((now_ms() - pushed).max(0) as f64 / 1000.0);
    }
    record(inner, env, o, event.as_deref().map(|m| ("ready", m))).await?;
    Ok(Action::Done)
}

/// Creates or updates the repository's application stack; `Some` while it is not ready for use.
async fn ensure_application(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    app_name: &str,
    ctx: &Context,
) -> Result<Option<Action>, ReconcileError> {
    let owner = inner.setup.owner.as_str();
    let lock = inner.app_locks.lock().unwrap_or_else(|p| p.into_inner()).entry(env.repo.clone()).or_default().clone();
    let _one_at_a_time = lock.lock().await;
    let blueprint = &inner.blueprints[&repo.blueprint];
    let settings = blueprint.application_settings(Stage::Staging, &repo.layers)?;
    let rendered = blueprint.render(TemplateKind::Application, &settings, ctx)?;
    let hash = template_hash(&rendered.body);
    let tags = vec![
        (TAG_OWNER.to_owned(), owner.to_owned()),
        (TAG_REPO.to_owned(), tag_value(env.repo.as_str())),
        (TAG_STAGE.to_owned(), Stage::Staging.as_str().to_owned()),
        (TAG_TEMPLATE.to_owned(), hash.clone()),
    ];
    let waiting = Some(Action::Requeue(poll_delay(inner, env)));
    let app = inner.aws.describe_stack(app_name).await?;
    let Some(app) = app else {
        // One replica creates it; the others look again once it exists.
        let Some(lock) = AppLock::take(inner, env).await? else { return Ok(waiting) };
        let created = async {
            if inner.aws.describe_stack(app_name).await?.is_some() {
                return Ok(()); // made meanwhile, by the replica that held the lock before
            }
            let template = template(inner, &format!("{app_name}/{hash}.json"), rendered.body).await?;
            let req = StackRequest {
                name: app_name.to_owned(),
                template,
                tags,
                token: token("app-create", &[app_name, &hash]),
                role_arn: inner.setup.stack_role_arn.clone(),
            };
            match inner.create_stack(&req).await {
                Ok(_) => {
                    let o = Observed { status: Status::Provisioning, ..env.observed() };
                    let why = format!("creating application stack {app_name}");
                    inner.store.update_observed(env.fence(), &o, Some(("create", &why))).await?;
                }
                Err(e) if e.code() == "AlreadyExistsException" => {} // made by a previewd without this lock
                Err(e) => return Err(ReconcileError::from(e)),
            }
            Ok(())
        }
        .await;
        lock.release(inner).await;
        created?;
        return Ok(waiting);
    };
    if app.tag(TAG_OWNER) != Some(owner) {
        return Err(ReconcileError::NeedsHuman(format!(
            "application stack {app_name} exists but was not created by this previewd; it is never touched"
        )));
    }
    if app.in_progress() {
        return Ok(waiting);
    }
    match app.status.as_str() {
        s if UPDATABLE.contains(&s) => {
            if app.tag(TAG_TEMPLATE) == Some(hash.as_str()) {
                return Ok(None);
            }
            if s == "UPDATE_ROLLBACK_COMPLETE" {
                count_app_attempt(inner, env, &app, "rolled back an update").await?;
            }
            // One replica updates it; the others look again once the update shows.
            let Some(lock) = AppLock::take(inner, env).await? else { return Ok(waiting) };
            let updated = async {
                let template = template(inner, &format!("{app_name}/{hash}.json"), rendered.body).await?;
                let req = StackRequest {
                    name: app_name.to_owned(),
                    template,
                    tags,
                    token: token("app-update", &[&app.id, &hash, &app.status, &env.attempts.to_string()]),
                    role_arn: inner.setup.stack_role_arn.clone(),
                };
                match inner.update_stack(&req).await? {
                    UpdateOutcome::Started => {
                        let why = format!("updating application stack {app_name}");
                        inner.store.add_event(env.id, "update", &why).await?;
                        Ok(waiting)
                    }
                    UpdateOutcome::NoChanges => Ok(None),
                }
            }
            .await;
            lock.release(inner).await;
            updated
        }
        "ROLLBACK_COMPLETE" => {
            count_app_attempt(inner, env, &app, "failed to create").await?;
            let request = token("app-delete", &[&app.id]);
            inner.delete_stack(&app, &request).await?;
            let why = format!(
                "application stack {app_name} failed to create ({}); deleting to create again",
                app.reason.as_deref().unwrap_or("no reason given")
            );
            inner.store.add_event(env.id, "rollback", &why).await?;
            Ok(waiting)
        }
        other => Err(ReconcileError::NeedsHuman(format!(
            "application stack {app_name} is {other}: {}",
            app.reason.as_deref().unwrap_or("no reason given")
        ))),
    }
}

/// The store lock that lets one replica at a time create or update a repository's application stack
/// (this process's own workers take turns on `Inner::app_locks` first).
struct AppLock {
    name: String,
}

impl AppLock {
    /// `None` while another replica holds it. It lasts a lease, and the work under it takes one call.
    async fn take(inner: &Inner, env: &EnvRecord) -> Result<Option<Self>, ReconcileError> {
        let name = format!("app-stack:{}", env.repo);
        let until = now_ms() + inner.setup.tuning.lease.as_millis() as i64;
        Ok(inner.store.try_lock(&name, &inner.setup.instance, until).await?.then_some(Self { name }))
    }

    async fn release(self, inner: &Inner) {
        if let Err(e) = inner.store.unlock(&self.name, &inner.setup.instance).await {
            tracing::warn!(error = ?e, lock = self.name, "cannot release a lock; it expires by itself");
        }
    }
}

/// Counts one more try at a troubled application stack against the environment, and gives up (for a
/// person to look) once `max_stack_attempts` is spent.
async fn count_app_attempt(inner: &Inner, env: &EnvRecord, app: &Stack, what: &str) -> Result<(), ReconcileError> {
    let advice = "this application stack is shared by the repository's environments: look at its events";
    let attempts = next_attempt(inner, env.attempts, app, what, advice)?;
    inner.store.update_observed(env.fence(), &Observed { attempts, ..env.observed() }, None).await?;
    Ok(())
}

fn env_tags(owner: &str, env: &EnvRecord, sha: &CommitSha, hash: &str) -> Vec<(String, String)> {
    vec![
        (TAG_OWNER.to_owned(), owner.to_owned()),
        (TAG_REPO.to_owned(), tag_value(env.repo.as_str())),
        (TAG_BRANCH.to_owned(), tag_value(env.branch.as_str())),
        (TAG_BRANCH_ID.to_owned(), env.branch.identity()),
        (TAG_ENV.to_owned(), env.env_key.to_string()),
        (TAG_SHA.to_owned(), sha.to_string()),
        (TAG_TEMPLATE.to_owned(), hash.to_owned()),
    ]
}

/// A ClientRequestToken, new for every request previewd makes (the SDK's own retries of one request
/// reuse it). CloudFormation silently ignores a request whose token it has seen, so a token is never
/// reused for another request; a retry after a lost answer is found by describing the stack first.
fn token(op: &str, request: &[&str]) -> String {
    // The same for the same request (what it asks of which stack, at which attempt), so a step repeated
    // after a crash lost its answer is a retry CloudFormation recognises and does not do twice; any other
    // request gets another token, since CloudFormation ignores a request whose token it has seen.
    let digest = Sha256::digest(request.join("\n").as_bytes());
    format!("previewd-{op}-{}", &hex::encode(digest)[..24])
}
