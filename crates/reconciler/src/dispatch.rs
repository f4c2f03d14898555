//! The dispatcher: takes due work from the store's queue under a lease, runs one reconcile step per
//! claim (renewing the lease meanwhile), applies the error policy, and hands the lease back with when
//! to look again.

use std::sync::Arc;
use std::time::Duration;

use previewd_domain::{EventKind, Status};
use previewd_store::{Claim, EnvRecord, now_ms};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::Reconciler;
use crate::context::humanize;
use crate::error::{Action, ErrorAction, ReconcileError, Repeats, SAME_FAULT_MAX, error_policy};
use crate::reconcile;
use crate::setup::{DRAIN_POLL, IDLE_FLOOR};

impl Reconciler {
    /// Takes due work from the store and runs it, `workers` steps at a time, until `stop`; then lets the
    /// running steps finish for up to `stop_grace` and abandons the rest (handed back, due at once).
    pub(crate) async fn dispatch(&self, mut stop: watch::Receiver<bool>) {
        let t = &self.inner.setup.tuning;
        let slots = Arc::new(tokio::sync::Semaphore::new(t.workers.max(1)));
        let (abandon, abandoned) = watch::channel(false);
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = stop.wait_for(|s| *s) => break,
            };
            let until = now_ms() + t.lease.as_millis() as i64;
            match self.inner.store.claim_due(self.instance(), until).await {
                Ok(Some((claim, env))) => {
                    let (this, abandoned) = (self.clone(), abandoned.clone());
                    running.spawn(async move {
                        this.work(claim, env, abandoned).await;
                        drop(slot);
                        this.inner.queue.wake();
                    });
                    // The step starts before this looks for more work (whose claim would go first).
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot take due work"),
            }
            drop(slot);
            // Nothing due now: sleep until something is, this process asks, or another replica may have.
            let wait = match self.inner.store.next_due().await {
                Ok(Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64).min(t.idle_poll),
                _ => t.idle_poll,
            };
            tokio::select! {
                _ = self.inner.queue.woken() => {}
                _ = tokio::time::sleep(wait.max(IDLE_FLOOR)) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let finish = async { while running.join_next().await.is_some() {} };
        if tokio::time::timeout(t.stop_grace, finish).await.is_err() {
            tracing::warn!("stopping: steps still running after the grace are handed back");
            let _ = abandon.send(true);
            while running.join_next().await.is_some() {}
        }
    }

    /// Runs this process's dispatcher until none of `ids` is due or held any more (whichever replica did
    /// the work), or `limit` has passed; returns whether they all finished. `previewd reap` uses it to
    /// carry removals out when no server is running.
    pub async fn drain(&self, ids: &[i64], limit: Duration) -> bool {
        let (stop, stopped) = watch::channel(false);
        let this = self.clone();
        let dispatcher = tokio::spawn(async move { this.dispatch(stopped).await });
        let finished = tokio::time::timeout(limit, async {
            loop {
                match self.inner.store.pending(ids).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read the queue"),
                }
                tokio::time::sleep(DRAIN_POLL).await;
            }
        })
        .await
        .is_ok();
        let _ = stop.send(true);
        let _ = dispatcher.await;
        finished
    }

    /// One reconcile step of a claimed environment while its lease is renewed; then the lease is handed
    /// back with when to look again. A step whose lease is lost (taken over, or not renewable before it
    /// ends) is dropped where it stands and writes nothing more; one abandoned at stop is handed back due.
    async fn work(&self, claim: Claim, env: EnvRecord, mut abandoned: watch::Receiver<bool>) {
        let span = tracing::info_span!(
            "reconcile",
            env_id = claim.id,
            repo = tracing::field::Empty,
            branch = tracing::field::Empty,
            env = tracing::field::Empty,
            stack = tracing::field::Empty,
        );
        async {
            let requeue = tokio::select! {
                step = self.step(&claim, env) => match step {
                    Some(requeue) => requeue,
                    None => return tracing::warn!("lease taken over during the step: its write was refused"),
                },
                () = self.keep_lease(&claim) => {
                    return tracing::warn!("lease lost during the step: abandoned, another replica takes over");
                }
                _ = abandoned.wait_for(|a| *a) => Some(Duration::ZERO),
            };
            let at = requeue.map(|d| now_ms().saturating_add(d.as_millis() as i64));
            match self.inner.store.release(&claim, at).await {
                Ok(()) => {}
                Err(e) if e.is_fenced() => tracing::warn!("lease taken over before release"),
                // The lease ends by itself; the environment is due again then.
                Err(e) => tracing::warn!(error = %e, "cannot release environment"),
            }
        }
        .instrument(span)
        .await
    }

