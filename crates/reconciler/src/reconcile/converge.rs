//! Converging: one step toward the desired commit, as [`plan::converge`] says, with the application
//! stack first ([`super::application`]).

use std::time::Duration;

use previewd_cloud::{OwnershipMarker, Stack, StackRequest, Template, UpdateOutcome};
use previewd_domain::plan::{self, ConvergeStep, StackStatus, StackView};
use previewd_domain::{CommitSha, EventKind, RULE_PRIORITY_MAX, Stage, Status, app_stack_name, tags};
use previewd_render::{Context, TemplateKind};
use previewd_store::{EnvRecord, Observed, now_ms};
use sha2::{Digest, Sha256};

use super::record::{first_look, poll_delay, record, stack_poll};
use super::{application, observe, ready, teardown};
use crate::context::{Inner, humanize};
use crate::durations::Op;
use crate::error::{Action, ReconcileError};
use crate::seed;
use crate::setup::RepoSetup;

/// One step toward the desired commit: wait, create, delete after a rolled-back create, update, or
/// point DNS and call it ready.
pub(super) async fn converge(
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
    // Refusing needs neither the settings nor a rendered template.
    if let Some(s) = &stack
        && let ConvergeStep::Refuse(why) = plan::converge(Some(&stack_view(inner, s, false)), env.attempts, max)
    {
        return Err(refuse(s, &why));
    }
    let owner = inner.setup.owner.as_str();
    let blueprint = inner
        .blueprints
        .get(&repo.blueprint)
        .ok_or_else(|| ReconcileError::NeedsHuman(format!("blueprint {} is not loaded", repo.blueprint)))?;
    // The settings first: a branch whose settings are wrong changes nothing in AWS, not even the
    // application stack.
    let own = observe::branch_layer(inner, env, sha).await?;
    let full = blueprint.environment_settings(Stage::Staging, &env.branch, &repo.layers, own.as_ref())?;
    let rules = blueprint.rules(&full, sha.as_str(), &env.dns_name)?;

    // An update past previewd's deadline is cancelled (CloudFormation has none for updates; a create is
    // failed by its own TimeoutInMinutes), whatever the gate says of the next commit: CloudFormation rolls
    // it back. The commit it was for fails; an older commit's hung update only makes way for this one.
    if let Some(s) = stack.as_ref().filter(|s| s.stack_status() == StackStatus::UpdateInProgress)
        // Timed from the update's own start (never from the stack's creation).
        && let began = s.updated_at.unwrap_or(env.updated_at)
        && now_ms() - began > rules.infrastructure_timeout.as_millis() as i64
        && inner.aws.cancel_update(&s.name, &token("cancel", &[&s.id, &began.to_string()])).await?
    {
        let to = s.tag(tags::SHA).unwrap_or("an unknown commit");
        let why = format!(
            "the update of stack {} to {} took longer than infrastructure.timeout ({}): cancelled, and \
             CloudFormation rolls it back to what ran before. See the stack's events for the resource it \
             waited on; push a fix, or redeploy",
            s.name,
            to.get(..7).unwrap_or(to),
            humanize(rules.infrastructure_timeout.as_millis() as i64)
        );
        inner.store.add_event(env.id, EventKind::Update, &why).await?;
        if to != sha.as_str() {
            return Ok(Action::Requeue(inner.setup.tuning.poll_min));
        }
        return Err(ReconcileError::NeedsHuman(why));
    }

    // The gate: the commit runs once its checks passed and its artifact exists. Until then a new
    // environment's stack comes up with the blueprint's waiting layer (no task), alongside the build; one
    // that runs an earlier commit, or whose blueprint has no such layer, waits as it is.
    let mut stamps = ready::Stamps::load(inner, env, sha).await?;
    let running = stack.is_some() && env.deployed_sha.is_some();
    let (settings, waiting) = match ready::gate(inner, env, sha, &rules, &mut stamps, running).await? {
        ready::Gate::Open => (full, None),
        ready::Gate::Failed(why) => return ready::record_failed(inner, env, &mut stamps, why).await,
        ready::Gate::Waiting { delay } => match blueprint.waiting_settings(&env.branch, &repo.layers, own.as_ref())? {
            Some(w) if !running => (w, Some(delay)),
            _ => {
                let stack_id = stack.as_ref().map(|s| s.id.clone()).or(env.stack_id.clone());
                ready::record_waiting(inner, env, &stamps, Observed { stack_id, ..env.observed() }).await?;
                return Ok(Action::Requeue(delay));
            }
        },
    };
    if let Some(s) = &stack
        && s.in_progress()
    {
        let o = Observed { status: status(waiting), stack_id: Some(s.id.clone()), ..env.observed() };
        stamps.save(inner, env).await?;
        record(inner, env, o, None).await?;
        let poll = stack_poll(inner, env, &repo.blueprint, s);
        return Ok(Action::Requeue(waiting.map_or(poll, |d| d.min(poll))));
    }

    // The application stack comes first: the environment imports from it.
    let app_name = app_stack_name(&env.repo, Stage::Staging);
    let app_ctx = Context::application(owner, &env.repo, Stage::Staging, &app_name);
    if let Some(action) = application::ensure(inner, env, repo, &app_name, &app_ctx).await? {
        return Ok(action);
    }

    let names = env.names(&inner.setup.owner);
    let hint = i64::from(names.env_key.rule_priority_hint());
    let priority = inner.store.allocate_priority(env.id, &env.repo, hint, i64::from(RULE_PRIORITY_MAX)).await?;
    let ctx = app_ctx.with_environment(env.branch.as_str(), sha.as_str(), &names, priority as u32);
    let rendered = blueprint.render(TemplateKind::Environment, &settings, &ctx)?;
    let hash = template_hash(&rendered.body);
    let tags = tags::environment(owner, &env.repo, &env.branch, &env.env_key, sha, &hash);
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
                timeout: Some(rules.infrastructure_timeout),
            };
            let stack_id = match inner.create_stack(&req).await {
                Ok(id) => Some(id),
                // Created by an earlier attempt whose answer was lost: look again.
                Err(e) if e.code() == "AlreadyExistsException" => {
                    return Ok(Action::Requeue(inner.setup.tuning.poll_min));
                }
                Err(e) => return Err(e.into()),
            };
            let o = Observed { status: status(waiting), stack_id, last_error: None, ..env.observed() };
            let why = match &stamps.now.waiting_for {
                Some(what) if waiting.is_some() => format!(
                    "creating stack {} at {} alongside the build, with no task until {what} is there",
                    env.stack_name,
                    sha.short()
                ),
                _ => format!("creating stack {} at {}", env.stack_name, sha.short()),
            };
            stamps.save(inner, env).await?;
            inner.store.update_observed(env.fence(), &o, Some((EventKind::Create, &why))).await?;
            tracing::info!(%why, "creating the stack");
            Ok(Action::Requeue(first_look(inner, &repo.blueprint, Op::Create)))
        }
        (ConvergeStep::DeleteAfterRollback, Some(stack)) => {
            let events = inner.aws.operation_events(&stack.id).await?;
            let cause = observe::failure_cause(inner, &stack.name, stack.changed_at(), &events).await;
            // A cause that trying again will not change (a missing image, an invalid property), or a create
            // stopped by its deadline (another would take as long), waits for a new push or a redeploy;
            // only then is the stack deleted and created once more.
            if let Some(c) = cause.as_ref().filter(|c| c.stopped || plan::lasting_cause(&c.text))
                && !asked_again(env, &stack)
            {
                return Err(ReconcileError::NeedsHuman(match c.stopped {
                    true => format!(
                        "stack {} was not created within infrastructure.timeout ({}): {}. Another try would \
                         take as long: push a fix, or redeploy",
                        stack.name,
                        humanize(rules.infrastructure_timeout.as_millis() as i64),
                        c.text
                    ),
                    false => format!(
                        "stack {} could not be created: {}. Trying again will not help: push a fix, or redeploy",
                        stack.name, c.text
                    ),
                }));
            }
            let Some(_) = teardown::empty_buckets(inner, env, &stack, true).await? else {
                return Ok(Action::Requeue(Duration::ZERO));
            };
            // A listener rule priority something else holds: the next free one, and this try not counted;
            // only when the priority taken is the environment's own (a template that does not use it
            // moves nothing, and counts). Asked once the buckets are empty, right before the delete.
            let moved = match observe::priority_in_use(&events) {
                Some(taken) if taken == priority => {
                    let max = i64::from(RULE_PRIORITY_MAX);
                    let next = inner.store.move_priority(env.id, &env.repo, priority, max).await?;
                    let why = format!(
                        "listener rule priority {priority} is held by a rule previewd did not make: moving to {next}"
                    );
                    inner.store.add_event(env.id, EventKind::Priority, &why).await?;
                    true
                }
                _ => false,
            };
            inner.delete_stack(&stack, &token("delete-rollback", &[&stack.id])).await?;
            let attempts = if moved { env.attempts } else { env.attempts + 1 };
            let o = Observed { status: Status::Provisioning, attempts, ..env.observed() };
            let why = format!(
                "create rolled back ({}); deleting to create again",
                cause.map(|c| c.text).or(stack.reason.clone()).as_deref().unwrap_or("no reason given")
            );
            inner.store.update_observed(env.fence(), &o, Some((EventKind::Rollback, &why))).await?;
            tracing::info!(%why, "deleting a stack whose create rolled back");
            Ok(Action::Requeue(inner.setup.tuning.poll_min))
        }
        (ConvergeStep::Update { counted }, Some(stack)) => {
            // After a rolled-back update: why, from its events. A cause that trying again will not change
            // waits for a new push or a redeploy, as a rolled-back create does.
            let rolled_back = match counted && stack.stack_status() == StackStatus::UpdateRollbackComplete {
                true => {
                    let events = inner.aws.operation_events(&stack.id).await?;
                    observe::failure_cause(inner, &stack.name, stack.changed_at(), &events).await
                }
                false => None,
            };
            // (An update stopped is not one: previewd cancels its own past their deadline, above, and a
            // person who cancelled one did not ask for it to stay undone.)
            let rolled_back = rolled_back.map(|c| c.text);
            if let Some(cause) = rolled_back.as_deref().filter(|c| plan::lasting_cause(c))
                && !asked_again(env, &stack)
            {
                return Err(ReconcileError::NeedsHuman(format!(
                    "stack {} could not be updated to {}: {cause}. Trying again will not help: push a fix, or redeploy",
                    stack.name,
                    sha.short()
                )));
            }
            let attempts = if counted { env.attempts + 1 } else { env.attempts };
            let template = template(inner, &format!("{}/{hash}.json", env.stack_name), rendered.body).await?;
            let req = StackRequest {
                name: env.stack_name.clone(),
                template,
                tags,
                token: token("update", &[&stack.id, &hash, sha.as_str(), &attempts.to_string()]),
                role_arn: inner.setup.stack_role_arn.clone(),
                timeout: None,
            };
            if inner.update_stack(&req).await? == UpdateOutcome::Started {
                let o =
                    Observed { status: status(waiting), stack_id: Some(stack.id.clone()), attempts, ..env.observed() };
                let why = match waiting {
                    Some(_) => format!(
                        "updating stack {} to {} (no task until its artifact is there)",
                        stack.name,
                        sha.short()
                    ),
                    None => format!("updating stack {} to {}", stack.name, sha.short()),
                };
                let why = match &rolled_back {
                    Some(cause) => format!("{why}, again: the last update rolled back ({cause})"),
                    None => why,
                };
                stamps.save(inner, env).await?;
                inner.store.update_observed(env.fence(), &o, Some((EventKind::Update, &why))).await?;
                tracing::info!(%why, "updating the stack");
                return Ok(Action::Requeue(first_look(inner, &repo.blueprint, Op::Update)));
            }
            inner
                .store
                .add_event(env.id, EventKind::Update, "no updates are to be performed: the stack is up to date")
                .await?;
            let cx = Complete { env, repo, sha, stack: &stack, blueprint, settings: &settings, rules: &rules };
            complete(inner, &cx, &mut stamps, waiting).await
        }
        (ConvergeStep::PointDns, Some(stack)) => {
            let cx = Complete { env, repo, sha, stack: &stack, blueprint, settings: &settings, rules: &rules };
            complete(inner, &cx, &mut stamps, waiting).await
        }
        (ConvergeStep::Refuse(why), Some(stack)) => Err(refuse(&stack, &why)),
        (ConvergeStep::Wait, _) => {
            stamps.save(inner, env).await?;
            Ok(Action::Requeue(poll_delay(inner, env)))
        }
        (step, None) => Err(ReconcileError::NeedsHuman(format!("{step:?} planned for a stack that does not exist"))),
    }
}

