//! One step of one environment toward its desired state. Each call reads the current desired state (and
//! GitHub's word on the branch) and the stack as AWS describes it, and does the one thing that moves them
//! closer: create, update, wait, delete, point DNS, or report.

use std::time::Duration;

use previewd_cloud::{OwnershipMarker, Stack, StackRequest, Template, UpdateOutcome};
use previewd_domain::{CommitSha, Desired, EnvNames, RULE_PRIORITY_MAX, Stage, Status, app_stack_name, tag_value};
use previewd_render::{Context, Layer, LayerKind, TemplateKind};
use previewd_store::{EnvRecord, Observed, now_ms};
use sha2::{Digest, Sha256};

use crate::{Action, Inner, ReconcileError, RepoSetup};

/// The file a branch commits to override settings of its own environment.
pub const BRANCH_SETTINGS_FILE: &str = ".previewd.toml";

pub(crate) const TAG_OWNER: &str = "previewd:owner";
const TAG_REPO: &str = "previewd:repo";
const TAG_BRANCH: &str = "previewd:branch";
const TAG_ENV: &str = "previewd:env";
const TAG_SHA: &str = "previewd:sha";
const TAG_STAGE: &str = "previewd:stage";
/// A hash of the rendered template: an unchanged template at an unchanged commit needs no update.
const TAG_TEMPLATE: &str = "previewd:template";

/// Stack states from which an update may start.
const UPDATABLE: &[&str] = &["CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"];

pub(crate) async fn reconcile(inner: &Inner, id: i64) -> Result<Action, ReconcileError> {
    let Some(env) = inner.store.get(id).await? else { return Ok(Action::Done) };
    tracing::debug!(repo = %env.repo, branch = %env.branch, env = %env.env_key, stack = %env.stack_name, "reconcile");
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
            inner.store.update_observed(id, &o, Some((status.as_str(), &why))).await?;
        }
        return Ok(Action::Done);
    }

    // Absence was confirmed before the teardown began; its polls need not ask GitHub again.
    let tearing_down = env.desired == Desired::Absent && env.status == Status::Deleting;
    let head = if tearing_down { None } else { confirm_with_github(inner, &env).await? };
    let stack = inner.aws.describe_stack(&env.stack_name).await?;
    if let Some(s) = &stack
        && s.tag(TAG_OWNER) != Some(inner.setup.owner.as_str())
    {
        return Err(ReconcileError::NeedsHuman(format!(
            "stack {} exists but was not created by this previewd (owner tag {:?}); it is never touched: remove or rename it",
            s.name,
            s.tag(TAG_OWNER)
        )));
    }
    match head {
        None => teardown(inner, &env, repo, stack).await,
        Some(sha) => converge(inner, &env, repo, &sha, stack).await,
    }
}

/// GitHub's answer is the truth, both ways: a stale push must not resurrect a deleted branch, a late
/// `delete` must not remove a branch that was created again, and a missed push must not leave an old
/// commit deployed. A 404 for the branch proves absence only while GitHub still shows the repository:
/// a token that lost access must not tear every environment down. Returns the branch's head, `None` when
/// it is gone, and records any difference as the new desired state.
async fn confirm_with_github(inner: &Inner, env: &EnvRecord) -> Result<Option<CommitSha>, ReconcileError> {
    let head = match inner.github.branch_head(&env.repo, &env.branch).await? {
        Some(head) => Some(head),
        None if inner.github.repo_visible(&env.repo).await? => None,
        None => {
            return Err(ReconcileError::Transient(format!(
                "GitHub does not show repository {} to previewd's token (404): check its access; nothing is changed meanwhile",
                env.repo
            )));
        }
    };
    let (truth, why) = match &head {
        None => (Desired::Absent, "GitHub: the branch does not exist".to_owned()),
        Some(sha) => (Desired::Present { sha: Some(sha.clone()) }, format!("GitHub: the branch is at {}", sha.short())),
    };
    if truth != env.desired {
        inner.store.set_desired(env.id, &truth, &why).await?;
    }
    Ok(head)
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
        inner.store.update_observed(env.id, &o, event).await?;
    }
    Ok(())
}