    /// Renews `claim`'s lease every third of it; returns when it is lost: taken over, or not renewed
    /// (the store failing) before it ends.
    async fn keep_lease(&self, claim: &Claim) {
        let lease = self.inner.setup.tuning.lease;
        let mut ends = tokio::time::Instant::now() + lease;
        loop {
            tokio::time::sleep(lease / 3).await;
            let asked = tokio::time::Instant::now();
            let renewal = self.inner.store.renew(claim, self.instance(), now_ms() + lease.as_millis() as i64);
            // A renewal still unanswered when the lease ends proves nothing: the lease is lost then.
            let Ok(renewed) = tokio::time::timeout(ends.saturating_duration_since(asked), renewal).await else {
                return;
            };
            match renewed {
                Ok(true) => ends = asked + lease,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease");
                    if tokio::time::Instant::now() + lease / 3 >= ends {
                        return;
                    }
                }
            }
        }
    }

    /// One reconcile with the error policy applied: when to look again, or `None` when the lease was
    /// taken over (nothing of this step is recorded then).
    async fn step(&self, claim: &Claim, env: EnvRecord) -> Option<Option<Duration>> {
        let started = std::time::Instant::now();
        // A record another holder claimed since has no status this step may speak for.
        let kind = if env.lease_epoch == claim.epoch { env.status.as_str() } else { NO_STATUS };
        let limit = self.inner.setup.tuning.step_limit;
        let stepped = tokio::time::timeout(limit, reconcile::reconcile(&self.inner, claim, env)).await;
        let cut_off = stepped.is_err();
        let result = stepped.unwrap_or_else(|_| {
            Err(ReconcileError::Transient(format!(
                "the step did not finish within [reconciler] step_limit ({}): cut off, to be tried again",
                humanize(limit.as_millis() as i64)
            )))
        });
        let outcome = match &result {
            _ if cut_off => StepResult::CutOff,
            Ok(Action::Done) => StepResult::Done,
            Ok(Action::Requeue(_)) => StepResult::Requeue,
            Err(e) if e.is_fenced() => StepResult::Fenced,
            Err(e) if e.needs_human() => StepResult::Failed,
            Err(_) => StepResult::Retry,
        };
        let m = &previewd_metrics::METRICS;
        let labels = previewd_metrics::StepLabels { kind: kind.to_owned(), outcome: outcome.as_str().to_owned() };
        m.reconcile_steps.get_or_create(&labels).inc();
        m.reconcile_seconds
            .get_or_create(&previewd_metrics::KindLabel { kind: kind.to_owned() })
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok()
            && let Err(e) = self.inner.store.reset_retries(claim.fence()).await
        {
            tracing::warn!(error = %e, "cannot reset retries");
        }
        match result {
            Ok(Action::Done) => Some(None),
            Ok(Action::Requeue(d)) => Some(Some(d)),
            Err(e) => self.record_error(claim, e).await,
        }
    }

    /// Records an error as the policy reads it: a retry after a backoff, or `failed` with a message for a
    /// person (until the next change). `None`: the lease was taken over.
    async fn record_error(&self, claim: &Claim, error: ReconcileError) -> Option<Option<Duration>> {
        let t = &self.inner.setup.tuning;
        if error.is_fenced() {
            return None;
        }
        let Ok(Some(env)) = self.inner.store.get(claim.id).await else { return Some(Some(t.retry_max)) };
        let mut observed = env.observed();
        // Errors quote what contributors wrote: kept and shown one line, bounded, without control characters.
        let mut message = previewd_domain::text::message(&error.to_string());
        // The same AWS fault before this one, as the event log has it (only a fault is looked up).
        let same = match error.is_fault() {
            true => self.repeats(env.id, &message).await,
            false => Repeats::default(),
        };
        // The event log's clock: the repeats' times are its.
        let now = self.inner.store.now();
        // Whose failure it is, when the environment fails now (counted and logged once it is recorded).
        let (requeue, kind, failed) = match error_policy(&error, observed.retries, same, now, t) {
            ErrorAction::Fenced => return None,
            ErrorAction::Repeated => {
                observed.status = Status::Failed;
                let over = humanize(now - same.since.unwrap_or(now));
                message = format!(
                    "AWS gave the same answer {} times in a row over {over}, so it is not taken for a passing \
                     fault: {message}. Check what the stack asks of that service (a resource type the endpoint \
                     cannot create answers so every time) and the service's health; a push or a redeploy tries \
                     again",
                    same.times + 1
                );
                (None, EventKind::Failed, Some(true))
            }
            ErrorAction::Retry { after, retries } => {
                observed.retries = retries;
                tracing::warn!(error = %message, retries, "will retry");
                (Some(after), EventKind::Retry, None)
            }
            ErrorAction::Fail => {
                observed.status = Status::Failed;
                (None, EventKind::Failed, Some(error.is_operators()))
            }
        };
        observed.last_error = Some(message.clone());
        // Under the claim's own fence: the record just read may already be another holder's.
        match self.inner.store.update_observed(claim.fence(), &observed, Some((kind, &message))).await {
            Ok(()) => {
                if let Some(operators) = failed {
                    reconcile::failed(&env, &message, operators);
                }
                Some(requeue)
            }
            Err(e) if e.is_fenced() => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record error");
                Some(Some(t.retry_min))
            }
        }
    }
}

