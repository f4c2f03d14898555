//! `previewd reap [--dry-run]`: one reaper pass now, with the same configuration as `serve`, whether or
//! not a server is running (the store's lock keeps passes one at a time). It prints each decision and
//! its reason; a real pass then carries its removals out through the reconciler's teardown path. The
//! exit status says whether the pass could judge everything.

use std::fmt::Write as _;
use std::time::Duration;

use previewd_cloud::Aws;
use previewd_reconciler::{Report, Verdict};

use crate::Config;
use crate::app::build_reconciler;

/// How long `previewd reap` waits for its removals to finish (DNS, buckets, DeleteStack, DELETE_COMPLETE)
/// before leaving the rest to a running previewd's reconciler.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, clap::Args)]
pub struct ReapArgs {
    /// Print each decision and its reason; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one pass, writes its decisions to `out`, and returns whether it ran cleanly.
pub async fn reap(config: &Config, aws: Aws, args: &ReapArgs, out: &mut String) -> anyhow::Result<bool> {
    let reconciler = build_reconciler(config, aws, "reap").await?;
    let report = reconciler.reap(args.dry_run).await;
    write_report(&report, out);
    let removals: Vec<i64> =
        report.decisions.iter().filter(|d| d.verdict == Verdict::Remove).filter_map(|d| d.env_id).collect();
    if !args.dry_run && !removals.is_empty() {
        if reconciler.drain(&removals, DRAIN_LIMIT).await {
            let _ = writeln!(out, "{} environments torn down", removals.len());
        } else {
            let _ = writeln!(out, "teardowns still under way after {DRAIN_LIMIT:?}: a running previewd finishes them");
        }
    }
    Ok(report.outcome.is_success())
}

fn write_report(report: &Report, out: &mut String) {
    for d in &report.decisions {
        let _ = writeln!(out, "{:<10} {:<24} {:<32} {}", d.verdict.as_str(), d.repo, d.subject, d.reason);
    }
    let _ = writeln!(out, "{}", report.summary);
}