async fn zone_id(inner: &Inner, repo: &RepoSetup) -> Result<String, ReconcileError> {
    let zone = repo.zone.as_str();
    if let Some(id) = inner.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).get(zone) {
        return Ok(id.clone());
    }
    let id = inner.aws.hosted_zone_id(zone).await?;
    inner.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(zone.to_owned(), id.clone());
    Ok(id)
}

/// DNS record first, then every bucket emptied, then DeleteStack, then wait for it to be gone. Works
/// whether the create finished, failed halfway, or never ran.
async fn teardown(
    inner: &Inner,
    env: &EnvRecord,
    repo: &RepoSetup,
    stack: Option<Stack>,
) -> Result<Action, ReconcileError> {
    let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
    // The record went before the status became `deleting`: its polls need not look at DNS again.
    let dns_done = env.status == Status::Deleting;
    match if dns_done { Ok(None) } else { zone_id(inner, repo).await.map(Some) } {
        Ok(None) => {}
        Ok(Some(zone)) => match inner.aws.delete_dns(&zone, &env.dns_name, &marker).await {
            Ok(true) => inner.store.add_event(env.id, "dns", &format!("removed {}", env.dns_name)).await?,
            Ok(false) => {}
            Err(e) if e.code() == "NotOwned" => tracing::warn!(error = %e, "DNS record left alone"),
            // A record changed between reading and deleting it: look again later, never give up on teardown.
            Err(e) => return Err(ReconcileError::Transient(e.to_string())),
        },
        // No zone, so no record of ours: the stack still goes.
        Err(ReconcileError::NeedsHuman(e)) => tracing::warn!(error = %e, "no hosted zone: no DNS record to remove"),
        Err(e) => return Err(e),
    }
    let Some(stack) = stack else {
        let o = Observed { status: Status::Deleted, url: None, last_error: None, attempts: 0, ..env.observed() };
        let event =
            (env.status != Status::Deleted).then_some(("deleted", "the branch is gone and so is its environment"));
        record(inner, env, o, event).await?;
        return Ok(Action::Done);
    };
    if stack.in_progress() {
        // Deletion wins over a create or update under way, once CloudFormation lets go of the stack.
        let o = Observed { status: Status::Deleting, ..env.observed() };
        record(inner, env, o, None).await?;
        return Ok(Action::Requeue(poll_delay(inner, env)));
    }
    let retry = stack.status == "DELETE_FAILED";
    let mut attempts = if env.status == Status::Deleting { env.attempts } else { 0 };
    if retry {
        let advice = "remove what blocks it; previewd tries again at every resync";
        attempts = next_attempt(inner, attempts, &stack, "could not be deleted", advice)?;
    }
    let mut emptied = 0;
    for bucket in inner.aws.stack_resources(&stack.id, "AWS::S3::Bucket").await? {
        emptied += inner.aws.empty_bucket(&bucket).await?.versions_deleted;
    }
    inner.aws.delete_stack(&stack.id, &token("delete", env.id)).await?;
    let why = if retry {
        format!("deleting stack {} again after DELETE_FAILED ({emptied} objects emptied)", stack.name)
    } else {
        format!("deleting stack {} ({emptied} objects emptied)", stack.name)
    };
    let o = Observed { status: Status::Deleting, url: None, attempts, ..env.observed() };
    inner.store.update_observed(env.id, &o, Some(("deleting", &why))).await?;
    Ok(Action::Requeue(inner.setup.tuning.poll_min))
}

