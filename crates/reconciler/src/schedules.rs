//! What runs on a clock: the fleet observer (every `resync_every`, on one replica at a time) and the
//! reaper (on its cron schedule, one pass per tick across replicas), beside the dispatcher.

use previewd_store::now_ms;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tracing::Instrument as _;

use crate::setup::TICK_MARGIN_MS;
use crate::{Reconciler, feedback, reaper};

/// The lock row that keeps the fleet observer to one replica.
pub const FLEET_LOCK: &str = "fleet-observer";
/// The lock row a scheduled reaper pass takes for its tick, so replicas run one pass per tick.
pub const REAPER_TICK_LOCK: &str = "reaper-tick";

/// The reaper's schedule could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ReaperScheduleError {
    /// Five fields: a crontab line, which has no seconds.
    #[error(
        "{schedule:?} has five fields, as a crontab line does; previewd's schedule has six, seconds first: \
         \"0 {schedule}\" runs at the same minutes"
    )]
    Crontab { schedule: String },
    /// Not a cron expression at all.
    #[error(
        "{schedule:?} is not a cron schedule: six fields, seconds first, such as \"0 0 * * * *\" (hourly) or \
         \"0 30 2 * * *\" (at 02:30 every day)"
    )]
    Invalid { schedule: String },
    /// The scheduler itself would not start.
    #[error("reaper schedule: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// Checks a reaper schedule (cron, seconds first) before anything starts.
pub fn check_schedule(schedule: &str) -> Result<(), ReaperScheduleError> {
    if schedule.split_whitespace().count() == 5 {
        return Err(ReaperScheduleError::Crontab { schedule: schedule.to_owned() });
    }
    Job::new_async(schedule, |_, _| Box::pin(async {}))
        .map_err(|_| ReaperScheduleError::Invalid { schedule: schedule.to_owned() })?;
    Ok(())
}

impl Reconciler {
    /// Runs the dispatcher, the fleet observer (every `resync_every`) and the reaper (on its cron schedule)
    /// until `shutdown` turns true; a reconcile under way finishes first, or is handed back after
    /// `stop_grace` (what it started in AWS is recorded and picked up again by whichever replica is next).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), ReaperScheduleError> {
        let mut scheduler = self.schedule_reaper().await?;
        let mut workers = tokio::task::JoinSet::new();
        let this = self.clone();
        let stop = shutdown.clone();
        workers.spawn(async move { this.dispatch(stop).await });
        let this = self.clone();
        let stop = shutdown.clone();
        workers.spawn(async move { feedback::run(&this.inner, stop).await });
        let this = self.clone();
        workers.spawn(async move {
            let (store, me) = (&this.inner.store, this.inner.setup.instance.as_str());
            let every = this.inner.setup.tuning.resync_every;
            let mut starting = true;
            loop {
                // One replica observes the fleet: it holds a lock row it renews every pass; when it dies the
                // lock expires after two passes and another replica takes it. A replica that starts looks
                // once whoever holds it (a restart after a crash catches up at once; a second look is
                // harmless: it only enqueues).
                let until = now_ms() + every.saturating_mul(2).as_millis() as i64;
                let held = match store.try_lock(FLEET_LOCK, me, until).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot take the fleet observer's lock");
                        false
                    }
                };
                if held || starting {
                    this.resync().await;
                } else {
                    tracing::debug!("another replica observes the fleet");
                }
                starting = false;
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            // Handed over at once on a clean stop.
            if let Err(e) = store.unlock(FLEET_LOCK, me).await {
                tracing::warn!(error = %e, "cannot release the fleet observer's lock");
            }
        });
        while workers.join_next().await.is_some() {}
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "cannot stop the reaper's scheduler");
        }
        Ok(())
    }

    /// The reaper, on its cron schedule (seconds first).
    async fn schedule_reaper(&self) -> Result<JobScheduler, ReaperScheduleError> {
        let schedule = self.inner.setup.reaper.schedule.clone();
        let scheduler = JobScheduler::new().await?;
        let this = self.clone();
        let tick_schedule = schedule.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let (this, schedule) = (this.clone(), tick_schedule.clone());
            Box::pin(async move {
                // One pass per tick across replicas: the first to fire takes the tick, until just before
                // the next one; the others let it be (and record nothing).
                let now = now_ms();
                let until = next_tick(&schedule, now).map_or(now + 60_000, |next| next - TICK_MARGIN_MS).max(now + 1);
                match this.inner.store.try_lock(REAPER_TICK_LOCK, this.instance(), until).await {
                    // A pass still running from an earlier tick (or `previewd reap`) covers this one.
                    Ok(true) if this.inner.store.lock_holder(reaper::LOCK).await.is_ok_and(|h| h.is_some()) => {
                        tracing::warn!("the reaper's previous pass is still running: this tick is skipped");
                    }
                    Ok(true) => {
                        this.reap(false).instrument(tracing::info_span!("reaper")).await;
                    }
                    Ok(false) => tracing::debug!("another replica runs this tick's reaper pass"),
                    Err(e) => tracing::warn!(error = %e, "cannot take the reaper's tick; the next tick tries again"),
                };
            })
        })?;
        scheduler.add(job).await?;
        scheduler.start().await?;
        Ok(scheduler)
    }
}

/// When `schedule` (cron, seconds first, as tokio-cron-scheduler reads it) next fires after `after_ms`.
fn next_tick(schedule: &str, after_ms: i64) -> Option<i64> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    // Whole seconds: croner carries a fraction over into the answer.
    let after = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(after_ms - after_ms.rem_euclid(1_000))?;
    cron.find_next_occurrence(&after, false).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_tick_is_read_from_the_schedule() {
        // 2026-01-01T00:00:00.500Z
        let t = 1_767_225_600_500;
        assert_eq!(next_tick("0 0 * * * *", t), Some(1_767_225_600_000 + 3_600_000), "hourly, on the hour");
        assert_eq!(next_tick("*/5 * * * * *", t), Some(1_767_225_605_000));
        assert_eq!(next_tick("not a schedule", t), None);
    }
}
