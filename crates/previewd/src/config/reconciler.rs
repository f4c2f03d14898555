//! The `[reaper]` and `[reconciler]` tables, which set up the two halves of `previewd_reconciler`: when the
//! reaper runs and how careful it is, and the reconciler's waits and limits.

use std::time::Duration;

use anyhow::{Context as _, bail};
use previewd_reconciler::{ReaperSetup, Tuning};

use super::file::{ReaperFile, ReconcilerFile};
use super::{
    DEFAULT_REAPER_GRACE, DEFAULT_REAPER_MAX_SHARE, DEFAULT_REAPER_MIN_REMOVALS, DEFAULT_REAPER_SCHEDULE, Var,
};

/// How long an environment stays orphaned before it is reaped: `PREVIEWD_REAPER_GRACE`, else `[reaper] grace`.
pub(super) fn reaper_grace(var: Var<'_>, table: &ReaperFile) -> anyhow::Result<Duration> {
    Ok(match var("PREVIEWD_REAPER_GRACE").or_else(|| table.grace.clone()) {
        Some(g) => humantime::parse_duration(&g)
            .with_context(|| format!("reaper grace {g:?} is not a duration such as 10m"))?,
        None => DEFAULT_REAPER_GRACE,
    })
}

/// The reaper's setup around `grace`: its schedule and how much one pass may remove (`max_share` checked).
pub(super) fn reaper(var: Var<'_>, source: &str, table: ReaperFile, grace: Duration) -> anyhow::Result<ReaperSetup> {
    let max_share = table.max_share.unwrap_or(DEFAULT_REAPER_MAX_SHARE);
    if !(0.0..=1.0).contains(&max_share) {
        bail!("{source}: [reaper] max_share = {max_share} must be a share between 0 and 1, such as 0.5");
    }
    Ok(ReaperSetup {
        schedule: var("PREVIEWD_REAPER_SCHEDULE")
            .or(table.schedule)
            .unwrap_or_else(|| DEFAULT_REAPER_SCHEDULE.to_owned()),
        grace,
        max_share,
        min_removals: table.min_removals.unwrap_or(DEFAULT_REAPER_MIN_REMOVALS),
    })
}

/// The reconciler's waits and limits: `[reconciler]` over the defaults, with the bounds they must keep checked.
pub(super) fn tuning(source: &str, r: &ReconcilerFile) -> anyhow::Result<Tuning> {
    let mut tuning = Tuning::default();
    let dur = |key: &str, v: &Option<String>, d: &mut Duration| -> anyhow::Result<()> {
        if let Some(v) = v {
            *d = humantime::parse_duration(v)
                .with_context(|| format!("{source}: [reconciler] {key} = {v:?} is not a duration such as 5s"))?;
        }
        Ok(())
    };
    dur("poll_min", &r.poll_min, &mut tuning.poll_min)?;
    dur("poll_max", &r.poll_max, &mut tuning.poll_max)?;
    dur("retry_min", &r.retry_min, &mut tuning.retry_min)?;
    dur("retry_max", &r.retry_max, &mut tuning.retry_max)?;
    dur("resync_every", &r.resync_every, &mut tuning.resync_every)?;
    dur("lease", &r.lease, &mut tuning.lease)?;
    dur("idle_poll", &r.idle_poll, &mut tuning.idle_poll)?;
    dur("stop_grace", &r.stop_grace, &mut tuning.stop_grace)?;
    dur("api_lag", &r.api_lag, &mut tuning.api_lag)?;
    dur("batch_window", &r.batch_window, &mut tuning.batch_window)?;
    dur("step_limit", &r.step_limit, &mut tuning.step_limit)?;
    if tuning.poll_min > tuning.poll_max || tuning.retry_min > tuning.retry_max {
        bail!("{source}: [reconciler] poll_min and retry_min must not exceed poll_max and retry_max");
    }
    if tuning.step_limit < Duration::from_secs(1) {
        bail!("{source}: [reconciler] step_limit must be at least 1s: every step would be cut off");
    }
    if let Some(w) = r.workers {
        tuning.workers = w.max(1);
    }
    if let Some(b) = r.empty_batches_per_step {
        tuning.empty_batches_per_step = b.max(1);
    }
    if let Some(m) = r.max_stack_attempts {
        tuning.max_stack_attempts = m.max(1);
    }
    Ok(tuning)
}