/// Whether the environment was asked for again (a push, a redeploy) since the stack's last operation
/// began: a lasting cause is then tried once more. (Compared across previewd's clock and AWS's: a skew
/// of more than the moment between a push and its stack operation only lets one more try through.)
fn asked_again(env: &EnvRecord, stack: &Stack) -> bool {
    match stack.changed_at() {
        Some(began) => env.desired_at > began,
        None => env.status == Status::Pending,
    }
}

/// An environment whose stack CloudFormation works on: `pending` while its commit waits for its artifact
/// (the stack comes up with the waiting layer, no task), `provisioning` once the commit runs.
fn status(waiting: Option<Duration>) -> Status {
    if waiting.is_some() { Status::Pending } else { Status::Provisioning }
}

/// A complete stack and what it was rendered from.
struct Complete<'a> {
    env: &'a EnvRecord,
    repo: &'a RepoSetup,
    sha: &'a CommitSha,
    stack: &'a Stack,
    blueprint: &'a previewd_render::Blueprint,
    settings: &'a previewd_render::Settings,
    rules: &'a previewd_render::Rules,
}

/// The stack is complete as asked for: its infrastructure is there. Waiting for the artifact, the name
/// is pointed at it (once) and the environment waits; otherwise it goes on to `ready` ([`point_dns`]).
async fn complete(
    inner: &Inner,
    cx: &Complete<'_>,
    stamps: &mut ready::Stamps,
    waiting: Option<Duration>,
) -> Result<Action, ReconcileError> {
    stamps.reach(ready::Phase::Infrastructure);
    let Some(delay) = waiting else { return point_dns(inner, cx, stamps).await };
    let env = cx.env;
    let url = match &env.url {
        Some(url) => url.clone(),
        None => {
            let (endpoint, url) = endpoint(cx.stack, &env.dns_name)?;
            let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
            inner.aws.upsert_dns(&inner.zone_id(cx.repo).await?, &env.dns_name, endpoint, &marker).await?;
            url
        }
    };
    let o = Observed { stack_id: Some(cx.stack.id.clone()), url: Some(url), ..env.observed() };
    ready::record_waiting(inner, env, stamps, o).await?;
    Ok(Action::Requeue(delay))
}

