//! previewd's metrics, through `prometheus-client`: counters and histograms that the web layer, the
//! reconciler and the AWS and GitHub clients record into, and one encoder for `GET /metrics` that adds
//! what is read at scrape time (environments by status, the queue).
//!
//! The families live in one process-wide [`METRICS`]: AWS and GitHub calls are counted deep inside
//! their clients, where passing a handle around would touch every call.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event: String,
    /// `accepted`, `duplicate`, `ignored`, `rejected`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsLabels {
    pub service: String,
    pub operation: String,
    /// `ok`, `throttled`, `not_found` (the thing asked about is not there), `client_error`,
    /// `server_error`, `no_response`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GithubLabels {
    pub operation: String,
    /// `ok`, `not_modified`, `not_found`, `throttled`, `client_error`, `server_error`, `no_response`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// The environment's status when the step began (`pending`, `provisioning`, `ready`, `deleting`, …).
    pub kind: String,
    /// `done`, `requeue`, `retry`, `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeedLabels {
    pub kind: String,
    /// `ok`, `skipped`, `failed`.
    pub outcome: String,
}

/// Whose GitHub rate limit: `token`, `anonymous`, `app` (the App's own JWT calls), or an App
/// installation's id; each has a quota of its own.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabel {
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every family previewd records into.
#[derive(Debug)]
pub struct Metrics {
    pub webhooks: Family<WebhookLabels, Counter>,
    pub aws_requests: Family<AwsLabels, Counter>,
    pub github_requests: Family<GithubLabels, Counter>,
    /// Absent for a credential until GitHub has answered one of its requests.
    pub github_rate_limit_remaining: Family<CredentialLabel, Gauge>,
    pub reconcile_steps: Family<StepLabels, Counter>,
    pub reconcile_seconds: Family<KindLabel, Histogram>,
    pub seed_steps: Family<SeedLabels, Counter>,
    /// From a push to its environment being ready, by repository.
    pub push_to_ready_seconds: Family<RepoLabel, Histogram>,
    /// From a push to its environment failing, by repository.
    pub push_to_failure_seconds: Family<RepoLabel, Histogram>,
    /// When the fleet observer last finished a pass without error (Unix seconds; 0: not yet).
    pub fleet_observer_last_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// From a push to each phase of its way to ready: `artifact`, `infrastructure`, `answered`, `ready`.
    pub phase_seconds: Family<PhaseLabel, Histogram>,
    pub reaper_removals: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabel {
    pub repo: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoStatusLabels {
    pub repo: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: &'static str,
}

fn phase_seconds() -> Histogram {
    // 1 s … ~4.5 h.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

fn step_seconds() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            webhooks: Family::default(),
            aws_requests: Family::default(),
            github_requests: Family::default(),
            github_rate_limit_remaining: Family::default(),
            reconcile_steps: Family::default(),
            reconcile_seconds: Family::new_with_constructor(step_seconds),
            seed_steps: Family::default(),
            push_to_ready_seconds: Family::new_with_constructor(phase_seconds),
            push_to_failure_seconds: Family::new_with_constructor(phase_seconds),
            fleet_observer_last_success: Gauge::default(),
            phase_seconds: Family::new_with_constructor(phase_seconds),
            reaper_removals: Counter::default(),
        }
    }
}

/// What is read at scrape time rather than recorded as it happens.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Environments by repository and status, counted in the database.
    pub environments: Vec<(String, String, i64)>,
    /// When the last reaper pass (not a dry run) that was not refused and did not fail ended (Unix
    /// seconds), from the database: any replica's pass counts.
    pub reaper_last_success: Option<f64>,
    /// Reaper passes by outcome, from the database (so they survive restarts).
    pub reaper_passes: Vec<(String, i64)>,
    /// Environments waiting in this process's queue, and how long the oldest due one has waited.
    pub queue_depth: i64,
    pub queue_oldest_seconds: f64,
}

