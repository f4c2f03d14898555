//! The repository's application stack, which its environments share and import from: created or
//! updated first, as [`plan::application`] says, by one replica at a time.

use previewd_cloud::{Stack, StackRequest, UpdateOutcome};
use previewd_domain::plan::{self, AppStep, StackView};
use previewd_domain::{EventKind, Stage, Status, tags};
use previewd_render::{Context, TemplateKind};
use previewd_store::{EnvRecord, Observed, now_ms};

use super::converge::{template, template_hash, token};
use super::record::poll_delay;
use crate::context::Inner;
use crate::error::{Action, ReconcileError};
use crate::setup::RepoSetup;

/// Creates or updates the repository's application stack; `Some` while it is not ready for use.
pub(super) async fn ensure(
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
    let tags = tags::application(owner, &env.repo, Stage::Staging, &hash);
    let waiting = Some(Action::Requeue(poll_delay(inner, env)));
    let app = inner.aws.describe_stack(app_name).await?;
    let view = app.as_ref().map(|a| StackView {
        status: a.stack_status(),
        owned: a.tag(tags::OWNER) == Some(owner),
        current: a.tag(tags::TEMPLATE) == Some(hash.as_str()),
    });
    let step = plan::application(view.as_ref(), env.attempts, inner.setup.tuning.max_stack_attempts);
    let reason = |a: &Stack| a.reason.clone().unwrap_or_else(|| "no reason given".to_owned());
    match (step, app) {
        (AppStep::Ready, _) => Ok(None),
        (AppStep::Wait, _) => Ok(waiting),
        (AppStep::Refuse(why), app) => Err(ReconcileError::NeedsHuman(match app.and_then(|a| a.reason) {
            Some(last) => format!("application stack {app_name}: {why} (last reason: {last})"),
            None => format!("application stack {app_name}: {why}"),
        })),
        (AppStep::Create, _) => {
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
                    timeout: None,
                };
                match inner.create_stack(&req).await {
                    Ok(_) => {
                        let o = Observed { status: Status::Provisioning, ..env.observed() };
                        let why = format!("creating application stack {app_name}");
                        inner.store.update_observed(env.fence(), &o, Some((EventKind::Create, &why))).await?;
                        tracing::info!(%why, "creating the application's stack");
                    }
                    Err(e) if e.code() == "AlreadyExistsException" => {} // made by a previewd without this lock
                    Err(e) => return Err(ReconcileError::from(e)),
                }
                Ok(())
            }
            .await;
            lock.release(inner).await;
            created?;
            Ok(waiting)
        }
        (AppStep::Update { counted }, Some(app)) => {
            if counted {
                count_attempt(inner, env).await?;
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
                    timeout: None,
                };
                match inner.update_stack(&req).await? {
                    UpdateOutcome::Started => {
                        let why = format!("updating application stack {app_name}");
                        inner.store.add_event(env.id, EventKind::Update, &why).await?;
                        Ok(waiting)
                    }
                    UpdateOutcome::NoChanges => Ok(None),
                }
            }
            .await;
            lock.release(inner).await;
            updated
        }
        (AppStep::DeleteAfterRollback, Some(app)) => {
            count_attempt(inner, env).await?;
            inner.delete_stack(&app, &token("app-delete", &[&app.id])).await?;
            let why =
                format!("application stack {app_name} failed to create ({}); deleting to create again", reason(&app));
            inner.store.add_event(env.id, EventKind::Rollback, &why).await?;
            Ok(waiting)
        }
        (step, None) => Err(ReconcileError::NeedsHuman(format!("{step:?} planned for a stack that does not exist"))),
    }
}

/// Counts one more try at a troubled application stack against the environment (the plan refuses once
/// `max_stack_attempts` is spent).
async fn count_attempt(inner: &Inner, env: &EnvRecord) -> Result<(), ReconcileError> {
    let o = Observed { attempts: env.attempts + 1, ..env.observed() };
    inner.store.update_observed(env.fence(), &o, None).await?;
    Ok(())
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
            tracing::warn!(error = %e, lock = self.name, "cannot release a lock; it expires by itself");
        }
    }
}