/// The stack's `Endpoint` output (what the name points at) and the environment's URL.
fn endpoint<'a>(stack: &'a Stack, dns_name: &str) -> Result<(&'a String, String), ReconcileError> {
    let endpoint = stack.outputs.get("Endpoint").ok_or_else(|| {
        ReconcileError::NeedsHuman(format!("stack {} has no Endpoint output for the DNS record", stack.name))
    })?;
    let url = stack.outputs.get("Url").cloned().unwrap_or_else(|| format!("https://{dns_name}"));
    Ok((endpoint, url))
}

/// The stack is what was asked for: point the name at it (unless it already points there), seed a new
/// environment, wait for its URL to answer, and call it ready.
async fn point_dns(inner: &Inner, cx: &Complete<'_>, stamps: &mut ready::Stamps) -> Result<Action, ReconcileError> {
    let (env, stack) = (cx.env, cx.stack);
    let (endpoint, url) = endpoint(stack, &env.dns_name)?;
    // Pointed already for this commit while its URL is probed: Route53 is not asked again at every probe.
    let probing = cx.rules.probe.as_ref().is_some_and(|p| stamps.probing(&p.url));
    if !(probing && env.url.as_deref() == Some(url.as_str())) {
        let marker = OwnershipMarker::new(inner.setup.owner.as_str(), env.repo.as_str(), env.env_key.as_str());
        inner.aws.upsert_dns(&inner.zone_id(cx.repo).await?, &env.dns_name, endpoint, &marker).await?;
    }
    if env.seed_pending {
        if env.seed_step == 0 && env.seed_log.is_empty() && env.seed_task.is_none() {
            let o = Observed { status: Status::Provisioning, url: Some(url.clone()), ..env.observed() };
            record(inner, env, o, Some((EventKind::Seed, "the stack is ready: seeding"))).await?;
        }
        let scx = seed::SeedContext {
            env,
            blueprint: cx.blueprint,
            settings: cx.settings,
            outputs: &stack.outputs,
            sha: cx.sha,
            url: &url,
        };
        if let Some(action) = seed::step(inner, &scx).await? {
            stamps.save(inner, env).await?;
            return Ok(action);
        }
    }
    let settled = env.status == Status::Ready && env.deployed_sha.as_ref() == Some(cx.sha);
    if let Some(probe) = cx.rules.probe.as_ref().filter(|_| !settled)
        && let Some(action) = ready::probe(inner, env, &url, probe, stamps).await?
    {
        return Ok(action);
    }
    let o = Observed {
        status: Status::Ready,
        deployed_sha: Some(cx.sha.clone()),
        stack_id: Some(stack.id.clone()),
        url: Some(url.clone()),
        last_error: None,
        attempts: 0,
        retries: 0,
    };
    let mut event = None;
    if !settled {
        stamps.reach(ready::Phase::Ready);
        if let Some(pushed) = env.pushed_at {
            let repo = previewd_metrics::RepoLabel { repo: env.repo.to_string() };
            let seconds = (now_ms() - pushed).max(0) as f64 / 1000.0;
            previewd_metrics::METRICS.push_to_ready_seconds.get_or_create(&repo).observe(seconds);
        }
        event = Some(match ready::timeline_summary(&stamps.now) {
            Some(summary) => format!("ready at {}: {url} ({summary})", cx.sha.short()),
            None => format!("ready at {}: {url}", cx.sha.short()),
        });
    }
    // The timeline first: whoever reads `ready` finds its phases there too.
    stamps.save(inner, env).await?;
    record(inner, env, o, event.as_deref().map(|m| (EventKind::Ready, m))).await?;
    if let Some(why) = &event {
        tracing::info!(%why, "ready");
    }
    Ok(Action::Done)
}

pub(super) fn stack_view(inner: &Inner, s: &Stack, current: bool) -> StackView {
    StackView { status: s.stack_status(), owned: s.tag(tags::OWNER) == Some(inner.setup.owner.as_str()), current }
}

pub(super) fn template_hash(body: &str) -> String {
    format!("{:x}", Sha256::digest(body.as_bytes()))[..16].to_owned()
}

pub(super) async fn template(inner: &Inner, key: &str, body: String) -> Result<Template, ReconcileError> {
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

/// A ClientRequestToken, new for every request previewd makes (the SDK's own retries of one request
/// reuse it). CloudFormation silently ignores a request whose token it has seen, so a token is never
/// reused for another request; a retry after a lost answer is found by describing the stack first.
pub(super) fn token(op: &str, request: &[&str]) -> String {
    // The same for the same request (what it asks of which stack, at which attempt), so a step repeated
    // after a crash lost its answer is a retry CloudFormation recognises and does not do twice; any other
    // request gets another token, since CloudFormation ignores a request whose token it has seen.
    let digest = Sha256::digest(request.join("\n").as_bytes());
    format!("previewd-{op}-{}", &hex::encode(digest)[..24])
}