impl Metrics {
    /// The Prometheus (OpenMetrics) text of every family, with `snapshot`'s values.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let mut r = Registry::default();
        r.register("previewd_webhooks", "Webhook deliveries by event and outcome", self.webhooks.clone());
        r.register(
            "previewd_aws_requests",
            "AWS API requests (each attempt, retries included) by service, operation and outcome",
            self.aws_requests.clone(),
        );
        r.register(
            "previewd_github_requests",
            "GitHub API requests by operation and outcome (throttled: a rate limit answered)",
            self.github_requests.clone(),
        );
        r.register(
            "previewd_github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining in its latest answer, by credential",
            self.github_rate_limit_remaining.clone(),
        );
        r.register("previewd_reconcile_steps", "Reconcile steps by kind and outcome", self.reconcile_steps.clone());
        r.register(
            "previewd_reconcile_step_seconds",
            "Reconcile step duration by kind",
            self.reconcile_seconds.clone(),
        );
        r.register("previewd_seed_steps", "Seed steps by kind and outcome", self.seed_steps.clone());
        r.register(
            "previewd_push_to_ready_seconds",
            "From a push (as the webhook said) to its environment being ready, by repository",
            self.push_to_ready_seconds.clone(),
        );
        r.register(
            "previewd_push_to_failure_seconds",
            "From a push (as the webhook said) to its environment failing, by repository",
            self.push_to_failure_seconds.clone(),
        );
        r.register(
            "previewd_fleet_observer_last_success_timestamp_seconds",
            "When this process's fleet observer last finished a pass without error (0: not yet)",
            self.fleet_observer_last_success.clone(),
        );
        r.register(
            "previewd_phase_seconds",
            "From a push to each phase of its environment's way to ready (artifact found, infrastructure complete, URL answered, ready)",
            self.phase_seconds.clone(),
        );
        r.register("previewd_reaper_removals", "Environments the reaper removed", self.reaper_removals.clone());
        let environments = Family::<RepoStatusLabels, Gauge>::default();
        for (repo, status, n) in &snapshot.environments {
            environments.get_or_create(&RepoStatusLabels { repo: repo.clone(), status: status.clone() }).set(*n);
        }
        r.register("previewd_environments", "Environments by repository and status", environments);
        if let Some(at) = snapshot.reaper_last_success {
            let last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            last.set(at);
            r.register(
                "previewd_reaper_last_success_timestamp_seconds",
                "When the last reaper pass that was neither refused nor failed ended",
                last,
            );
        }
        let passes = Family::<OutcomeLabel, Counter>::default();
        for (outcome, n) in &snapshot.reaper_passes {
            passes.get_or_create(&OutcomeLabel { outcome: outcome.clone() }).inc_by(u64::try_from(*n).unwrap_or(0));
        }
        r.register("previewd_reaper_passes", "Reaper passes by outcome", passes);
        let depth = Gauge::<i64>::default();
        depth.set(snapshot.queue_depth);
        r.register("previewd_queue_depth", "Environments waiting or being reconciled", depth);
        let oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        oldest.set(snapshot.queue_oldest_seconds);
        r.register("previewd_queue_oldest_due_seconds", "How long the oldest due environment has waited", oldest);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            out = format!("# cannot encode metrics: {e}\n");
        }
        out
    }
}

/// The OpenMetrics text [`Metrics::encode`] gives, in Prometheus's older text format (`text/plain;
/// version=0.0.4`) for a scraper that asks for it: prometheus-client writes only OpenMetrics, where a
/// counter's family is named without `_total` and the text ends with `# EOF`; read as the older format,
/// each counter would be an untyped series. The samples themselves are the same in both.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None if line == "# EOF" || line.starts_with("# UNIT ") => continue,
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode_with_their_labels() {
        let m = Metrics::default();
        m.webhooks.get_or_create(&WebhookLabels { event: "push".into(), outcome: "accepted".into() }).inc();
        m.aws_requests
            .get_or_create(&AwsLabels {
                service: "cloudformation".into(),
                operation: "CreateStack".into(),
                outcome: "ok".into(),
            })
            .inc();
        let snapshot = Snapshot {
            environments: vec![("acme/shop".into(), "ready".into(), 3)],
            queue_depth: 2,
            ..Snapshot::default()
        };
        let text = m.encode(&snapshot);
        assert!(text.contains(r#"previewd_webhooks_total{event="push",outcome="accepted"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"previewd_aws_requests_total{service="cloudformation",operation="CreateStack",outcome="ok"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"previewd_environments{repo="acme/shop",status="ready"} 3"#), "{text}");
        // No reaper pass yet: no time of one (a 0 would read as "long ago").
        assert!(!text.contains("previewd_reaper_last_success"), "{text}");
        let passed = Snapshot { reaper_last_success: Some(1_700_000_000.0), ..Snapshot::default() };
        assert!(text.contains("previewd_queue_depth 2") && text.ends_with("# EOF\n"), "{text}");
        let passed = m.encode(&passed);
        assert!(passed.contains("previewd_reaper_last_success_timestamp_seconds 1700000000.0"), "{passed}");
        // Absent until GitHub has answered: a 0 would raise a false "rate limit low" alert.
        let sample = |l: &&str| l.starts_with("previewd_github_rate_limit_remaining");
        assert!(!text.lines().any(|l| sample(&l)), "{text}");
        m.github_rate_limit_remaining.get_or_create(&CredentialLabel { credential: "42".into() }).set(4_999);
        let text = m.encode(&snapshot);
        assert!(text.contains(r#"previewd_github_rate_limit_remaining{credential="42"} 4999"#), "{text}");
    }

    #[test]
    fn the_older_text_format_names_counter_families_as_their_samples() {
        let m = Metrics::default();
        m.webhooks.get_or_create(&WebhookLabels { event: "push".into(), outcome: "accepted".into() }).inc();
        let text = to_text_format(&m.encode(&Snapshot::default()));
        assert!(text.contains("# TYPE previewd_webhooks_total counter\n"), "{text}");
        assert!(text.contains("# HELP previewd_webhooks_total Webhook deliveries"), "{text}");
        assert!(text.contains(r#"previewd_webhooks_total{event="push",outcome="accepted"} 1"#), "{text}");
        assert!(text.contains("# TYPE previewd_queue_depth gauge\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        // Every sample line of a counter family carries its TYPE line's name.
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter"))
        {
            assert!(family.ends_with("_total"), "{family}");
        }
    }
}