impl Reconciler {
    /// How many times in a row, and since when, the environment's last steps failed with `message`: its
    /// newest `Retry` events that say it, no other `Retry` between (a step may write events of its own
    /// before it fails, a seeding asked for before each create). A store that cannot say counts none.
    async fn repeats(&self, id: i64, message: &str) -> Repeats {
        match self.inner.store.events(id, 4 * SAME_FAULT_MAX).await {
            Ok(events) => repeats(&events, message),
            Err(_) => Repeats::default(),
        }
    }
}

/// As [`Reconciler::repeats`], from the environment's newest events (oldest first).
fn repeats(events: &[previewd_store::EventRecord], message: &str) -> Repeats {
    let same: Vec<_> =
        events.iter().rev().filter(|e| e.kind == EventKind::Retry).take_while(|e| e.message == message).collect();
    Repeats { times: same.len() as i64, since: same.last().map(|e| e.at) }
}

/// The step metrics' kind of a step that found no record of its own (its lease was taken over).
const NO_STATUS: &str = "gone";

/// How a step ended, for the step metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepResult {
    CutOff,
    Done,
    Requeue,
    Fenced,
    Failed,
    Retry,
}

impl StepResult {
    fn as_str(self) -> &'static str {
        match self {
            StepResult::CutOff => "cut_off",
            StepResult::Done => "done",
            StepResult::Requeue => "requeue",
            StepResult::Fenced => "fenced",
            StepResult::Failed => "failed",
            StepResult::Retry => "retry",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_answer_is_counted_across_a_steps_own_events() {
        let event = |at: i64, kind: EventKind, message: &str| previewd_store::EventRecord {
            id: at,
            env_id: 1,
            at,
            kind,
            message: message.to_owned(),
        };
        let fault = "CreateStack: temporarily failing (InternalFailure): We encountered an internal error";
        // Oldest first; each step asks for its seeding before it creates, and fails.
        let events = [
            event(1, EventKind::Retry, "DescribeStacks: temporarily failing (HTTP503): unavailable"),
            event(2, EventKind::Seed, "a new stack: 2 seed steps will run once it is created"),
            event(3, EventKind::Retry, fault),
            event(4, EventKind::Seed, "a new stack: 2 seed steps will run once it is created"),
            event(5, EventKind::Retry, fault),
            event(6, EventKind::Seed, "a new stack: 2 seed steps will run once it is created"),
        ];
        assert_eq!(repeats(&events, fault), Repeats { times: 2, since: Some(3) });
        assert_eq!(repeats(&events, "another answer"), Repeats::default());
    }
}