/// Reads the branch's own settings file at `sha`: absent means no overrides.
async fn branch_layer(inner: &Inner, env: &EnvRecord, sha: &CommitSha) -> Result<Option<Layer>, ReconcileError> {
    let Some(text) = inner.github.file_at(&env.repo, BRANCH_SETTINGS_FILE, sha).await? else { return Ok(None) };
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
    if let Some(s) = &stack
        && s.in_progress()
    {
        // CloudFormation is still working: nothing to render or fetch until it is done.
        let o = Observed { status: Status::Provisioning, stack_id: Some(s.id.clone()), ..env.observed() };
        record(inner, env, o, None).await?;
        return Ok(Action::Requeue(poll_delay(inner, env)));
    }
    let owner = inner.setup.owner.as_str();
    let blueprint = inner
        .blueprints
        .get(&repo.blueprint)
        .ok_or_else(|| ReconcileError::NeedsHuman(format!("blueprint {} is not loaded", repo.blueprint)))?;
    let own = branch_layer(inner, env, sha).await?;
    let settings = blueprint.environment_settings(Stage::Staging, &env.branch, &repo.layers, own.as_ref())?;

    // The application stack comes first: the environment imports from it.
    let app_name = app_stack_name(&env.repo, Stage::Staging);
    let app_ctx = Context::application(owner, &env.repo, Stage::Staging, &app_name);
    if let Some(action) = ensure_application(inner, env, repo, &app_name, &app_ctx).await? {
        return Ok(action);
    }

    let names = EnvNames::new(&inner.setup.owner, &env.repo, &env.branch, &repo.zone);
    let hint = i64::from(names.env_key.rule_priority_hint());
    let priority = inner.store.allocate_priority(env.id, &env.repo, hint, i64::from(RULE_PRIORITY_MAX)).await?;
    let ctx = app_ctx.with_environment(env.branch.as_str(), sha.as_str(), &names, priority as u32);
    let rendered = blueprint.render(TemplateKind::Environment, &settings, &ctx)?;
    let hash = template_hash(&rendered.body);
    let tags = env_tags(owner, env, sha, &hash);

    let Some(stack) = stack else {
        let template = template(inner, &format!("{}/{hash}.json", env.stack_name), rendered.body).await?;
        let req = StackRequest { name: env.stack_name.clone(), template, tags, token: token("create", env.id) };
        let stack_id = match inner.aws.create_stack(&req).await {
            Ok(id) => Some(id),
            // Created by an earlier attempt whose answer was lost: look again.
            Err(e) if e.code() == "AlreadyExistsException" => return Ok(Action::Requeue(inner.setup.tuning.poll_min)),
            Err(e) => return Err(e.into()),
        };
        let o = Observed { status: Status::Provisioning, stack_id, last_error: None, ..env.observed() };
        let why = format!("creating stack {} at {}", env.stack_name, sha.short());
        inner.store.update_observed(env.id, &o, Some(("create", &why))).await?;
        return Ok(Action::Requeue(inner.setup.tuning.poll_min));
    };

    let status = stack.status.as_str();
    if status == "ROLLBACK_COMPLETE" {
        // A failed create leaves a stack that can only be deleted; delete it, then create afresh.
        let attempts = next_attempt(
            inner,
            env.attempts,
            &stack,
            "failed to create",
            "fix the template or settings and push again",
        )?;
        for bucket in inner.aws.stack_resources(&stack.id, "AWS::S3::Bucket").await? {
            inner.aws.empty_bucket(&bucket).await?;
        }
        inner.aws.delete_stack(&stack.id, &token("delete-rollback", env.id)).await?;
        let o = Observed { status: Status::Provisioning, attempts, ..env.observed() };
        let why = format!(
            "create rolled back ({}); deleting to create again",
            stack.reason.as_deref().unwrap_or("no reason given")
        );
        inner.store.update_observed(env.id, &o, Some(("rollback", &why))).await?;
        return Ok(Action::Requeue(inner.setup.tuning.poll_min));
    }
    if !UPDATABLE.contains(&status) {
        let advice = match status {
            "UPDATE_ROLLBACK_FAILED" => "continue the rollback (ContinueUpdateRollback) or delete the stack",
            "DELETE_FAILED" => "remove what blocks the deletion, then delete the stack",
            _ => "inspect the stack's events in the CloudFormation console",
        };
        return Err(ReconcileError::NeedsHuman(format!(
            "stack {} is {status}: {}; {advice}",
            stack.name,
            stack.reason.as_deref().unwrap_or("no reason given")
        )));
    }

    if stack.tag(TAG_SHA) != Some(sha.as_str()) || stack.tag(TAG_TEMPLATE) != Some(hash.as_str()) {
        let attempts = if status == "UPDATE_ROLLBACK_COMPLETE" {
            let what = format!("rolled back the update to {}", sha.short());
            next_attempt(inner, env.attempts, &stack, &what, "fix the template or settings and push again")?
        } else {
            env.attempts + 1
        };
        let template = template(inner, &format!("{}/{hash}.json", env.stack_name), rendered.body).await?;
        let req = StackRequest { name: env.stack_name.clone(), template, tags, token: token("update", env.id) };
        if inner.aws.update_stack(&req).await? == UpdateOutcome::Started {
            let o =
                Observed { status: Status::Provisioning, stack_id: Some(stack.id.clone()), attempts, ..env.observed() };
            let why = format!("updating stack {} to {}", stack.name, sha.short());
            inner.store.update_observed(env.id, &o, Some(("update", &why))).await?;
            return Ok(Action::Requeue(inner.setup.tuning.poll_min));
        }
        inner.store.add_event(env.id, "update", "no updates are to be performed: the stack is up to date").await?;
    }

    // The stack is what was asked for: point the name at it.
    let endpoint = stack.outputs.get("Endpoint").ok_or_else(|| {
        ReconcileError::NeedsHuman(format!("stack {} has no Endpoint output for the DNS record", stack.name))
    })?;
    let marker = OwnershipMarker::new(owner, env.repo.as_str(), env.env_key.as_str());
    inner.aws.upsert_dns(&zone_id(inner, repo).await?, &env.dns_name, endpoint, &marker).await?;
    let url = stack.outputs.get("Url").cloned().unwrap_or_else(|| format!("https://{}", env.dns_name));
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
        let template = template(inner, &format!("{app_name}/{hash}.json"), rendered.body).await?;
        let req = StackRequest { name: app_name.to_owned(), template, tags, token: token("app-create", env.id) };
        match inner.aws.create_stack(&req).await {
            Ok(_) => {
                let o = Observed { status: Status::Provisioning, ..env.observed() };
                inner
                    .store
                    .update_observed(env.id, &o, Some(("create", &format!("creating application stack {app_name}"))))
                    .await?;
            }
            Err(e) if e.code() == "AlreadyExistsException" => {} // another environment got there first
            Err(e) => return Err(e.into()),
        }
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
            let template = template(inner, &format!("{app_name}/{hash}.json"), rendered.body).await?;
            let req = StackRequest { name: app_name.to_owned(), template, tags, token: token("app-update", env.id) };
            match inner.aws.update_stack(&req).await? {
                UpdateOutcome::Started => {
                    inner.store.add_event(env.id, "update", &format!("updating application stack {app_name}")).await?;
                    Ok(waiting)
                }
                UpdateOutcome::NoChanges => Ok(None),
            }
        }
        "ROLLBACK_COMPLETE" => {
            count_app_attempt(inner, env, &app, "failed to create").await?;
            inner.aws.delete_stack(&app.id, &token("app-delete", env.id)).await?;
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

/// Counts one more try at a troubled application stack against the environment, and gives up (for a
/// person to look) once `max_stack_attempts` is spent.
async fn count_app_attempt(inner: &Inner, env: &EnvRecord, app: &Stack, what: &str) -> Result<(), ReconcileError> {
    let advice = "this application stack is shared by the repository's environments: look at its events";
    let attempts = next_attempt(inner, env.attempts, app, what, advice)?;
    inner.store.update_observed(env.id, &Observed { attempts, ..env.observed() }, None).await?;
    Ok(())
}

fn env_tags(owner: &str, env: &EnvRecord, sha: &CommitSha, hash: &str) -> Vec<(String, String)> {
    vec![
        (TAG_OWNER.to_owned(), owner.to_owned()),
        (TAG_REPO.to_owned(), tag_value(env.repo.as_str())),
        (TAG_BRANCH.to_owned(), tag_value(env.branch.as_str())),
        (TAG_ENV.to_owned(), env.env_key.to_string()),
        (TAG_SHA.to_owned(), sha.to_string()),
        (TAG_TEMPLATE.to_owned(), hash.to_owned()),
    ]
}

/// A ClientRequestToken, new for every request previewd makes (the SDK's own retries of one request
/// reuse it). CloudFormation silently ignores a request whose token it has seen, so a token is never
/// reused for another request; a retry after a lost answer is found by describing the stack first.
fn token(op: &str, id: impl std::fmt::Display) -> String {
    format!("previewd-{op}-{id}-{}-{:04x}", now_ms(), fastrand::u16(..))
}
