//! `previewd serve`: builds the store, the AWS and GitHub clients, the reconciler and the router from the
//! configuration, binds the listener (port 0 picks a free one: tests get a real server), and runs until
//! told to stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use previewd_cloud::Aws;
use previewd_github::GitHub;
use previewd_reconciler::{FeedbackSetup, Reconciler, RepoSetup, Setup};
use previewd_store::Store;
use previewd_web::AppState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// A running previewd.
#[derive(Debug)]
pub struct Application {
    addr: SocketAddr,
    store: Store,
    reconciler: Reconciler,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    worker: JoinHandle<()>,
}

impl Application {
    /// Everything `serve` needs, checked before anything starts; AWS from the usual environment.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with_aws(config, Aws::from_env().await).await
    }

    /// As [`Application::build`], with AWS clients made elsewhere (tests point them at their own emulator).
    pub async fn build_with_aws(config: &Config, aws: Aws) -> anyhow::Result<Self> {
        if config.webhook_secrets.is_empty() {
            bail!("PREVIEWD_WEBHOOK_SECRET (webhook_secrets) is required to serve");
        }
        let reconciler = build_reconciler(config, aws, "").await?;
        let store = reconciler.store().clone();
        let owner = reconciler.owner().clone();
        let zones = config
            .repos
            .iter()
            .filter_map(|(name, repo)| Some((name.clone(), config.zone_of(repo)?.clone())))
            .collect();
        let state = AppState {
            store: store.clone(),
            deliveries: previewd_store::DeliveryLog::start(store.clone(), {
                let queue = reconciler.queue();
                move || queue.wake()
            })
            .context("starting the webhook delivery committer")?,
            queue: reconciler.queue(),
            owner,
            secrets: config.webhook_secrets.clone().into(),
            repos: Arc::new(zones),
            dashboard_token: config.dashboard_token.clone(),
            metrics_token: config.metrics_token.clone(),
            public: !config.listen.ip().is_loopback(),
            github_web_url: previewd_web::github_web_url(&config.github_api_url),
            reconciler: Some(reconciler.clone()),
            intake: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let mut server_stop = stopped.clone();
        let router = previewd_web::router(state).layer(tower_http::trace::TraceLayer::new_for_http());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await
        });
        let worker = {
            let reconciler = reconciler.clone();
            tokio::spawn(async move {
                if let Err(e) = reconciler.run(stopped).await {
                    tracing::error!(error = %e, "the reconciler stopped");
                }
            })
        };
        Ok(Self { addr, store, reconciler, stop, server, worker })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    /// Stops taking requests, lets reconciles under way finish, and returns.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.server.await.context("server task")?.context("server")?;
        self.worker.await.context("reconciler task")?;
        self.store.close().await;
        Ok(())
    }
}

/// The reconciler with everything it needs, checked before anything starts: the store (migrated), the
/// GitHub client, the blueprints and the reaper's schedule. `serve` runs it; `previewd reap` drives one
/// pass with it (`role` keeps its leases apart from a server's on the same host).
pub async fn build_reconciler(config: &Config, aws: Aws, role: &str) -> anyhow::Result<Reconciler> {
    let owner = config.owner.clone().context("PREVIEWD_OWNER (owner) is required")?;
    if config.repos.is_empty() {
        tracing::warn!("no repositories configured: every webhook will be ignored");
    }
    let mut repos = BTreeMap::new();
    for (name, repo) in &config.repos {
        let zone = config
            .zone_of(repo)
            .with_context(|| format!("no DNS zone for {name}: set PREVIEWD_DNS_ZONE or [repos.\"{name}\"] dns_zone"))?
            .clone();
        let setup = RepoSetup {
            blueprint: repo.blueprint.clone(),
            zone,
            layers: repo.layers.clone(),
            max_environments: repo.max_environments,
        };
        repos.insert(name.clone(), setup);
    }
    previewd_reconciler::check_schedule(&config.reaper.schedule)
        .context("the reaper's schedule (PREVIEWD_REAPER_SCHEDULE or [reaper] schedule)")?;
    let store = Store::connect(config.database_url.expose())
        .await
        .with_context(|| format!("cannot open the database {}", redact_url(config.database_url.expose())))?;
    let credentials = config.github_credentials()?;
    let feedback = (config.github_feedback && !matches!(credentials, previewd_github::Credentials::None))
        .then(|| FeedbackSetup { dashboard_url: config.public_url.clone(), write_gap: config.github_write_gap });
    let github = GitHub::new(&config.github_api_url, &credentials, config.github_timeout)?;
    let setup = Setup {
        owner,
        stacks_dir: config.stacks_dir.clone(),
        repos,
        template_bucket: config.template_bucket.clone(),
        stack_role_arn: config.cloudformation_role_arn.clone(),
        // Unique per process: two replicas on one host (or hosts without a name) never share a lease. A
        // replica restarted after a crash waits for its old leases to expire, like any other.
        instance: format!(
            "{}/{}{}-{:08x}",
            hostname(),
            if role.is_empty() { String::new() } else { format!("{role}/") },
            std::process::id(),
            fastrand::u32(..)
        ),
        tuning: config.tuning.clone(),
        reaper: config.reaper.clone(),
        seed_hook_secret: config.seed_hook_secret.clone(),
        feedback,
    };
    Ok(Reconciler::new(setup, store, aws, github)?)
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "previewd".into())
}

/// The URL without its password, for error messages.
fn redact_url(url: &str) -> String {
    // The password first, over the whole text (a password may hold `?`), then the query's values.
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    };
    // Parameters may carry a password too (`?password=…`, `sslpassword`): only their names are shown.
    if let Some((before, query)) = out.split_once('?') {
        let names: Vec<String> = query
            .split('&')
            .map(|pair| format!("{}=***", pair.split_once('=').map_or(pair, |(name, _)| name)))
            .collect();
        out = format!("{before}?{}", names.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_passwords_stay_out_of_messages() {
        assert_eq!(super::redact_url("postgres://u:hunter2@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact_url("sqlite://previewd.db"), "sqlite://previewd.db");
        assert_eq!(
            super::redact_url("postgres://u@h/db?sslmode=require&password=hunter2"),
            "postgres://u:***@h/db?sslmode=***&password=***"
        );
        assert_eq!(super::redact_url("sqlite://p.db?mode=rwc"), "sqlite://p.db?mode=***");
        assert_eq!(super::redact_url("postgres://u:ab?cd@h/db"), "postgres://u:***@h/db");
    }
}
