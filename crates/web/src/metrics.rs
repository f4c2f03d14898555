//! `/metrics`: the process's counters, and what the store counts in SQL (environments by status,
//! reaper passes, the queue).

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Metrics in the format the scraper asks for, as Prometheus's own client libraries choose it:
/// OpenMetrics when `Accept` names `application/openmetrics-text`, else the older text format 0.0.4
/// (what `promtool check metrics` and a plain `curl` read).
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    // Environments by status, reaper passes and the queue are counted in SQL; a failing store leaves them out.
    let queue = state.store.queue_stats().await.unwrap_or_default();
    let snapshot = previewd_metrics::Snapshot {
        environments: match state.store.status_counts().await {
            Ok(counts) => every_status(&state, counts),
            Err(_) => Vec::new(),
        },
        reaper_last_success: state.store.reaper_last_success().await.ok().flatten().map(|ms| ms as f64 / 1000.0),
        reaper_passes: state.store.reaper_pass_counts().await.unwrap_or_default(),
        queue_depth: queue.depth,
        queue_oldest_seconds: queue.oldest_due.map_or(0.0, |at| (state.store.now() - at).max(0) as f64 / 1000.0),
    };
    let text = previewd_metrics::METRICS.encode(&snapshot);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
    } else {
        let text = previewd_metrics::to_text_format(&text);
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
    }
}

/// Every repository (configured, or with environments) with every status, zero included, so a
/// dashboard's series never vanish.
fn every_status(state: &AppState, counts: Vec<(String, String, i64)>) -> Vec<(String, String, i64)> {
    let repos: std::collections::BTreeSet<String> =
        state.repos.keys().map(|r| r.to_string()).chain(counts.iter().map(|(repo, _, _)| repo.clone())).collect();
    let mut all: std::collections::BTreeMap<(String, String), i64> = repos
        .iter()
        .flat_map(|repo| previewd_domain::Status::ALL.map(|s| ((repo.clone(), s.as_str().to_owned()), 0)))
        .collect();
    for (repo, status, n) in counts {
        all.insert((repo, status), n);
    }
    all.into_iter().map(|((repo, status), n)| (repo, status, n)).collect()
}
